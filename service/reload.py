"""Follow the production pointer: when `stancewatch models promote/rollback` (or a training run)
changes production, load the new version in the background and swap it in.

Requests already running finish on the version they started with (the service carries the model in
each batcher job); requests that arrive after the swap get the new one. Nothing is dropped.

A version that fails to load is not loaded again at every check (each try is a full load: seconds
of CPU and hundreds of MB on the path that serves requests). It is retried after an exponential
back-off, `interval * 2**failures` capped at BACKOFF_CAP_S, in case the failure was passing (a
disk filling up, a store being copied in). A different newly promoted tag is tried at the next check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from stancewatch.model import store

logger = logging.getLogger("stancewatch.service")

# Ten minutes: a broken version costs at most one load per ten minutes, and a fixed one is picked up
# within ten minutes without a restart.
BACKOFF_CAP_S = 600.0


class ProductionWatcher:
    def __init__(self, service, interval: float, clock: Callable[[], float] = time.monotonic, start: bool = True):
        self.service = service
        self.interval = interval
        self.clock = clock
        # The last tag that failed to load: (tag, failures so far, do not try before this clock time).
        self.failed: tuple[str, int, float] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="production-watcher", daemon=True)
        if start:
            self._thread.start()

    def _load(self, tag: str):
        from stancewatch.model.predictor import StanceModel

        return StanceModel(
            Path(store.get(tag).path), backend=self.service.backend_choice, threads=self.service.model.threads, tag=tag
        )

    def check_once(self) -> bool:
        """Swap in the production version if it changed; True when a swap happened."""
        try:
            tag = store.production_tag()
        except (OSError, ValueError):  # an unreadable pointer: keep serving, look again next time
            logger.exception("could not read the production pointer")
            return False
        if not tag or tag == self.service.tag:
            return False
        failures = 0
        if self.failed is not None and self.failed[0] == tag:
            failures, retry_at = self.failed[1], self.failed[2]
            if self.clock() < retry_at:
                return False
        try:
            model = self._load(tag)
        except Exception:  # keep serving the current model
            failures += 1
            delay = min(BACKOFF_CAP_S, max(self.interval, 1.0) * 2**failures)
            self.failed = (tag, failures, self.clock() + delay)
            logger.exception(
                "could not load new production version %s (failure %d); still serving %s; "
                "next try in %.0f s, or at once if another version is promoted",
                tag,
                failures,
                self.service.tag,
                delay,
            )
            return False
        self.failed = None
        self.service.swap_model(model)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check_once()

    def stop(self) -> None:
        self._stop.set()
