"""The sequential recommender: losses, gradients, and the torchrec-free query path."""

from __future__ import annotations

import pytest
import torch

from mol_train.config import load_config
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
    negatives = torch.randint(1, dataset.num_items + 1, (16,))
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
        "tiny_cpu", ["data.max_len=12", "train.mi_weight=0.5", "similarity.gating_dropout=0.0"]
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
    shared = torch.randint(1, dataset.num_items + 1, (16,))
    args = (batch.inputs, batch.targets)
    one = model(*args, shared, batch.timestamps, None, None)
    per_sequence = model(*args, shared.expand(6, 16).clone(), batch.timestamps, None, None)
    torch.testing.assert_close(per_sequence.loss, one.loss)
    different = model(*args, torch.randint(1, dataset.num_items + 1, (6, 16)), batch.timestamps, None, None)
    assert not torch.allclose(different.loss, one.loss)
