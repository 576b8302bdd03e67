"""The run's metrics log (JSON lines) and its training curves (PNG).

Each record is one JSON object per line, e.g. ``{"kind": "train", "epoch": 3, "step": 1200, "loss": 4.1,
"seq_per_s": 850.0}`` or ``{"kind": "valid", "epoch": 3, "hr@10": 0.31, ...}``. Lines are appended and
flushed one at a time; :func:`read_metrics_log` ignores a last line cut short by a crash.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from mol_core.atomic import write_bytes_atomically, write_text_atomically

__all__ = ["MetricsLog", "plot_training_curves", "read_metrics_log"]


class MetricsLog:
    """Appends JSON records to ``path`` (created with its parent folders)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        """Appends one record as a line and flushes it to disk."""
        line = json.dumps(record, sort_keys=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()

    def drop_after(self, epoch: int) -> None:
        """Rewrites the log (atomically) without the records of epochs after ``epoch`` (on resume)."""
        if not self.path.is_file():
            return
        kept = [r for r in read_metrics_log(self.path) if int(r.get("epoch", 0)) <= epoch]
        write_text_atomically(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def read_metrics_log(path: str | Path) -> list[dict[str, Any]]:
    """Reads every complete record of a metrics log."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return records


def plot_training_curves(log_path: str | Path, png_path: str | Path, *, title: str = "") -> Path:
    """Plots training loss and validation HR@10 / NDCG@10 per epoch into a PNG (written atomically),
    under ``title`` (which model, see :func:`~mol_train.train.run_title`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics_log(log_path)
    train = [r for r in records if r.get("kind") == "train" and "loss" in r]
    valid: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for record in records:
        if record.get("kind") == "valid":
            for key in ("hr@10", "ndcg@10"):
                if key in record:
                    valid[key].append((record["epoch"], record[key]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if title:
        fig.suptitle(title)
    left.plot([r["epoch"] for r in train], [r["loss"] for r in train], marker=".")
    left.set(title="training loss", xlabel="epoch", ylabel="loss")
    for key, points in valid.items():
        right.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
    right.set(title="validation (full corpus)", xlabel="epoch")
    if valid:
        right.legend()
    fig.tight_layout()
    target = Path(png_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_bytes_atomically(target, lambda handle: fig.savefig(handle, format="png", dpi=100))
    finally:
        plt.close(fig)
    return target
