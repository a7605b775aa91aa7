"""How far a build is: :class:`Progress` (stages and their share of the whole) and
:class:`DatabaseProgress`, which writes it into the export row for the page to poll.
"""

from __future__ import annotations

import time

from prefloop import jobs

from ..models import Export


class Progress:
    """Receives a build's progress. ``stage(name, total)`` starts a stage, ``advance(n)`` moves it."""

    #: Stage -> share of the whole build (the fraction shown in the UI).
    STAGES = {"load": 0.10, "aggregate": 0.10, "pairs": 0.55, "judgments": 0.10, "hf": 0.10, "card": 0.05}

    def __init__(self) -> None:
        self.name = ""
        self.total = 0
        self.done = 0
        self.base = 0.0

    def stage(self, name: str, total: int = 0) -> None:
        if self.name:
            self.base += self.STAGES.get(self.name, 0.0)
        self.name, self.total, self.done = name, total, 0
        self.changed()

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.changed()

    @property
    def fraction(self) -> float:
        share = self.STAGES.get(self.name, 0.0)
        inner = (self.done / self.total) if self.total else 0.0
        return min(0.99, self.base + share * min(1.0, inner))

    def changed(self) -> None:  # override
        pass

    def close(self) -> None:  # override
        pass


class DatabaseProgress(Progress):
    """Writes ``progress`` and ``step`` into the export row, at most twice a second, while this
    build's claim holds it (:func:`prefloop.jobs.fenced`)."""

    def __init__(self, export: Export, interval: float = 0.5) -> None:
        super().__init__()
        self.export = export
        self.interval = interval
        self.last = 0.0

    def changed(self) -> None:
        now = time.monotonic()
        if now - self.last < self.interval and self.done and self.done < self.total:
            return
        self.last = now
        step = self.name + (f" {self.done}/{self.total}" if self.total else "")
        jobs.fenced(self.export).update(progress=round(self.fraction, 4), step=step[:200])
