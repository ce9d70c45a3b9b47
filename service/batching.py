"""Adaptive micro-batching for the HTTP service.

Concurrent requests put their items in one queue; a single inference thread takes everything
queued (up to `max_items`, shared fairly between requests) as one batch, runs it, and hands each
request its slice of the results. A lone request runs at once; requests that arrive while a
batch is running form the next batch. A request larger than `max_items` is split across batches
instead of being rejected. Works from any asyncio event loop (one per test is fine).

Every job carries a `key` (the service passes the model version the request started on) and a batch
only holds jobs of one key, so a hot reload never scores one request with two versions. A job whose
request task is cancelled (the client disconnected, or shutdown ran out of grace) is marked
cancelled and its items not yet taken are dropped: at most the batch already running is wasted.

Why a hand-written batcher and not `@bentoml.api(batchable=True)`: it measured better or equal on
the same bench (bench/serve.py, one run, tiny model, 1 thread, 32 clients, busy 2-core box): 242 vs
202 requests/s for single sentences (1.20x; BentoML's batching path cost 3.33 ms of server CPU per
request against our 2.79), 647 vs 653 sentences/s with 8 sentences per request (0.99x, equal within
noise). And it does what BentoML's cannot: BentoML never splits a request across batches and answers
503 when a request's predicted time exceeds `max_latency_ms` (a 500-item request did, see
/work/shared/NOTES-BENTOML.md), so a 2,000-sentence document would have to be one batch; it cannot
share batches fairly between a document and single sentences, keep each request on the model version
it started on, or drop the rest of a request whose client went away.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any


class _Job:
    __slots__ = ("items", "results", "next", "done", "loop", "future", "key", "cancelled")

    def __init__(self, items: list[Any], loop: asyncio.AbstractEventLoop, future: asyncio.Future, key: Any = None):
        self.items = items
        self.results: list[Any] = [None] * len(items)
        self.next = 0  # index of the first item not yet taken into a batch
        self.done = 0  # items with a result
        self.loop = loop
        self.future = future
        self.key = key  # jobs of different keys never share a batch
        self.cancelled = False  # set from the request's task when it is cancelled

    def gone(self) -> bool:
        return self.cancelled or self.future.cancelled()


def _resolve(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _notify(job: _Job, result: Any = None, error: BaseException | None = None) -> None:
    try:
        job.loop.call_soon_threadsafe(_resolve, job.future, result, error)
    except RuntimeError:  # the request's event loop is closed
        pass


class MicroBatcher:
    """Runs `fn(items) -> results` (same length, same order) on merged batches in one thread.

    With `keyed=True` it calls `fn(items, key)` instead, `key` being what every job in the batch
    was submitted with.
    """

    def __init__(
        self,
        fn: Callable[..., Sequence[Any]],
        max_items: int = 64,
        thread_init: Callable[[], None] | None = None,
        name: str = "micro-batcher",
        gather_ms: float = 0.0,
        keyed: bool = False,
    ):
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.fn = fn
        self.keyed = keyed
        self._last_key: Any = None
        self.dropped_items = 0  # items of cancelled requests that were never run (for tests and metrics)
        self.max_items = max_items
        self._thread_init = thread_init
        self._pending_init: Callable[[], None] | None = None
        self.gather_s = gather_ms / 1000.0
        self._busy = False  # the last batch merged several requests
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0  # batches run so far (for tests and metrics)
        self.batch_sizes: deque[int] = deque(maxlen=1000)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def submit(self, items: Sequence[Any], key: Any = None) -> list[Any]:
        """Results for `items`, in order, computed within shared batches of jobs with the same `key`.

        A list is used as it is (not copied): the caller must not change it until this returns.
        """
        if not items:
            return []
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        job = _Job(items if isinstance(items, list) else list(items), loop, future, key)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append(job)
            self._cond.notify()
        try:
            return await future
        except asyncio.CancelledError:
            # The request's task was cancelled: the client disconnected (the service's middleware
            # cancels it) or shutdown ran out of grace (uvicorn cancels it). The flag is read under
            # the lock at the next batch, so at most the batch already running is spent on it.
            job.cancelled = True
            with self._cond:
                self._cond.notify()
            raise

    def run_in_worker(self, fn: Callable[[], None]) -> None:
        """Run `fn` in the inference thread before its next batch (e.g. per-thread runtime setup)."""
        self._pending_init = fn

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the inference thread once the queued work is done."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _take(self) -> list[tuple[_Job, int, int]] | None:
        """Wait for work; return (job, start, stop) slices totalling at most max_items.

        The budget is shared round-robin between queued requests, so a short request is not
        stuck behind a long document: it gets into the very next batch.
        """
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            if self.gather_s and self._busy and self._queued_items() < self.max_items:
                # Under load (the last batch held several requests), clients whose answers just went
                # out are about to send again: a short wait fills the batch, and a fuller batch is
                # cheaper per sentence. An idle server (single requests) never waits.
                deadline = time.monotonic() + self.gather_s
                while self._queued_items() < self.max_items and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            self._drop_cancelled()
            if not self._queue:
                return []
            # One key per batch. After a batch of key K, the oldest job of another key goes next if
            # there is one, so requests that arrive after a reload are not stuck behind a long
            # document still running on the old version (nor the other way round).
            key = self._queue[0].key
            for job in self._queue:
                if job.key != self._last_key:
                    key = job.key
                    break
            group = [job for job in self._queue if job.key == key]
            self._last_key = key
            taken: dict[int, list] = {}
            budget = self.max_items
            while budget and group:
                share = max(1, budget // len(group))
                for job in list(group):
                    n = min(share, budget, len(job.items) - job.next)
                    if n <= 0:
                        break
                    entry = taken.setdefault(id(job), [job, job.next, job.next])
                    entry[2] += n
                    job.next += n
                    budget -= n
                    if job.next == len(job.items):
                        self._queue.remove(job)
                        group.remove(job)
            self._busy = len(taken) > 1
            return [tuple(entry) for entry in taken.values()]

    def _drop_cancelled(self) -> None:
        """Remove jobs whose request was cancelled (called with the lock held)."""
        if any(job.gone() for job in self._queue):
            for job in [j for j in self._queue if j.gone()]:
                self.dropped_items += len(job.items) - job.next
                self._queue.remove(job)

    def _queued_items(self) -> int:
        return sum(len(job.items) - job.next for job in self._queue)

    def _run(self) -> None:
        if self._thread_init is not None:
            self._thread_init()
        while True:
            slices = self._take()
            if slices is None:
                return
            if not slices:
                continue
            if len(slices) == 1 and slices[0][1] == 0 and slices[0][2] == len(slices[0][0].items):
                batch = slices[0][0].items  # one whole request (the common case when idle): no copy
            else:
                batch = [item for job, start, stop in slices for item in job.items[start:stop]]
            key = slices[0][0].key
            init, self._pending_init = self._pending_init, None
            if init is not None:
                init()
            try:
                results = self.fn(batch, key) if self.keyed else self.fn(batch)
                if len(results) != len(batch):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            except BaseException as exc:  # hand the error to every waiting request, keep serving
                for job in {id(j): j for j, _, _ in slices}.values():
                    with self._cond:
                        if job in self._queue:
                            self._queue.remove(job)
                    _notify(job, None, exc)
                continue
            self.batches += 1
            self.batch_sizes.append(len(batch))
            if len(slices) == 1 and slices[0][1] == 0 and slices[0][2] == len(slices[0][0].items):
                job = slices[0][0]
                if not job.gone():
                    _notify(job, results if isinstance(results, list) else list(results))
                continue
            offset = 0
            for job, start, stop in slices:
                job.results[start:stop] = results[offset : offset + stop - start]
                offset += stop - start
                job.done += stop - start
                if job.done == len(job.items) and not job.gone():
                    _notify(job, job.results)
