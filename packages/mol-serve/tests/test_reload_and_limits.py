"""Hot reload under load, bad artifacts, deadlines, overload and graceful SIGTERM on real servers."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_server_process import index_version

from conftest import ADMIN_TOKEN, TOKEN, ServerProcess, start_server
from mol_serve import (
    AsyncRetrievalClient,
    DeadlineExceeded,
    LoadRefused,
    NotFound,
    Overloaded,
    RetrievalClient,
)


async def _load_generator(
    target: str, stop: asyncio.Event, workers: int, max_requests: int
) -> tuple[Counter[str], list[str]]:
    """Closed-loop clients on alias 'live' until ``stop`` or ``max_requests``; returns versions, failures."""
    versions: Counter[str] = Counter()
    failures: list[str] = []
    async with AsyncRetrievalClient(target, token=TOKEN, timeout=20) as client:

        async def worker(seed: int) -> None:
            n = 0
            while not stop.is_set() and sum(versions.values()) + len(failures) < max_requests:
                history = [1 + (seed + n) % 50, 2 + n % 40]
                try:
                    result = await client.retrieve(histories=[history], top_k=5, index_alias="live")
                    versions[result.index_version] += 1
                except Exception as err:
                    failures.append(repr(err))
                n += 1

        await asyncio.gather(*(worker(i) for i in range(workers)))
    return versions, failures


def test_reload_under_load_has_zero_failures(server: ServerProcess, artifacts: dict[str, Path]) -> None:
    admin = RetrievalClient(server.target, token=TOKEN, admin_token=ADMIN_TOKEN, timeout=60)
    first = admin.load_index(str(artifacts["index_a"]), "live")
    assert first.index_version == index_version(artifacts["index_a"])

    async def scenario() -> tuple[Counter[str], list[str], str, str]:
        stop = asyncio.Event()
        load = asyncio.create_task(_load_generator(server.target, stop, workers=4, max_requests=3000))
        await asyncio.sleep(0.5)
        async with AsyncRetrievalClient(server.target, token=TOKEN, admin_token=ADMIN_TOKEN, timeout=60) as a:
            flipped = await a.load_index(str(artifacts["index_b"]), "live")
            await asyncio.sleep(0.5)
            with pytest.raises(LoadRefused) as refused:
                await a.load_index(str(artifacts["bad"]), "live")
            await asyncio.sleep(0.3)
        stop.set()
        versions, failures = await asyncio.wait_for(load, 60)
        return versions, failures, flipped.previous_version, str(refused.value)

    versions, failures, previous, refusal = asyncio.run(scenario())
    assert failures == []
    a_version, b_version = index_version(artifacts["index_a"]), index_version(artifacts["index_b"])
    assert previous == a_version
    assert versions[a_version] > 0, versions
    assert versions[b_version] > 0, versions
    assert "cannot load index artifact" in refusal or "smoke" in refusal
    # the bad artifact did not replace the good version
    assert admin.retrieve(histories=[[1]], top_k=3, index_alias="live").index_version == b_version
    removed = admin.unload_index(alias="live")
    assert list(removed.removed_aliases) == ["live"]
    with pytest.raises(NotFound):
        admin.unload_index(alias="live")
    admin.close()


@pytest.fixture(scope="module")
def slow_server(
    artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """No auth, 400 ms batching window, at most 2 concurrent Retrieve calls."""
    proc = start_server(
        tmp_path_factory.mktemp("slow"),
        "--bundle",
        str(artifacts["bundle"]),
        "--index",
        f"prod={artifacts['index_a']}",
        "--max-wait-ms",
        "400",
        "--fixed-wait",
        "--max-concurrent",
        "2",
        "--metrics-port",
        "0",
        "--shutdown-grace-s",
        "5",
        name="slow",
    )
    yield proc
    proc.stop()


def _metric(server: ServerProcess, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_deadline_expiry_does_no_work(slow_server: ServerProcess) -> None:
    with RetrievalClient(slow_server.target, timeout=10) as client:
        before = _metric(slow_server, "mol_serve_skipped_requests_total")
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            client.retrieve(histories=[[1, 2]], top_k=3, timeout=0.1)
        assert time.monotonic() - start < 5
        deadline = time.monotonic() + 10
        while (
            _metric(slow_server, "mol_serve_skipped_requests_total") <= before and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert _metric(slow_server, "mol_serve_skipped_requests_total") == before + 1
        assert client.retrieve(histories=[[1, 2]], top_k=3).ids  # still serving


def test_overload_answers_resource_exhausted(slow_server: ServerProcess) -> None:
    async def burst() -> list[object]:
        async with AsyncRetrievalClient(slow_server.target, timeout=20) as client:
            calls = [client.retrieve(histories=[[1 + i]], top_k=3) for i in range(5)]
            return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(burst())
    overloaded = [o for o in outcomes if isinstance(o, Overloaded)]
    succeeded = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(succeeded) >= 2, outcomes
    assert len(overloaded) >= 1, outcomes
    assert all(isinstance(o, Overloaded) for o in outcomes if isinstance(o, BaseException)), outcomes


def test_sigterm_drains_in_flight_calls(slow_server: ServerProcess) -> None:
    """Runs last in this module: the in-flight call (held ~400 ms by the batcher) still succeeds."""

    async def scenario() -> object:
        async with AsyncRetrievalClient(slow_server.target, timeout=20) as client:
            call = asyncio.create_task(client.retrieve(histories=[[3, 4]], top_k=3))
            await asyncio.sleep(0.15)
            slow_server.process.send_signal(signal.SIGTERM)
            return await asyncio.wait_for(call, 20)

    result = asyncio.run(scenario())
    assert result.ids  # type: ignore[attr-defined]
    assert slow_server.process.wait(timeout=20) == 0
