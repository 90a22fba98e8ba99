"""The one adapter over watchfiles: its public `watch` generator, read on a thread into a queue.

Only the public API is used: the private notifier's constructor has changed between minor
releases. What building the private notifier directly gave is kept: a `Notifier` is returned only
once its watches are registered, so a write made right after is reported, and an error raised while
building them is raised by the constructor, where the caller can fall back to polling.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence

import watchfiles

# watchfiles yields an empty set after this long without a change. Its first yield proves the
# watches are registered, so this bounds how long the constructor waits; afterwards it costs one
# loop turn in Python per idle period (a batch in progress is never cut short by it).
READY_TIMEOUT_MS = 20


class Notifier:
    """One set of watches, read on its own thread into `out`.

    Puts `(time.monotonic(), changes)` for each batch, or `(time.monotonic(), exception)` once if
    watching fails after start-up; `changes` is a set of `(watchfiles.Change, path)`.
    """

    def __init__(
        self,
        paths: Sequence[str],
        out: queue.Queue,
        *,
        recursive: bool,
        force_polling: bool,
        poll_delay_ms: int,
        step_ms: int,
        debounce_ms: int,
    ) -> None:
        self.paths = list(paths)
        self.polling = force_polling
        self._out = out
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        changes = watchfiles.watch(
            *self.paths,
            watch_filter=None,  # the caller filters: it knows the ignore rules
            debounce=debounce_ms,
            step=step_ms,
            stop_event=self._stop,
            rust_timeout=READY_TIMEOUT_MS,
            yield_on_timeout=True,
            debug=False,
            raise_interrupt=False,
            force_polling=force_polling,
            poll_delay_ms=poll_delay_ms,
            recursive=recursive,
            # An unreadable folder must not stop the watch. watchfiles then skips any path the
            # native notifier fails to watch (a missing one too), not only unreadable ones.
            ignore_permission_denied=True,
        )
        self.thread = threading.Thread(
            target=self._run, args=(changes,), name="mosaicsync-watch", daemon=True
        )
        self.thread.start()
        try:
            self._ready.wait()
        except BaseException:  # Ctrl-C while registering: leave no thread behind
            self.close()
            raise
        if self._error is not None:
            self.thread.join()
            error, self._error = self._error, None
            raise error

    def _run(self, changes: Iterator[set[tuple[watchfiles.Change, str]]]) -> None:
        try:
            for batch in changes:
                if batch:
                    # Queued before the ready signal: nothing seen during start-up is lost.
                    self._out.put((time.monotonic(), batch))
                self._ready.set()
        except Exception as exc:
            if self._ready.is_set():
                self._out.put((time.monotonic(), exc))
            else:
                self._error = exc
        finally:
            self._ready.set()

    def close(self) -> None:
        """Stop watching and join the thread; watchfiles checks the stop event every step."""
        self._stop.set()
        self.thread.join()
