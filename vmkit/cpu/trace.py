"""Records of what happened and who held the CPU, shared by the machine and the hypervisor.

Taught in course/01_cpu/03_timers_multiplexing.ipynb ("un seul à la fois").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """One thing that happened, at a time counted in instructions."""

    time: int
    kind: str
    text: str
    vm: str | None = None

    def __str__(self) -> str:
        where = f"[{self.vm}] " if self.vm else ""
        return f"{self.time:>8}  {where}{self.kind}: {self.text}"


@dataclass(frozen=True)
class Span:
    """An interval during which one party held the CPU: ``hypervisor``, ``kernel``, ``pid N``, ``idle``."""

    start: int
    end: int
    holder: str
    vm: str | None = None

    @property
    def length(self) -> int:
        return self.end - self.start


class Timeline:
    """Change points of the CPU's holder, turned into spans."""

    def __init__(self):
        self._marks: list[tuple[int, str, str | None]] = []

    def mark(self, time: int, holder: str, vm: str | None = None) -> None:
        """From ``time`` on, ``holder`` (of ``vm``) has the CPU."""
        if self._marks and self._marks[-1][0] == time:
            self._marks.pop()  # the previous holder had it for no time at all
        if self._marks and self._marks[-1][1:] == (holder, vm):
            return
        self._marks.append((time, holder, vm))

    def spans(self, end: int) -> list[Span]:
        marks = self._marks + [(end, "", None)]
        return [Span(t, marks[i + 1][0], h, vm) for i, (t, h, vm) in enumerate(marks[:-1])
                if marks[i + 1][0] > t]


def share(spans: list[Span]) -> dict[tuple[str | None, str], int]:
    """Total time per (vm, holder)."""
    totals: dict[tuple[str | None, str], int] = {}
    for span in spans:
        totals[(span.vm, span.holder)] = totals.get((span.vm, span.holder), 0) + span.length
    return dict(sorted(totals.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])))
