"""Adaptive micro-batching for the HTTP service.

Concurrent requests put their items in one queue; a single inference thread takes everything
queued (up to `max_items`, shared fairly between requests) as one batch, runs it, and hands each
request its slice of the results. A lone request runs at once; requests that arrive while a
batch is running form the next batch. A request larger than `max_items` is split across batches
instead of being rejected. Works from any asyncio event loop (one per test is fine).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Any, Callable, Sequence


class _Job:
    __slots__ = ("items", "results", "next", "done", "loop", "future")

    def __init__(self, items: Sequence[Any], loop: asyncio.AbstractEventLoop, future: asyncio.Future):
        self.items = items
        self.results: list[Any] = [None] * len(items)
        self.next = 0  # index of the first item not yet taken into a batch
        self.done = 0  # items with a result
        self.loop = loop
        self.future = future


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
    """Runs `fn(items) -> results` (same length, same order) on merged batches in one thread."""

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], max_items: int = 64,
                 thread_init: Callable[[], None] | None = None, name: str = "micro-batcher",
                 gather_ms: float = 0.0):
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.fn = fn
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

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Results for `items`, in order, computed within shared batches."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append(_Job(list(items), loop, future))
            self._cond.notify()
        return await future

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
            taken: dict[int, list] = {}
            budget = self.max_items
            while budget and self._queue:
                share = max(1, budget // len(self._queue))
                for job in list(self._queue):
                    if job.future.cancelled():  # the client went away: skip the rest of its items
                        self._queue.remove(job)
                        continue
                    n = min(share, budget, len(job.items) - job.next)
                    if n <= 0:
                        break
                    entry = taken.setdefault(id(job), [job, job.next, job.next])
                    entry[2] += n
                    job.next += n
                    budget -= n
                    if job.next == len(job.items):
                        self._queue.remove(job)
            self._busy = len(taken) > 1
            return [tuple(entry) for entry in taken.values()]

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
            batch = [item for job, start, stop in slices for item in job.items[start:stop]]
            init, self._pending_init = self._pending_init, None
            if init is not None:
                init()
            try:
                results = self.fn(batch)
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
            offset = 0
            for job, start, stop in slices:
                job.results[start:stop] = results[offset : offset + stop - start]
                offset += stop - start
                job.done += stop - start
                if job.done == len(job.items):
                    _notify(job, job.results)
