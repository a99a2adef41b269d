"""What the collector shows while it runs: a live table on a terminal, else a log line every
`LOG_EVERY` seconds (text or JSON, through the project's logging setup)."""

from __future__ import annotations

import collections
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rich.table import Table

log = logging.getLogger(__name__)

LOG_EVERY = 10.0  # seconds between progress lines when not on a terminal
RATE_WINDOW = 10.0  # seconds the displayed rate is averaged over


@dataclass
class Counts:
    """What happened to the messages since the collector started."""

    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    _marks: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)

    def mark(self, now: float) -> None:
        """Remember the accepted count at `now` for the rate."""
        self._marks.append((now, self.accepted))
        while len(self._marks) > 2 and now - self._marks[0][0] > RATE_WINDOW:
            self._marks.popleft()

    def rate(self) -> float:
        """Samples accepted per second over the last few seconds."""
        if len(self._marks) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._marks[0], self._marks[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def totals(self) -> str:
        """Machine-readable totals: accepted=A duplicates=D rejected=R."""
        rejected = sum(self.rejected.values())
        return f"accepted={self.accepted} duplicates={self.duplicates} rejected={rejected}"

    def summary(self) -> str:
        """One line: accepted, duplicates, rejected by reason, rate."""
        rejected = sum(self.rejected.values())
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.rejected.items()))
        detail = f" ({reasons})" if reasons else ""
        return (
            f"{self.accepted} accepted, {self.duplicates} duplicates, {rejected} rejected"
            f"{detail}; {self.rate():.1f} samples/s"
        )


class Progress(Protocol):
    """A way of showing the counts."""

    def update(self, counts: Counts) -> None:
        """Called often; shows the counts when it is time to."""

    def close(self, counts: Counts) -> None:
        """Show the final counts and release the terminal."""


class LogProgress:
    """A progress line through logging every LOG_EVERY seconds, and a final one."""

    def __init__(self) -> None:
        self._next = time.monotonic() + LOG_EVERY

    def update(self, counts: Counts) -> None:
        """Log the counts if LOG_EVERY has passed."""
        now = time.monotonic()
        counts.mark(now)
        if now >= self._next:
            self._next = now + LOG_EVERY
            log.info("collect: %s", counts.summary())

    def close(self, counts: Counts) -> None:
        """Log the final counts."""
        log.info("collect finished: %s", counts.summary())


class RichProgress:
    """A live table on the terminal; log lines print above it."""

    def __init__(self, out: str) -> None:
        from rich.console import Console
        from rich.live import Live

        self.out = out
        self.live = Live(console=Console(stderr=True), refresh_per_second=4, transient=False)
        self.live.start()
        _point_logging_at_stderr()  # Live replaced sys.stderr: log lines print above the table

    def _table(self, counts: Counts) -> Table:
        from rich.table import Table

        table = Table(title=f"edge-agent collect -> {self.out}", title_justify="left")
        for name in ("accepted", "duplicates", "rejected", "samples/s"):
            table.add_column(name, justify="right")
        rejected = sum(counts.rejected.values())
        table.add_row(
            str(counts.accepted), str(counts.duplicates), str(rejected), f"{counts.rate():.1f}"
        )
        for reason, n in sorted(counts.rejected.items()):
            table.add_row("", "", f"{reason}: {n}", "")
        return table

    def update(self, counts: Counts) -> None:
        """Redraw the table."""
        counts.mark(time.monotonic())
        self.live.update(self._table(counts))

    def close(self, counts: Counts) -> None:
        """Draw the final table and give the terminal back."""
        self.live.update(self._table(counts))
        self.live.stop()
        _point_logging_at_stderr()
        log.info("collect finished: %s", counts.summary())


def _point_logging_at_stderr() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)


def make_progress(out: str) -> Progress:
    """A live table when stderr is a terminal, else periodic log lines."""
    if sys.stderr.isatty():
        return RichProgress(out)
    return LogProgress()
