"""The mol-core demo (the main job until the quickstart lands) runs end to end at a tiny size."""

from __future__ import annotations

import pytest
import torch

from mol_core import demo


def test_planted_targets_follow_the_true_relevance() -> None:
    task = demo.make_planted_task(500, 100, interests=2, dim=8, sharpness=40.0, seed=1)
    relevance = demo.true_relevance(task.query_features, task.item_features, 2)  # (500, 100)
    assert relevance.shape == (500, 100)
    # Sharp sampling: the positive is usually among the few most relevant items, far above chance (5%).
    top5 = relevance.topk(5, dim=1).indices
    assert float((top5 == task.targets.unsqueeze(1)).any(1).float().mean()) > 0.5


def test_demo_prints_a_table_for_both_models_and_the_oracle(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    code = demo.main(
        ["--items", "60", "--queries", "300", "--test-queries", "50", "--steps", "3", "--negatives", "8"]
    )
    out = capsys.readouterr().out
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith(("dot product", "MoL", "oracle"))]
    assert len(rows) == 3, out
    for row in rows:
        values = [float(v) for v in row.split()[-5:]]
        assert all(0.0 <= v <= 1.0 for v in values), row


def test_demo_rejects_non_positive_counts() -> None:
    with pytest.raises(SystemExit):
        demo.main(["--steps", "0"])
