"""Logging for failures that every request or every pass meets while they last (Redis
down, full or refusing): one line now and then with a count, not one per request."""

from __future__ import annotations

import logging
import time


class Throttled:
    """Log at most one line per `every_s`; the next line says how many were held back."""

    def __init__(self, log: logging.Logger, every_s: float = 10.0) -> None:
        self.log = log
        self.every_s = every_s
        self.next_at = 0.0
        self.quiet = 0

    def warn(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self.next_at:
            self.quiet += 1
            return
        if self.quiet:
            msg += f" (and {self.quiet} more since the last such line)"
        self.log.warning(msg, *args)
        self.next_at, self.quiet = now + self.every_s, 0
