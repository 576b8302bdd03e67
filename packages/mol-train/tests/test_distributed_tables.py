"""EmbeddingTables and its KJT features against a plain torch.nn.Embedding with the same weights."""

from __future__ import annotations

import pytest
import torch

from mol_core.errors import ShapeError
from mol_train.distributed import (
    ITEM_TABLE,
    USER_TABLE,
    EmbeddingTables,
    ItemFeatures,
    UserFeatures,
    hash_user_ids,
)

N, D, BUCKETS, DU = 30, 6, 7, 4


def padded_ids(batch: int, length: int, seed: int) -> torch.Tensor:
    """``(B, L)`` right-aligned histories in [1, N] with 0..L-1 padding ids on the left."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, N + 1, (batch, length), generator=gen)  # (B, L)
    pads = torch.randint(0, length, (batch,), generator=gen)  # (B,)
    return torch.where(torch.arange(length).unsqueeze(0) < pads.unsqueeze(1), 0, ids)


def reference(tables: EmbeddingTables) -> tuple[torch.nn.Embedding, torch.nn.Embedding]:
    items = tables.item_table_weight().detach().clone()  # (N + 1, D)
    assert tables.user_collection is not None
    users = tables.user_collection.embeddings[USER_TABLE].weight[:, :DU].detach().clone()  # (BUCKETS, Du)
    return torch.nn.Embedding.from_pretrained(items, freeze=False), torch.nn.Embedding.from_pretrained(users)


@pytest.fixture
def tables() -> EmbeddingTables:
    torch.manual_seed(0)
    return EmbeddingTables(N, D, num_user_buckets=BUCKETS, user_dim=DU, init_std=0.5)


def test_item_features_layout_by_hand() -> None:
    history = torch.tensor([[0, 0, 4], [0, 2, 3]])  # (B, L) = (2, 3)
    features = ItemFeatures.from_padded(history, torch.tensor([[9, 8], [7, 6], [5, 1]]))
    assert features.kjt.keys() == ["item"]
    assert features.kjt.values().tolist() == [4, 2, 3, 9, 8, 7, 6, 5, 1]
    assert features.kjt.lengths().tolist() == [1, 2, 2, 2, 2]  # B history rows, then M candidate rows
    assert features.sequence_mask.tolist() == [[False, False, True], [False, True, True]]
    assert features.candidate_shape == (3, 2)
    only = ItemFeatures.from_candidates(torch.tensor([[3, 1]]))
    assert only.kjt.values().tolist() == [3, 1]
    assert only.kjt.lengths().tolist() == [2]


def test_user_features_hash_by_modulo() -> None:
    ids = torch.tensor([0, 6, 7, 15, 123456789])
    assert hash_user_ids(ids, 7).tolist() == [i % 7 for i in ids.tolist()]
    features = UserFeatures.from_user_ids(ids, num_buckets=7)
    assert features.kjt.keys() == ["user"]
    assert features.kjt.lengths().tolist() == [1] * 5


def test_lookups_match_nn_embedding(tables: EmbeddingTables) -> None:
    item_ref, user_ref = reference(tables)
    history = padded_ids(5, 9, seed=1)  # (B, L)
    candidates = torch.randint(1, N + 1, (11, 3))  # (M, R)
    users = torch.tensor([0, 3, 7, 100, 12])  # (B,)
    expected = item_ref(history) * (history != 0).unsqueeze(-1)  # (B, L, D), zeros at padding
    out = tables(history, candidates, users)
    torch.testing.assert_close(out.sequence, expected, rtol=0, atol=0)
    assert out.candidates is not None
    assert out.users is not None
    torch.testing.assert_close(out.candidates, item_ref(candidates), rtol=0, atol=0)
    torch.testing.assert_close(out.users, user_ref(users % BUCKETS), rtol=0, atol=0)
    assert (out.sequence[history == 0] == 0).all()
    # The single-purpose helpers give the same tensors.
    torch.testing.assert_close(tables.lookup_items(history), out.sequence, rtol=0, atol=0)
    torch.testing.assert_close(tables.lookup_candidates(candidates), out.candidates, rtol=0, atol=0)
    torch.testing.assert_close(tables.lookup_users(users), out.users, rtol=0, atol=0)


def test_all_padding_and_empty_rows(tables: EmbeddingTables) -> None:
    history = torch.zeros(3, 4, dtype=torch.long)
    history[1, 3] = 5
    out = tables.lookup_items(history)
    assert out.shape == (3, 4, D)
    assert (out[0] == 0).all()
    assert (out[2] == 0).all()
    assert (out[1, :3] == 0).all()
    assert not (out[1, 3] == 0).all()


def test_all_item_embeddings_are_rows_1_to_n(tables: EmbeddingTables) -> None:
    weight = tables.item_table_weight().detach()  # (N + 1, D)
    torch.testing.assert_close(tables.all_item_embeddings(), weight[1:], rtol=0, atol=0)
    torch.testing.assert_close(tables.all_item_embeddings(chunk_size=7), weight[1:], rtol=0, atol=0)


def test_gradient_matches_reference_and_skips_padding(tables: EmbeddingTables) -> None:
    item_ref, _ = reference(tables)
    history = padded_ids(4, 6, seed=2)
    candidates = torch.randint(1, N + 1, (4, 5))
    weights = torch.randn(4, 6, D)  # an arbitrary linear loss
    out = tables(history, candidates)
    assert out.candidates is not None
    (out.sequence * weights).sum().add(out.candidates.pow(2).sum()).backward()
    ref_loss = (item_ref(history) * (history != 0).unsqueeze(-1) * weights).sum()
    ref_loss.add(item_ref(candidates).pow(2).sum()).backward()
    grad = tables.item_collection.embeddings[ITEM_TABLE].weight.grad  # (N + 1, 8): stored 8 wide
    assert grad is not None
    assert item_ref.weight.grad is not None
    assert grad.shape == (N + 1, 8)
    torch.testing.assert_close(grad[:, :D], item_ref.weight.grad)
    assert (grad[:, D:] == 0).all()  # the storage columns never reach the output
    assert (grad[0] == 0).all()  # the padding row is never read


def test_bad_inputs_raise_clear_errors(tables: EmbeddingTables) -> None:
    with pytest.raises(ShapeError, match=r"\(B, L\)"):
        tables.lookup_items(torch.tensor([1, 2]))
    with pytest.raises(ShapeError, match="integer"):
        tables.lookup_items(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"\[0, 30\]"):
        tables.lookup_items(torch.tensor([[0, 31]]))
    with pytest.raises(ValueError, match=r"\[1, 30\]"):
        tables.lookup_candidates(torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match=">= 0"):
        tables.lookup_users(torch.tensor([-1]))
    without_users = EmbeddingTables(N, D)
    with pytest.raises(ShapeError, match="num_user_buckets"):
        without_users.lookup_users(torch.tensor([1]))
    with pytest.raises(ShapeError, match="num_user_buckets"):
        EmbeddingTables(N, D, user_dim=3)
    with pytest.raises(ValueError, match="num_items"):
        EmbeddingTables(0, D)


def test_storage_width_is_rounded_up_to_4() -> None:
    tables = EmbeddingTables(N, 50, num_user_buckets=3, user_dim=8)
    assert (tables.item_storage_dim, tables.user_storage_dim) == (52, 8)
    assert tables.item_table_weight().shape == (N + 1, 50)
    assert tables.user_table_weight().shape == (3, 8)
    with torch.no_grad():  # the weight accessors are views that load weights into the tables
        tables.item_table_weight()[1:].copy_(torch.ones(N, 50))
        tables.user_table_weight().copy_(torch.full((3, 8), 2.0))
    assert (tables.all_item_embeddings() == 1).all()
    assert (tables.lookup_users(torch.tensor([0, 4])) == 2).all()
    assert tables.lookup_items(torch.tensor([[0, 1]])).shape == (1, 2, 50)


def test_user_dim_defaults_to_item_dim() -> None:
    tables = EmbeddingTables(N, D, num_user_buckets=3)
    assert tables.lookup_users(torch.tensor([1, 2])).shape == (2, D)
