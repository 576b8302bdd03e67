"""A bundle loads where torchrec and mol-train cannot be imported, and reproduces the trained scores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mol_core.bundle import load_bundle
from mol_core.errors import ArtifactError
from mol_train.config import load_config
from mol_train.data import eval_batch, make_synthetic
from mol_train.export import export_bundle
from mol_train.model import build_model

BLOCKED_LOADER = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"torchrec", "fbgemm_gpu", "mol_train"}:
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Block())
import torch
from mol_core.bundle import load_bundle
bundle = load_bundle(sys.argv[1])
request = json.loads(sys.argv[2])
query = bundle.encode(request["histories"], timestamps=request["timestamps"], user_ids=request["users"],
                      query_times=request["query_times"])
with torch.no_grad():
    scores = bundle.similarity.score_corpus(query, bundle.items)
loaded = sorted(m for m in sys.modules if m.startswith(("torchrec", "mol_train")))
print(json.dumps({"scores": scores.tolist(), "loaded": loaded}))
"""


@pytest.mark.integration
@pytest.mark.parametrize("user_ids", [False, True], ids=["mol", "mol-user-ids"])
def test_bundle_reproduces_scores_without_torchrec(tmp_path: Path, user_ids: bool) -> None:
    torch.manual_seed(0)
    dataset = make_synthetic(num_users=30, num_items=25, max_len=10, seed=2)
    extra = ["model.user_buckets=64", "similarity.user_components=1"] if user_ids else []
    model = build_model(load_config("tiny_cpu", ["data.max_len=10", *extra]), dataset.num_items).eval()
    encoder = model.query_encoder().eval()
    bundle_dir = export_bundle(
        encoder, list(dataset.item_vocab), tmp_path / "bundle", max_len=10, use_timestamps=True
    )

    rows = [0, 1, 2]
    batch = eval_batch(dataset, rows, "test", max_len=10)
    with torch.no_grad():
        want = model.similarity.score_corpus(
            encoder(batch.history, batch.timestamps, batch.target_timestamps, batch.user_rows),
            model.corpus_side(encoder),
        )
    histories, timestamps = [], []
    for b in range(len(rows)):
        keep = batch.history[b] != 0
        histories.append(dataset.decode_items(batch.history[b][keep].numpy()).tolist())
        timestamps.append(batch.timestamps[b][keep].tolist())
    request = {
        "histories": histories,
        "timestamps": timestamps,
        "users": batch.user_rows.tolist(),
        "query_times": batch.target_timestamps.tolist(),
    }
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_LOADER, str(bundle_dir), json.dumps(request)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["loaded"] == []
    torch.testing.assert_close(torch.tensor(answer["scores"]), want, rtol=1e-5, atol=1e-5)
    # the item representations are stored: the item tower rebuilds the stored item side from them
    bundle = load_bundle(bundle_dir)
    assert bundle.item_representations is not None
    assert torch.equal(bundle.item_representations, encoder.item_table[1:].detach().float())
    with torch.no_grad():
        rebuilt = bundle.similarity.item_side(bundle.item_representations)
    torch.testing.assert_close(rebuilt.embeddings, bundle.items.embeddings)
    torch.testing.assert_close(rebuilt.gating, bundle.items.gating)


def test_bundle_checksums_and_existing_destination(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dataset = make_synthetic(num_users=20, num_items=20, max_len=10, seed=2)
    model = build_model(
        load_config("tiny_cpu", ["data.max_len=10", "similarity.kind='dot'"]), dataset.num_items
    )
    encoder = model.query_encoder().eval()
    path = export_bundle(encoder, list(dataset.item_vocab), tmp_path / "b", max_len=10, use_timestamps=True)
    bundle = load_bundle(path)
    assert bundle.items.embeddings.shape == (20, 1, 16)
    assert bundle.items.gating is None
    with pytest.raises(ArtifactError, match="already exists"):
        export_bundle(encoder, list(dataset.item_vocab), path, max_len=10, use_timestamps=True)
    tensors = path / "item_tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"sha256|SHA-256|checksum"):
        load_bundle(path)
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no staging folder left behind
