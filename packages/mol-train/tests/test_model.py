"""The sequential recommender: losses, gradients, and the torchrec-free query path."""

from __future__ import annotations

import pytest
import torch

from mol_core.errors import ShapeError
from mol_train.config import NegativeSampling, load_config
from mol_train.data import eval_batch, make_synthetic, train_batch, train_rows
from mol_train.model import build_model


@pytest.fixture(scope="module")
def dataset():  # type: ignore[no-untyped-def]
    return make_synthetic(num_users=60, num_items=40, max_len=12, seed=3)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["train.loss='in_batch'"],
        ["model.user_buckets=16", "similarity.user_components=1"],
        ["similarity.kind='dot'", "model.encoder='sasrec'", "train.mi_weight=0.0"],
    ],
    ids=["mol-sampled", "mol-in-batch", "mol-user-ids", "sasrec-dot"],
)
def test_loss_is_finite_and_every_parameter_gets_a_gradient(dataset, overrides: list[str]) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    config = load_config("tiny_cpu", ["data.max_len=12", *overrides])
    model = build_model(config, dataset.num_items)
    batch = train_batch(dataset, train_rows(dataset)[:8], max_len=12)
    negatives = torch.randint(1, dataset.num_items + 1, (8, 16))  # (B, R): per sequence, the default
    parts = model(
        batch.inputs,
        batch.targets,
        negatives,
        batch.timestamps,
        batch.target_timestamps[:, -1],
        batch.user_rows,
    )
    assert torch.isfinite(parts.loss)
    assert int(parts.positions) == int((batch.targets != 0).sum())
    parts.loss.backward()
    missing = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert missing == []


def test_mi_term_is_added_with_its_weight(dataset) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    config = load_config(
        "tiny_cpu",
        [
            "data.max_len=12",
            "train.mi_weight=0.5",
            "similarity.gating_dropout=0.0",
            "train.negatives='shared'",
        ],
    )
    model = build_model(config, dataset.num_items).eval()
    batch = train_batch(dataset, train_rows(dataset)[:4], max_len=12)
    parts = model(batch.inputs, batch.targets, torch.arange(1, 17), batch.timestamps, None, None)
    torch.testing.assert_close(parts.loss, parts.softmax + 0.5 * parts.mutual_information)
    assert float(parts.mutual_information) < 0  # -I(pairs; components) <= 0


@torch.no_grad()
def test_query_encoder_reproduces_the_model_query_path(dataset) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    config = load_config(
        "tiny_cpu", ["data.max_len=12", "model.user_buckets=16", "similarity.user_components=1"]
    )
    model = build_model(config, dataset.num_items).eval()
    encoder = model.query_encoder()
    batch = eval_batch(dataset, list(range(5)), "test", max_len=12)
    query = encoder(batch.history, batch.timestamps, batch.target_timestamps, batch.user_rows)
    # Reference: the same computation through the torchrec tables.
    embeddings = model.tables.lookup_items(batch.history)
    hidden = model.encoder(embeddings, batch.history != 0, batch.timestamps, batch.target_timestamps)
    users = model.tables.lookup_users(batch.user_rows)
    want = model.similarity.query_side(hidden[:, -1], users)
    torch.testing.assert_close(query.embeddings, want.embeddings)
    torch.testing.assert_close(query.gating, want.gating)
    corpus = model.corpus_side(encoder)
    assert corpus.embeddings.shape == (dataset.num_items, 2, 8)


@torch.no_grad()
def test_per_sequence_negatives_equal_shared_ones_when_every_sequence_draws_the_same(dataset) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    config = load_config(
        "tiny_cpu", ["data.max_len=12", "similarity.gating_dropout=0.0", "model.dropout=0.0"]
    )
    model = build_model(config, dataset.num_items).eval()
    batch = train_batch(dataset, train_rows(dataset)[:6], max_len=12)
    positions = int((batch.targets != 0).sum())
    shared = torch.randint(1, dataset.num_items + 1, (16,))
    args = (batch.inputs, batch.targets)
    model.negative_sampling = NegativeSampling.SHARED
    one = model(*args, shared, batch.timestamps, None, None)
    model.negative_sampling = NegativeSampling.PER_SEQUENCE
    per_sequence = model(*args, shared.expand(6, 16).clone(), batch.timestamps, None, None)
    torch.testing.assert_close(per_sequence.loss, one.loss)
    different = model(*args, torch.randint(1, dataset.num_items + 1, (6, 16)), batch.timestamps, None, None)
    assert not torch.allclose(different.loss, one.loss)
    model.negative_sampling = NegativeSampling.PER_POSITION
    per_position = model(*args, shared.expand(positions, 16).clone(), batch.timestamps, None, None)
    torch.testing.assert_close(per_position.loss, one.loss)


def test_negatives_of_the_wrong_shape_are_refused(dataset) -> None:  # type: ignore[no-untyped-def]
    config = load_config("tiny_cpu", ["data.max_len=12", "train.negatives='per_position'"])
    model = build_model(config, dataset.num_items)
    batch = train_batch(dataset, train_rows(dataset)[:6], max_len=12)
    with pytest.raises(ShapeError, match=r"per_position negatives must have shape \(M = valid positions"):
        model(batch.inputs, batch.targets, torch.ones(6, 16, dtype=torch.long))


def test_user_l2_penalty_is_added_with_its_weight(dataset) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    overrides = [
        "data.max_len=12",
        "model.user_buckets=16",
        "similarity.user_components=1",
        "similarity.user_direct=true",
        "similarity.gating_dropout=0.0",
        "train.mi_weight=0.0",
        "train.user_l2_weight=0.5",
    ]
    model = build_model(load_config("tiny_cpu", overrides), dataset.num_items).eval()
    batch = train_batch(dataset, train_rows(dataset)[:4], max_len=12)
    negatives = torch.randint(1, dataset.num_items + 1, (4, 16))
    parts = model(batch.inputs, batch.targets, negatives, batch.timestamps, None, batch.user_rows)
    users = model.tables.lookup_users(batch.user_rows)  # (B, Du = 1 * 8)
    per_sequence = (batch.targets != 0).sum(dim=1).float()  # (B,) positions of each user
    want = (users.pow(2).sum(dim=1) * per_sequence).sum() / per_sequence.sum()  # mean over positions
    torch.testing.assert_close(parts.user_l2, want)
    torch.testing.assert_close(parts.loss, parts.softmax + 0.5 * parts.user_l2)
