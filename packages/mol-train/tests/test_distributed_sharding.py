"""Sharding plans, process-group setup, shard_model in one process, and the metrics all-reduce.

The one-process tests run DistributedModelParallel over a one-rank gloo group and compare one training
step with a hand-written reference: SGD on the table (fused into the backward pass) and AdamW on the
dense layer. The multi-process behaviour is in test_distributed_multiprocess.py.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist

from mol_core.errors import ConfigError
from mol_core.metrics import RankingMetrics
from mol_train.distributed import (
    ITEM_TABLE,
    USER_TABLE,
    EmbeddingTables,
    ShardedModel,
    ShardingKind,
    TableOptimizer,
    all_reduce_metrics,
    destroy_distributed,
    init_distributed,
    make_sharding_plan,
    shard_model,
)

N, D = 21, 4


class TinyModel(torch.nn.Module):
    """Tables, then a Linear over the mean history embedding, scored against candidates."""

    def __init__(self) -> None:
        super().__init__()
        self.tables = EmbeddingTables(N, D, num_user_buckets=5, user_dim=3, init_std=0.5)
        self.proj = torch.nn.Linear(D, D)

    def forward(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        out = self.tables(history, candidates)
        query = self.proj(out.sequence.mean(dim=1))  # (B, D)
        assert out.candidates is not None
        return torch.einsum("bd,brd->br", query, out.candidates).logsumexp(dim=1).mean()


_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def alone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No torchrun variables and no process group, whatever the surrounding run has."""
    for name in _TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    destroy_distributed()
    yield
    destroy_distributed()


@pytest.fixture
def group(alone: None) -> None:
    init_distributed(device="cpu")  # `alone` destroys it afterwards


def _shard_rows(plan: object, path: str, table: str) -> list[tuple[int, int, str]]:
    sharding = plan.plan[path][table]  # type: ignore[attr-defined]
    return [
        (shard.shard_offsets[0], shard.shard_sizes[0], str(shard.placement))
        for shard in sharding.sharding_spec.shards
    ]


def test_row_wise_plan_splits_rows_over_ranks() -> None:
    plan = make_sharding_plan(TinyModel(), world_size=2)
    rows = _shard_rows(plan, "tables.item_collection", ITEM_TABLE)
    assert [(offset, size) for offset, size, _ in rows] == [(0, 11), (11, 11)]  # N + 1 = 22 rows
    assert ["rank:0" in p for _, _, p in rows] == [True, False]
    assert plan.plan["tables.item_collection"][ITEM_TABLE].compute_kernel == "fused"
    assert plan.plan["tables.item_collection"][ITEM_TABLE].sharding_type == "row_wise"


def test_table_wise_plan_puts_tables_on_different_ranks() -> None:
    plan = make_sharding_plan(TinyModel(), world_size=2, sharding=ShardingKind.TABLE_WISE)
    assert plan.plan["tables.item_collection"][ITEM_TABLE].ranks == [0]
    assert plan.plan["tables.user_collection"][USER_TABLE].ranks == [1]
    one = make_sharding_plan(TinyModel(), world_size=1, sharding=ShardingKind.TABLE_WISE)
    assert one.plan["tables.user_collection"][USER_TABLE].ranks == [0]


def test_plan_errors() -> None:
    with pytest.raises(ConfigError, match="no sharding plan"):
        make_sharding_plan(TinyModel(), world_size=2, sharding=ShardingKind.DATA_PARALLEL)
    with pytest.raises(ConfigError, match="world_size"):
        make_sharding_plan(TinyModel(), world_size=0)
    with pytest.raises(ConfigError, match="EmbeddingCollection"):
        make_sharding_plan(torch.nn.Linear(2, 2), world_size=1)


@pytest.mark.usefixtures("alone")
def test_shard_model_needs_a_process_group() -> None:
    with pytest.raises(ConfigError, match="init_distributed"):
        shard_model(TinyModel(), device=torch.device("cpu"))


@pytest.mark.usefixtures("alone")
def test_init_distributed_rejects_partial_or_bad_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            init_distributed(device="cuda")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        init_distributed(device="cpu")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="integer"):
        init_distributed(device="cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="RANK < WORLD_SIZE"):
        init_distributed(device="cpu")
    assert not dist.is_initialized()


@pytest.mark.usefixtures("group")
def test_single_process_context_and_double_init() -> None:
    assert dist.get_world_size() == 1
    assert dist.get_backend() == "gloo"
    with pytest.raises(ConfigError, match="already exists"):
        init_distributed(device="cpu")


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    history = torch.randint(1, N + 1, (6, 5), generator=gen)
    history[:, :2] = 0  # left padding
    return history, torch.randint(1, N + 1, (6, 4), generator=gen)


@pytest.mark.usefixtures("group")
@pytest.mark.parametrize("sharding", list(ShardingKind))
def test_one_step_matches_sgd_and_adamw_reference(sharding: ShardingKind) -> None:
    torch.manual_seed(0)
    model = TinyModel()
    reference = copy.deepcopy(model)
    sharded = shard_model(
        model,
        device=torch.device("cpu"),
        sharding=sharding,
        table_optimizer=TableOptimizer.SGD,
        table_lr=0.5,
        dense_lr=0.01,
    )
    history, candidates = _batch()
    tables = sharded.model.module.tables
    before = reference.tables.item_table_weight().detach()[1:].clone()
    torch.testing.assert_close(tables.all_item_embeddings(), before, rtol=0, atol=0)

    sharded.model(history, candidates).backward()
    sharded.optimizer.step()
    sharded.optimizer.zero_grad()

    item_weight = reference.tables.item_collection.embeddings[ITEM_TABLE].weight  # (N + 1, D): D = 4
    reference(history, candidates).backward()
    torch.optim.AdamW(reference.proj.parameters(), lr=0.01, weight_decay=0.0).step()
    assert item_weight.grad is not None
    with torch.no_grad():
        item_weight -= 0.5 * item_weight.grad
    assert not torch.equal(item_weight.detach()[1:], before)  # the step moved the table
    torch.testing.assert_close(tables.all_item_embeddings(), item_weight.detach()[1:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sharded.model.module.proj.weight, reference.proj.weight)
    names = set(sharded.optimizer.params)
    assert any(ITEM_TABLE in name for name in names)
    assert any("proj.weight" in name for name in names)


@pytest.mark.usefixtures("group")
def test_fused_adam_is_refused_on_cpu() -> None:
    with pytest.raises(ConfigError, match="CUDA"):
        shard_model(TinyModel(), device=torch.device("cpu"), table_optimizer=TableOptimizer.ADAM)


@pytest.mark.usefixtures("group")
def test_all_reduce_metrics_in_one_rank_group_is_identity() -> None:
    metrics = RankingMetrics(ks=(1, 10))
    metrics.update_ranks(torch.tensor([1, 4, 30]))
    total = all_reduce_metrics(metrics)
    assert total.compute() == metrics.compute()
    assert total is not metrics


@pytest.mark.usefixtures("alone")
def test_all_reduce_metrics_without_group_returns_a_copy() -> None:
    metrics = RankingMetrics(ks=(5,))
    metrics.update_ranks(torch.tensor([2, 9]))
    assert all_reduce_metrics(metrics).compute() == metrics.compute()


@pytest.mark.usefixtures("group")
@pytest.mark.parametrize("sharding", [ShardingKind.ROW_WISE, ShardingKind.DATA_PARALLEL])
def test_state_dict_round_trip_resumes_the_same_trajectory(sharding: ShardingKind) -> None:
    history, candidates = _batch()

    def step(sharded: ShardedModel) -> None:
        sharded.model(history, candidates).backward()
        sharded.optimizer.step()
        sharded.optimizer.zero_grad()

    torch.manual_seed(0)
    first = shard_model(TinyModel(), device=torch.device("cpu"), sharding=sharding)
    step(first)
    step(first)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    step(first)  # the step a resumed run must reproduce

    torch.manual_seed(1)  # other initial weights: everything must come from the checkpoint
    second = shard_model(TinyModel(), device=torch.device("cpu"), sharding=sharding)
    buffer.seek(0)
    second.load_state_dict(torch.load(buffer, weights_only=False))  # ShardedTensor needs weights_only=False
    step(second)
    first_tables, second_tables = first.model.module.tables, second.model.module.tables
    torch.testing.assert_close(second_tables.all_item_embeddings(), first_tables.all_item_embeddings())
    torch.testing.assert_close(second.model.module.proj.weight, first.model.module.proj.weight)
