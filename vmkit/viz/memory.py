"""Drawings and widgets for chapter 2: a page walk level by level, the 2D grid, cache figures.

``draw_walk`` draws what ``paging.walk`` returned (one box per table read,
with its index and entry); ``draw_grid`` draws a ``Walk2D`` as the grid of
EPT references (columns) for each guest level and the data (rows);
``explore_walk`` wires a text box for the address to a fresh walk.
Taught in course/02_memory/.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable

from vmkit.memory.nested import Walk2D
from vmkit.memory.paging import PTE, Walk

_OK, _FAULT, _EPT, _GUEST, _DATA = "#cfe8cf", "#f4c7c3", "#dbe7f6", "#fde9c6", "#e7e0f3"


def _flags(entry: int) -> str:
    names = [f.name for f in (PTE.P, PTE.RW, PTE.US, PTE.A, PTE.D, PTE.PS, PTE.NX) if entry & f]
    return " ".join(names) or "0"


def _french(access) -> str:
    kind = "écriture" if access.write else "exécution" if access.fetch else "lecture"
    return f"{kind} {'utilisateur' if access.user else 'noyau'}"


def draw_walk(walk: Walk, ax=None):
    """One box per level: table address, index, entry and its flags; the outcome last."""
    import matplotlib.pyplot as plt

    refs = list(walk.references)
    if ax is None:
        _, ax = plt.subplots(figsize=(2.2 * (len(refs) + 1), 1.8))
    for i, ref in enumerate(refs):
        text = (f"{ref.name}\ntable {ref.table:#x}\nindex {ref.index}\n"
                f"entrée {ref.entry & 0x000F_FFFF_FFFF_F000:#x}\n{_flags(ref.entry)}")
        ax.text(i, 0, text, ha="center", va="center", family="monospace", fontsize=8,
                bbox=dict(boxstyle="round", fc=_GUEST, ec="#888"))
        ax.annotate("", xy=(i + 0.55, 0), xytext=(i + 0.45, 0), arrowprops=dict(arrowstyle="->"))
    outcome = (f"adresse physique\n{walk.result.pa:#x}\npage de {walk.result.page_size // 1024} Kio"
               if walk.ok else textwrap.fill(walk.result.explain(), 22))
    ax.text(len(refs), 0, outcome, ha="center", va="center", fontsize=8, wrap=True,
            bbox=dict(boxstyle="round", fc=_OK if walk.ok else _FAULT, ec="#888"))
    ax.set_xlim(-0.6, len(refs) + 0.8)
    ax.set_ylim(-0.6, 0.6)
    ax.axis("off")
    ax.set_title(f"{walk.gva:#x} : {walk.memory_references} références mémoire ({_french(walk.access)})")
    return ax


def draw_grid(walk: Walk2D, ax=None, *, upto: int | None = None):
    """The 2D walk as a grid: a row per guest level and one for the data, EPT references across.

    ``upto`` shows only the first ``upto`` references, numbered in the order the CPU makes them.
    """
    import matplotlib.pyplot as plt

    rows = walk.grid()
    width = max(len(r) for r in rows)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.5 * width + 1, 0.75 * len(rows) + 1))
    n = 0
    for y, row in enumerate(rows):
        for x, name in enumerate(row):
            is_ept = x < len(row) - 1
            is_data = name == "donnée"
            n += 0 if is_data else 1
            shown = upto is None or (n <= upto if not is_data else n <= upto)
            colour = _EPT if is_ept else (_DATA if is_data else _GUEST)
            label = f"{n}\n{name}" if not is_data else name
            ax.text(x, -y, label if shown else "", ha="center", va="center", fontsize=8,
                    bbox=dict(boxstyle="round", fc=colour if shown else "white", ec="#999"))
    ax.set_xlim(-0.7, width - 0.3)
    ax.set_ylim(-len(rows) + 0.4, 0.6)
    ax.axis("off")
    ax.set_title(f"marche à deux dimensions : {walk.memory_references} références")
    return ax


def explore_walk(translate: Callable[[int], Walk], start: int = 0x7FFF_FFFF_F123):
    """A text box for the address and the drawing of its walk; ``translate`` is the plain-call twin."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    box = widgets.Text(value=hex(start), description="adresse")
    out = widgets.Output()

    def redraw(_change=None):
        out.clear_output(wait=True)
        with out:
            try:
                gva = int(box.value, 0)
            except ValueError:
                print(f"« {box.value} » n'est pas un nombre (écrivez par exemple 0x401000)")
                return
            draw_walk(translate(gva))
            plt.show()

    box.observe(redraw, names="value")
    redraw()
    return widgets.VBox([box, out])


def explore_grid(walk: Walk2D):
    """A slider stepping through the references of a 2D walk, in the order the CPU makes them."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    step = widgets.IntSlider(value=0, min=0, max=walk.memory_references, description="référence",
                             continuous_update=False)
    play = widgets.Play(value=0, min=0, max=walk.memory_references, interval=400)
    widgets.jslink((play, "value"), (step, "value"))
    out = widgets.Output()

    def redraw(_change=None):
        out.clear_output(wait=True)
        with out:
            draw_grid(walk, upto=step.value)
            plt.show()

    step.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([play, step]), out])
