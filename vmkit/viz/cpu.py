"""Drawings and widgets for chapter 1: who holds the CPU over time.

``draw_timeline`` draws the spans a Machine or a Hypervisor recorded (the
slides' "un seul à la fois"); ``explore_timers`` wires sliders for the guest's
timer period and the VMX-preemption timer to a fresh hypervisor run.
Taught in course/01_cpu/03_timers_multiplexing.ipynb.
"""

from __future__ import annotations

from collections.abc import Callable

from vmkit.cpu.trace import Span

_COLOURS = {"hypervisor": "#d62728", "kernel": "#1f77b4", "idle": "#dddddd"}
_USER = ("#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _rows(spans: list[Span]) -> list[tuple[str | None, str]]:
    rows = sorted({(s.vm, s.holder) for s in spans},
                  key=lambda r: (r[1] != "hypervisor", r[0] or "", r[1] != "kernel", r[1]))
    return rows


def draw_timeline(spans: list[Span], ax=None, *, start: int = 0, end: int | None = None, title: str = "",
                  labels: dict[str, str] | None = None):
    """Draw one row per (VM, holder): who had the CPU, when. Returns the Axes.

    ``labels`` renames holders on the axis, e.g. ``{"pid 1": "pid 1 (A)"}``.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(10, 3.2))
    end = end if end is not None else max((s.end for s in spans), default=1)
    shown = [s for s in spans if s.end > start and s.start < end]
    rows = _rows(shown)
    users = sorted({s.holder for s in shown if s.holder.startswith("pid")})
    for y, (vm, holder) in enumerate(rows):
        colour = _COLOURS.get(holder) or (_USER[users.index(holder) % len(_USER)] if holder in users else "#999999")
        bars = [(max(s.start, start), min(s.end, end) - max(s.start, start))
                for s in shown if (s.vm, s.holder) == (vm, holder)]
        ax.broken_barh(bars, (y - 0.4, 0.8), facecolors=colour)
    ax.set_yticks(range(len(rows)))
    names = labels or {}
    ax.set_yticklabels([f"{vm} · {names.get(h, h)}" if vm else names.get(h, h) for vm, h in rows])
    ax.invert_yaxis()
    ax.set_xlim(start, end)
    ax.set_xlabel("temps (instructions)")
    if title:
        ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return ax


def draw_shares(shares: dict[tuple[str | None, str], int], ax=None, *, title: str = ""):
    """Horizontal bars: total CPU time of each (VM, holder)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 2.8))
    labels = [f"{vm} · {h}" if vm else h for vm, h in shares]
    ax.barh(labels, list(shares.values()), color="#4c72b0")
    ax.invert_yaxis()
    ax.set_xlabel("instructions")
    if title:
        ax.set_title(title)
    return ax


def explore_timers(simulate: Callable[[int, int], list[Span]], *, period=(2_000, 60_000, 20_000),
                   quantum=(5_000, 200_000, 50_000), end: int | None = None):
    """Two sliders (guest timer period, preemption timer) redrawing the timeline of ``simulate``.

    ``simulate(period, quantum)`` returns spans; it is the plain-call twin a
    notebook cell can run without a browser.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    p = widgets.IntSlider(value=period[2], min=period[0], max=period[1], step=1_000,
                          description="timer invité", continuous_update=False,
                          style={"description_width": "initial"})
    q = widgets.IntSlider(value=quantum[2], min=quantum[0], max=quantum[1], step=5_000,
                          description="preemption timer", continuous_update=False,
                          style={"description_width": "initial"})
    out = widgets.Output()

    def redraw(_change=None):
        out.clear_output(wait=True)
        with out:
            spans = simulate(p.value, q.value)
            draw_timeline(spans, end=end, title=f"période {p.value}, quantum {q.value}")
            plt.show()

    p.observe(redraw, names="value")
    q.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([p, q]), out])
