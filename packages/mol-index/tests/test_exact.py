"""exact_search against a naive reference: full score matrix, masking, torch.topk."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mol_core.errors import ConfigError, ShapeError
from mol_core.similarity import DotProductSimilarity, ItemSide, QuerySide
from mol_index import exact_search
from mol_index.search.exact import sorted_topk, topk_any_order


@pytest.mark.parametrize("block_size", [2, 7, 64, None, 10_000])
@pytest.mark.parametrize("k", [1, 10, 300])
def test_mol_matches_naive_reference(
    mol_corpus: Callable[..., tuple],
    reference: Callable[..., tuple],
    same_topk: Callable[..., None],
    block_size: int | None,
    k: int,
) -> None:
    sim, query, corpus = mol_corpus(0, 300, 5)
    exclude = [[0, 5, 299], [], [17], [1, 1, 1], list(range(0, 300, 3))]
    with torch.inference_mode():
        scores, ids = exact_search(sim, query, corpus, k, exclude=exclude, block_size=block_size)
    ref_scores, ref_ids, full = reference(sim, query, corpus, k, exclude)
    same_topk(scores, ids, ref_scores, ref_ids, full)
    for b, rows in enumerate(exclude):
        assert not set(ids[b].tolist()) & set(rows)


def test_k_equal_n_with_exclusions_pads_with_minus_one(mol_corpus: Callable[..., tuple]) -> None:
    sim, query, corpus = mol_corpus(1, 50, 2)
    with torch.inference_mode():
        scores, ids = exact_search(sim, query, corpus, 50, exclude=torch.tensor([[3, 4, -1], [-1, -1, -1]]))
    assert ids.shape == (2, 50)
    assert ids[0, -2:].tolist() == [-1, -1]
    assert torch.isneginf(scores[0, -2:]).all()
    assert sorted(ids[0, :48].tolist()) == [r for r in range(50) if r not in (3, 4)]
    assert sorted(ids[1].tolist()) == list(range(50))
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())


def test_dot_product_ties_go_to_the_smaller_row() -> None:
    sim = DotProductSimilarity(2)
    # integer embeddings: exact float arithmetic, so ties are real ties
    items = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    query = sim.query_side(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    corpus = sim.item_side(items)
    for block in (1, 2, 4, 6):
        scores, ids = exact_search(sim, query, corpus, 4, block_size=block)
        assert ids[0].tolist() == [1, 3, 5, 0]  # three 2s by row, then the first 1
        assert scores[0].tolist() == [2.0, 2.0, 2.0, 1.0]
        assert ids[1].tolist() == [0, 1, 2, 3]  # all tied at 0: smallest rows
    _, ids = exact_search(sim, query, corpus, 4, exclude=[[3], [0, 2]], block_size=2)
    assert ids.tolist() == [[1, 5, 0, 2], [1, 3, 4, 5]]


def test_dot_product_matches_naive(reference: Callable[..., tuple], same_topk: Callable[..., None]) -> None:
    torch.manual_seed(3)
    sim = DotProductSimilarity(16, l2_normalize=True, temperature=0.1)
    query, corpus = sim.query_side(torch.randn(4, 16)), sim.item_side(torch.randn(500, 16))
    scores, ids = exact_search(sim, query, corpus, 20, block_size=33)
    same_topk(scores, ids, *reference(sim, query, corpus, 20))


def test_memory_is_bounded_by_the_block(mol_corpus: Callable[..., tuple]) -> None:
    sim, query, corpus = mol_corpus(2, 200, 3)
    widths: list[int] = []
    original = sim.score_pairs

    def spy(q: QuerySide, items: ItemSide) -> torch.Tensor:
        widths.append(items.num_items)
        return original(q, items)

    sim.score_pairs = spy  # type: ignore[method-assign]
    with torch.inference_mode():
        exact_search(sim, query, corpus, 5, block_size=32)
    assert max(widths) == 32
    assert sum(widths) == 200


@pytest.mark.parametrize("k", [0, -1, 51, 2.0, True])
def test_bad_k_is_a_config_error(mol_corpus: Callable[..., tuple], k: object) -> None:
    sim, query, corpus = mol_corpus(0, 50, 1)
    with pytest.raises(ConfigError, match="k must be"):
        exact_search(sim, query, corpus, k)  # type: ignore[arg-type]


def test_bad_exclude_and_block_size(mol_corpus: Callable[..., tuple]) -> None:
    sim, query, corpus = mol_corpus(0, 50, 2)
    with pytest.raises(ShapeError, match="one list of ids per query"):
        exact_search(sim, query, corpus, 3, exclude=[[1]])
    with pytest.raises(ShapeError, match="shape"):
        exact_search(sim, query, corpus, 3, exclude=torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ConfigError, match="block_size"):
        exact_search(sim, query, corpus, 3, block_size=0)
    with pytest.raises(ShapeError):
        exact_search(sim, QuerySide(query.embeddings[:, :, :5], query.gating), corpus, 3)


@pytest.mark.parametrize("k", [1, 3, 7, 40])
def test_topk_any_order_matches_sorted_topk_on_shuffled_rows_with_ties(k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    batch, width = 5, 30
    scores = torch.randint(0, 6, (batch, width), generator=gen).float()  # many ties
    scores[1, :25] = float("-inf")  # a query with fewer than k live slots (k = 7, 40)
    scores[2] = float("-inf")  # a query with none
    rows = torch.stack([torch.randperm(100, generator=gen)[:width] for _ in range(batch)])  # (B, M) any order
    # reference: put every query's slots in row order, then the tie rule of sorted_topk applies
    order = rows.argsort(dim=1)
    want = sorted_topk(scores.gather(1, order), rows.gather(1, order), k)
    got = topk_any_order(scores, rows, k)
    assert torch.equal(got[0], want[0])
    assert torch.equal(got[1], want[1])
    # ties at the k-th score go to the smaller row
    tied = torch.tensor([[2.0, 5.0, 2.0, 2.0]])
    assert topk_any_order(tied, torch.tensor([[9, 4, 3, 7]]), 2)[1].tolist() == [[4, 3]]


def test_bf16_scan_ranks_like_float32_and_is_only_used_on_request(mol_corpus: Callable[..., tuple]) -> None:
    from mol_index import MolIndex, SearchParams
    from mol_index.kernels import choose_kernel

    sim, query, corpus = mol_corpus(3, 400, 8, pq=4, px=4, dim=16)
    exclude = [[0, 1, 2]] + [[]] * 7
    with torch.inference_mode():
        want_scores, want_rows = exact_search(sim, query, corpus, 10, exclude=exclude)
        got_scores, got_rows = exact_search(
            sim, query, corpus, 10, exclude=exclude, compute_dtype=torch.bfloat16, block_size=64
        )
        # the bf16 scores themselves, for the rows the scan returned: bf16 keeps about 3 significant digits
        full16 = exact_search(sim, query, corpus, 400, compute_dtype=torch.bfloat16)
    assert got_scores.dtype == torch.float32
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(got_rows, want_rows, strict=True))
    assert overlap >= 0.9 * want_rows.numel()
    torch.testing.assert_close(got_scores, want_scores, rtol=0.02, atol=0.05)
    assert not torch.equal(got_scores, want_scores)  # computed in bf16 indeed
    assert not {0, 1, 2} & set(got_rows[0].tolist())
    by_row = full16[0].gather(1, full16[1].argsort(dim=1))  # (B, N) bf16 scores in row order
    torch.testing.assert_close(got_scores[1:], by_row[1:].gather(1, got_rows[1:]), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="compute_dtype"):
        exact_search(sim, query, corpus, 10, compute_dtype=torch.float16)
    # through the index: kernel="torch-bf16" is that scan; auto never picks it
    index = MolIndex.build(sim, torch.arange(400), corpus)
    found = index.search(
        query, 10, exclude=exclude, params=SearchParams(algorithm="exact", kernel="torch-bf16")
    )
    assert torch.equal(found[1], got_rows)
    assert choose_kernel("torch-bf16", sim, torch.device("cpu")) == "torch-bf16"
    assert choose_kernel("auto", sim, torch.device("cpu")) != "torch-bf16"
