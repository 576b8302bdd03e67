"""The fused Triton top-k kernel against the torch path: on the GPU where torch sees one, else on the CPU
under TRITON_INTERPRET=1. The references are computed on the CPU.

Skipped when triton is not installed (``pip install 'mol-index[triton]'``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install 'mol-index[triton]')", allow_module_level=True)
if not torch.cuda.is_available():
    # must be set before triton is imported: it decorates its own helpers (tl.sigmoid, ...) at import
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mol_core.similarity import ItemSide, MoLSimilarity, QuerySide
from mol_index import exact_search
from mol_index.kernels.triton_topk import triton_exact_search

#: Where the kernel runs: the GPU when there is one (the interpreter is only set without one).
KERNEL_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _on_kernel_device(
    sim: MoLSimilarity, query: QuerySide, corpus: ItemSide
) -> tuple[MoLSimilarity, QuerySide, ItemSide]:
    """Copies of ``sim``, ``query`` and ``corpus`` on :data:`KERNEL_DEVICE`."""
    import copy

    gating = None if query.gating is None else query.gating.to(KERNEL_DEVICE)
    moved = QuerySide(query.embeddings.to(KERNEL_DEVICE), gating)
    return copy.deepcopy(sim).to(KERNEL_DEVICE), moved, corpus.to(KERNEL_DEVICE)


@pytest.mark.parametrize(("num_items", "k", "block_items"), [(100, 5, 16), (37, 37, 16), (64, 20, 32)])
def test_kernel_matches_exact_search(
    mol_corpus: Callable[..., tuple],
    same_topk: Callable[..., None],
    reference: Callable[..., tuple],
    num_items: int,
    k: int,
    block_items: int,
) -> None:
    sim, query, corpus = mol_corpus(num_items, num_items, 3, pq=4, px=4, dim=16)  # P = 16, hidden 16
    exclude = [[0, 3, num_items - 1], [], [5]]
    with torch.inference_mode():
        want = exact_search(sim, query, corpus, k, exclude=exclude)
        got = triton_exact_search(
            *_on_kernel_device(sim, query, corpus),
            k,
            exclude=exclude,
            block_items=block_items,
            chunk_items=48,
        )
        got = (got[0].cpu(), got[1].cpu())
    full = reference(sim, query, corpus, k, exclude)[2]
    same_topk(got[0], got[1], want[0], want[1], full)


def test_kernel_refuses_unsupported_shapes(mol_corpus: Callable[..., tuple]) -> None:
    from mol_core.errors import ConfigError

    sim, query, corpus = mol_corpus(0, 50, 1)  # P = 4 * 2 = 8 < 16
    with pytest.raises(ConfigError, match="powers of two"):
        triton_exact_search(sim, query, corpus, 3)


def test_index_kernel_triton_matches_torch_kernel(mol_corpus: Callable[..., tuple]) -> None:
    from mol_index import MolIndex, SearchParams

    sim, query, corpus = mol_corpus(7, 90, 3, pq=4, px=4, dim=16)  # P = 16, hidden 16
    ids = torch.arange(90, dtype=torch.int64) * 3 + 11  # external ids != rows
    index = MolIndex.build(sim, ids, corpus)
    exclude = [[11, 14, 9999], [], [11 + 3 * 89]]
    want = index.search_with_info(
        query, 6, exclude=exclude, params=SearchParams(algorithm="exact", kernel="torch")
    )
    index.to(KERNEL_DEVICE)
    query = _on_kernel_device(sim, query, corpus)[1]
    got = index.search_with_info(
        query, 6, exclude=exclude, params=SearchParams(algorithm="exact", kernel="triton")
    )
    torch.testing.assert_close(got.scores.cpu(), want.scores, atol=1e-4, rtol=0)
    assert torch.equal(got.ids.cpu(), want.ids)
    assert bool(got.exact.all())
    assert got.num_candidates.tolist() == [90, 90, 90]
    assert 11 not in got.ids[0].tolist()
    assert 11 + 3 * 89 not in got.ids[2].tolist()


def test_index_kernel_triton_refuses_what_it_cannot_score(mol_corpus: Callable[..., tuple]) -> None:
    from mol_core.errors import ConfigError
    from mol_index import MolIndex, SearchParams

    sim, query, corpus = mol_corpus(0, 50, 1)  # P = 4 * 2 = 8 < 16
    index = MolIndex.build(sim, torch.arange(50), corpus)
    with pytest.raises(ConfigError, match=r"kernel=.triton. cannot search this index.*powers of two"):
        index.search(query, 3, params=SearchParams(algorithm="exact", kernel="triton"))
    # auto falls back to torch on the CPU and for shapes the kernel does not take
    scores, _ = index.search(query, 3, params=SearchParams(algorithm="exact", kernel="auto"))
    assert scores.shape == (1, 3)
