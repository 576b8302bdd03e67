"""SIGTERM while a long search runs on a busy CPU: the server answers UNAVAILABLE and exits within its
grace period (plus process teardown), instead of waiting for the search to end."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import start_server
from mol_core.bundle import load_bundle
from mol_core.similarity import ItemSide
from mol_index import MolIndex
from mol_serve import AsyncRetrievalClient, Unavailable

NUM_ITEMS = 400_000
QUERIES = 1024
GRACE_S = 1.0
#: Interpreter teardown after the server stopped (torch and grpc shutting down on a busy machine).
TEARDOWN_S = 6.0


@pytest.mark.slow
def test_sigterm_during_a_long_search_answers_unavailable_within_the_grace_period(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    bundle = load_bundle(artifacts["bundle"])
    sim = bundle.similarity
    torch.manual_seed(0)
    with torch.no_grad():
        items = sim.item_side(torch.randn(NUM_ITEMS, sim.item_input_dim))
    index = MolIndex.build(
        sim, torch.arange(NUM_ITEMS, dtype=torch.int64), ItemSide(items.embeddings, items.gating)
    ).save(tmp_path / "big")
    query = bundle.encode([[1, 2, 3]] * QUERIES)
    proc = start_server(
        tmp_path,
        "--index",
        f"big={index}",
        "--shutdown-grace-s",
        str(GRACE_S),
        "--max-batch",
        str(QUERIES),
        name="big",
    )
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a busy CPU
    try:

        async def scenario() -> tuple[BaseException | object, float]:
            async with AsyncRetrievalClient(proc.target, timeout=120) as client:
                call = asyncio.create_task(
                    client.retrieve(
                        embeddings=np.asarray(query.embeddings),
                        gating=np.asarray(query.gating),
                        top_k=10,
                    )
                )
                await asyncio.sleep(1.0)  # the search is running
                assert not call.done()
                proc.process.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                outcome = await asyncio.gather(call, return_exceptions=True)
                return outcome[0], sent

        outcome, sent = asyncio.run(scenario())
        assert isinstance(outcome, Unavailable), outcome
        assert "did not finish within 1 s" in str(outcome)
        assert proc.process.wait(timeout=60) == 0
        assert time.monotonic() - sent < GRACE_S + TEARDOWN_S
    finally:
        burner.kill()
        burner.wait(timeout=10)
        proc.stop()
