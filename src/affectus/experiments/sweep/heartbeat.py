"""The heartbeat thread that keeps a running trial alive in the storage, so a killed worker's trial is
found stale (and marked FAIL) by the next worker that looks."""

from __future__ import annotations

import contextlib
import threading


class Heartbeat:
    """Records the running trial's heartbeat every `interval` s: what `optimize` does, for our ask/tell."""

    def __init__(self, storage, trial_id: int, interval: int | None) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if interval is None:
            return

        def beat() -> None:
            while True:
                with contextlib.suppress(Exception):  # a database hiccup must not end the training
                    storage.record_heartbeat(trial_id)
                if self._stop.wait(interval):
                    return

        self._thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
