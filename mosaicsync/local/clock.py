"""One clock for every expiry on the local platform, so tests can move time instead of waiting."""

from __future__ import annotations

import threading
import time


class Clock:
    """Wall-clock time plus an offset that only `POST /_local/clock` changes (when allowed)."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.time() + self._offset

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._offset += seconds
        return self.now()

    def reset(self) -> float:
        with self._lock:
            self._offset = 0.0
        return self.now()
