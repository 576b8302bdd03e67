"""Dynamic micro-batching: concurrent Retrieve calls share one encoder run and one index search.

A single consumer task takes every waiting request (up to ``max_batch`` queries). While other calls are
still in progress (being parsed, about to be queued) it waits up to ``max_wait`` for them; a lone call is
dispatched at once, so batching costs no latency at low load (``fixed_wait`` instead always waits the
full ``max_wait`` for company). It then groups them by index version and :attr:`ParsedRequest.batch_key`
and runs each group in one worker thread (so the event loop keeps accepting calls). Requests whose call
was cancelled or whose deadline expired while queued are dropped without any work.

The worker is a daemon thread: a search cannot be interrupted, so at shutdown :meth:`MicroBatcher.abort`
answers the calls still waiting (queued or searching) with UNAVAILABLE and the process does not wait for
the search to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

import torch

from mol_core.bundle import ModelBundle
from mol_core.errors import MolError
from mol_core.similarity import QuerySide
from mol_serve.codec import ParsedRequest
from mol_serve.errors import Unavailable
from mol_serve.registry import LoadedIndex

__all__ = ["BatchOutcome", "MicroBatcher"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOutcome:
    """One request's share of a batch: per query ``(ids, scores)`` and server timings in microseconds."""

    ids: list[list[int]]
    scores: list[list[float]]
    queue_us: int
    encode_us: int
    search_us: int
    batch_queries: int


@dataclass
class _Entry:
    loaded: LoadedIndex
    parsed: ParsedRequest
    future: asyncio.Future[BatchOutcome]
    enqueued: float  # time.perf_counter() seconds
    deadline: float | None  # time.monotonic() seconds, or None
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = self.parsed.batch_size

    def dead(self) -> bool:
        return self.future.done() or (self.deadline is not None and time.monotonic() >= self.deadline)


class MicroBatcher:
    """Groups concurrent requests into batched searches.

    Args:
        bundle: model bundle for history queries, or ``None``.
        max_batch: most queries per search (a single larger request runs alone).
        max_wait_s: longest the first request of a batch waits for company.
        on_batch: called with the number of queries of each search run (metrics).
        on_skip: called once per request dropped unanswered (cancelled or expired while queued).
        fixed_wait: always wait ``max_wait_s`` for a batch to fill (default: only while more calls are
            in progress, as told by :attr:`inflight`).
        threads: torch intra-op threads for the worker (``None`` = unchanged).
    """

    def __init__(
        self,
        bundle: ModelBundle | None,
        *,
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] | None = None,
        on_skip: Callable[[], None] | None = None,
        threads: int | None = None,
        fixed_wait: bool = False,
    ) -> None:
        self.bundle = bundle
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._on_skip = on_skip
        self.fixed_wait = fixed_wait
        #: Returns the number of Retrieve calls in progress (set by the servicer); None = unknown.
        self.inflight: Callable[[], int] | None = None
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue()
        self._executor = _DaemonThreadExecutor("mol-serve-search")
        if threads is not None:
            self._executor.submit(torch.set_num_threads, threads).result()
        self._task: asyncio.Task[None] | None = None
        self._searching: list[_Entry] = []  # the entries of the search running now
        self.skipped = 0  # requests dropped because cancelled or expired before running

    def start(self) -> None:
        """Starts the consumer task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mol-serve-batcher")

    @property
    def busy(self) -> bool:
        """Whether the worker thread is running a search now."""
        return self._executor.running

    def abort(self, reason: str) -> int:
        """Fails every call still waiting, queued or in the running search, with
        :class:`~mol_serve.errors.Unavailable` (``reason``); returns how many."""
        waiting = [*self._searching]
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        failed = 0
        for entry in waiting:
            if not entry.future.done():
                entry.future.set_exception(Unavailable(reason))
                failed += 1
        return failed

    async def stop(self) -> None:
        """Stops the consumer; queued requests fail with ``CancelledError``. Does not wait for a running
        search (its thread is a daemon)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            self._queue.get_nowait().future.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(
        self, loaded: LoadedIndex, parsed: ParsedRequest, deadline: float | None
    ) -> BatchOutcome:
        """Queues a request and waits for its results (cancelling the wait drops the request)."""
        future: asyncio.Future[BatchOutcome] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Entry(loaded, parsed, future, time.perf_counter(), deadline))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch, rows = [first], first.rows
            until = loop.time() + self.max_wait_s
            while rows < self.max_batch:
                try:
                    entry = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = until - loop.time()
                    if remaining <= 0 or not self._more_expected(len(batch)):
                        break
                    try:
                        entry = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                batch.append(entry)
                rows += entry.rows
            await self._dispatch(batch)

    def _more_expected(self, collected: int) -> bool:
        """Whether waiting may bring more requests: always with ``fixed_wait``, else while calls not yet
        in the batch are in progress."""
        if self.fixed_wait or self.inflight is None:
            return True
        return self.inflight() > collected

    async def _dispatch(self, batch: list[_Entry]) -> None:
        groups: dict[tuple[object, ...], list[_Entry]] = {}
        for entry in batch:
            groups.setdefault((id(entry.loaded), *entry.parsed.batch_key), []).append(entry)
        loop = asyncio.get_running_loop()
        for group in groups.values():
            live = [e for e in group if not self._skip_if_dead(e)]
            if not live:
                continue
            self._searching = live
            try:
                outcomes = await loop.run_in_executor(self._executor, self._search, live)
            except MolError as err:
                if len(live) == 1:
                    _fail(live[0], err)
                    continue
                for entry in live:  # one bad request must not fail its batch mates
                    try:
                        (outcome,) = await loop.run_in_executor(self._executor, self._search, [entry])
                        _deliver(entry, outcome)
                    except Exception as single:
                        _fail(entry, single)
                continue
            except Exception as err:
                logger.exception("search of a batch of %d requests failed", len(live))
                for entry in live:
                    _fail(entry, err)
                continue
            finally:
                self._searching = []
            for entry, outcome in zip(live, outcomes, strict=True):
                _deliver(entry, outcome)

    def _skip_if_dead(self, entry: _Entry) -> bool:
        """True (and the request dropped, counted) when its call was cancelled or its deadline passed."""
        if not entry.dead():
            return False
        self.skipped += 1
        if self._on_skip is not None:
            self._on_skip()
        if not entry.future.done():
            entry.future.cancel()
        return True

    def _search(self, entries: list[_Entry]) -> list[BatchOutcome]:
        """Runs in the worker thread: encode (history, text) or stack (embeddings), then one search."""
        start = time.perf_counter()
        first = entries[0].parsed
        loaded = entries[0].loaded
        encode_us = 0
        if first.kind == "history":
            if self.bundle is None:  # parse_request refuses this; kept as a guard for direct callers
                raise MolError("history queries need a model bundle")
            histories = [h for e in entries for h in e.parsed.histories]
            times = (
                None
                if first.timestamps is None
                else [t for e in entries for t in (e.parsed.timestamps or [])]
            )
            qtimes = (
                None
                if first.query_times is None
                else [t for e in entries for t in (e.parsed.query_times or [])]
            )
            users = [u for e in entries for u in e.parsed.user_ids]
            query = self.bundle.encode(histories, timestamps=times, user_ids=users, query_times=qtimes)
            encode_us = int((time.perf_counter() - start) * 1e6)
        elif first.kind == "text":
            if self.bundle is None:  # parse_request refuses this; kept as a guard for direct callers
                raise MolError("text queries need a text model bundle")
            query = self.bundle.encode_texts([t for e in entries for t in e.parsed.texts])
            encode_us = int((time.perf_counter() - start) * 1e6)
        else:
            emb = torch.cat(
                [e.parsed.embeddings for e in entries if e.parsed.embeddings is not None]
            )  # (B, Pq, d)
            gates = [e.parsed.gating for e in entries if e.parsed.gating is not None]
            query = QuerySide(emb, torch.cat(gates) if gates else None)
        rows_excluded = [row for e in entries for row in e.parsed.exclude]
        exclude = rows_excluded if any(rows_excluded) else None  # no exclusion: skip masking entirely
        search_start = time.perf_counter()
        scores, ids = loaded.index.search(
            query, first.k, exclude=exclude, params=first.params
        )  # (B, k), (B, k)
        search_us = int((time.perf_counter() - search_start) * 1e6)
        total = scores.shape[0]
        if self._on_batch is not None:
            self._on_batch(total)
        id_rows, score_rows = ids.cpu().tolist(), scores.cpu().tolist()
        out, offset = [], 0
        for entry in entries:
            rows = range(offset, offset + entry.rows)
            offset += entry.rows
            keep = [[j for j, x in enumerate(id_rows[r]) if x >= 0] for r in rows]
            out.append(
                BatchOutcome(
                    ids=[[id_rows[r][j] for j in kk] for r, kk in zip(rows, keep, strict=True)],
                    scores=[[score_rows[r][j] for j in kk] for r, kk in zip(rows, keep, strict=True)],
                    queue_us=int((start - entry.enqueued) * 1e6) if start > entry.enqueued else 0,
                    encode_us=encode_us,
                    search_us=search_us,
                    batch_queries=total,
                )
            )
        return out


def _deliver(entry: _Entry, outcome: BatchOutcome) -> None:
    if not entry.future.done():
        entry.future.set_result(outcome)


def _fail(entry: _Entry, err: BaseException) -> None:
    if not entry.future.done():
        entry.future.set_exception(err)


class _DaemonThreadExecutor(Executor):
    """One daemon worker thread running submitted calls in order (``ThreadPoolExecutor``'s threads are
    joined at interpreter exit, so a long search would hold a stopping server past its grace period)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._closed = False
        self.running = False  # a call is executing now
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if self._closed:
            raise RuntimeError("the search worker is shut down")
        future: Future[Any] = Future()
        self._jobs.put((future, lambda: fn(*args, **kwargs)))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        if cancel_futures:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job[0].cancel()
        self._jobs.put(None)
        if wait:
            self._thread.join()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, call = job
            if not future.set_running_or_notify_cancel():
                continue
            self.running = True
            try:
                future.set_result(call())
            except BaseException as err:  # handed to the awaiting coroutine, as ThreadPoolExecutor does
                future.set_exception(err)
            finally:
                self.running = False
