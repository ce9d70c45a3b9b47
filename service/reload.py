"""Follow the production pointer: when `stancewatch models promote/rollback` (or a training run)
changes production, load the new version in the background and swap it in between batches.
Requests in flight finish on the model they started with; nothing is dropped."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from stancewatch.model import store

logger = logging.getLogger("stancewatch.service")


class ProductionWatcher:
    def __init__(self, service, interval: float):
        self.service = service
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="production-watcher", daemon=True)
        self._thread.start()

    def check_once(self) -> bool:
        """Swap in the production version if it changed; True when a swap happened."""
        tag = store.production_tag()
        if not tag or tag == self.service.tag:
            return False
        from stancewatch.model.predictor import StanceModel

        try:
            model = StanceModel(Path(store.get(tag).path), backend=self.service.backend_choice,
                                threads=self.service.model.threads, tag=tag)
        except Exception:  # keep serving the current model; try again next time
            logger.exception("could not load new production version %s", tag)
            return False
        self.service.swap_model(model)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check_once()

    def stop(self) -> None:
        self._stop.set()
