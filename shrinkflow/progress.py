"""Progress a person can follow in a terminal and in a log file alike.

A long step (an epoch over a big table, a search, timing rounds) logs where it is through
`logging`, at most every `Heartbeat.every` seconds and so at least every twice that while steps
stay shorter than it: a progress bar draws nothing when the output is a file, and a run that
prints nothing for minutes looks hung.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

EVERY_S = 5.0  # between two lines of one step: a line every 10 s at most, with steps under 5 s


@dataclass
class Heartbeat:
    """Says when a step should log where it is: `due()` is true once `every` seconds have passed
    since it last was (or since the heartbeat was made)."""

    every: float = EVERY_S
    clock: Callable[[], float] = time.monotonic
    _last: float = field(init=False)

    def __post_init__(self) -> None:
        self._last = self.clock()

    def due(self) -> bool:
        now = self.clock()
        if now - self._last < self.every:
            return False
        self._last = now
        return True


def rate(count: float, seconds: float) -> str:
    """'12,300 rows/s' (count per second, rounded to three significant figures)."""
    per_second = count / seconds if seconds > 0 else 0.0
    return f"{float(f'{per_second:.3g}'):,.0f} rows/s"


@contextmanager
def ticking(log: logging.Logger, what: str, every: float = EVERY_S) -> Iterator[None]:
    """While the block runs (one long call that reports nothing itself: a validation suite, a
    library's optimizer), log "still <what> (N s)" every `every` seconds from a thread."""
    done = threading.Event()
    started = time.monotonic()

    def tick() -> None:
        while not done.wait(every):
            log.info("still %s (%.0f s)", what, time.monotonic() - started)

    ticker = threading.Thread(target=tick, name="progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
