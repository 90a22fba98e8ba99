"""Work started on a thread of its own while the caller goes on: mostly a request, whose wait
then overlaps the caller's own work (a walk, reading a local copy)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

_T = TypeVar("_T")


class Ahead(Generic[_T]):
    """`work()` running now; `get()` waits for its answer, or raises its error."""

    def __init__(self, work: Callable[[], _T]) -> None:
        self._answer: _T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], _T]) -> None:
        try:
            self._answer = work()
        except BaseException as exc:  # handed to the caller of get()
            self._error = exc

    def get(self) -> _T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._answer  # type: ignore[return-value]
