"""Drawings and a widget for TLB performance: hit rates, TLB reach, shadow paging against EPT.

``simulate_tlb`` runs the MMU model (``vmkit.memory.mmu``) on native 4-level
walks and returns two numbers; ``sweep_tlb`` calls a simulate function over a
grid of sizes and returns plain records; ``draw_hit_rates`` draws those
records, ``draw_comparison`` draws a ``shadow.Comparison``, and ``explore_tlb``
wires three sliders to a simulate function. Nothing here models anything: the
helpers only call the model. Taught in course/02_memory/03_tlb_performance.ipynb.
"""

from __future__ import annotations

from collections.abc import Callable

from vmkit.memory.shadow import Comparison

_SHADOW, _NESTED = "#dd8452", "#4c72b0"


def _page_label(page_size_kib: int) -> str:
    return "4 Kio" if page_size_kib == 4 else f"{page_size_kib // 1024} Mio"


def draw_hit_rates(rows: list[dict], ax=None):
    """Hit rate (solid, left axis) and references per access (dashed, right axis) per series.

    One series per (TLB entries, page size); the x axis is the working set in
    4 KiB pages, on a log scale; a dotted line marks each 4 KiB series' TLB reach.
    Returns the hit-rate Axes (the other one is its ``twinx``).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    right = ax.twinx()
    series = sorted({(r["tlb_entries"], r.get("page_size_kib", 4)) for r in rows},
                    key=lambda s: (s[1], s[0]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (entries, page), color in zip(series, colors * len(series)):
        mine = sorted((r for r in rows
                       if (r["tlb_entries"], r.get("page_size_kib", 4)) == (entries, page)),
                      key=lambda r: r["pages"])
        x = [r["pages"] for r in mine]
        label = f"TLB {entries} entrées, pages de {_page_label(page)}"
        ax.plot(x, [r["hit_rate"] for r in mine], "o-", color=color, label=label)
        right.plot(x, [r["references_per_access"] for r in mine], "x--", color=color, alpha=0.7)
        if page == 4:
            ax.axvline(entries, color=color, linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ensemble de travail (pages de 4 Kio)")
    ax.set_ylabel("taux de succès du TLB (trait plein)")
    ax.set_ylim(0, 1.05)
    right.set_ylabel("lectures de tables par accès (tirets)")
    right.set_ylim(0, 4.2)
    ax.legend(loc="center left", fontsize=8)
    ax.set_title("Le TLB tient tant que l'ensemble de travail tient dans sa portée (pointillés)")
    return ax


def draw_comparison(comparison: Comparison, ax=None):
    """Grouped bars in cycles: exits, walk references and total, shadow paging next to EPT.

    Each bar is labelled with the count behind it (exits, references), so the
    estimate ``exits * exit_cycles + references * reference_cycles`` can be read off.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 3.8))
    c = comparison
    groups = ["sorties de VM", "lectures de marche", "total"]
    width = 0.38
    for shift, name, result, color in ((-width / 2, "tables fantômes", c.shadow, _SHADOW),
                                       (width / 2, "EPT", c.nested, _NESTED)):
        exits = result.exits * c.exit_cycles
        walks = result.walk_references * c.reference_cycles
        heights = [exits / 1e6, walks / 1e6, result.cycles / 1e6]
        bars = ax.bar([i + shift for i in range(3)], heights, width, color=color, label=name)
        labels = [f"{result.exits}", f"{result.walk_references}", f"{result.cycles / 1e6:.2f}"]
        ax.bar_label(bars, labels=labels, fontsize=8, padding=2)
    ax.set_xticks(range(3), groups)
    ax.set_ylabel("millions de cycles (estimés)")
    ax.margins(y=0.15)
    ax.legend()
    winner = "les tables fantômes gagnent" if c.winner == "shadow" else "l'EPT gagne"
    ax.set_title(f"{c.workload} : {winner} (étiquettes : sorties, lectures, total)")
    return ax


def _draw_reach(pages: int, page_size_kib: int, tlb_entries: int, hit_rate: float,
                references: float, ax=None):
    """The working set next to the TLB reach (entries x page size), in KiB, on a log scale."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 2.2))
    sizes = [pages * 4, tlb_entries * page_size_kib]
    bars = ax.barh(["ensemble de travail", "portée du TLB"], sizes, color=["#8172b3", "#55a868"])
    ax.bar_label(bars, labels=[f"{s} Kio" for s in sizes], fontsize=8, padding=2)
    ax.set_xscale("log", base=2)
    ax.set_xlim(1, max(sizes) * 8)
    ax.set_xlabel("Kio")
    ax.set_title(f"pages de {_page_label(page_size_kib)}, {tlb_entries} entrées : succès TLB "
                 f"{hit_rate:.0%}, {references:.2f} lectures de tables par accès")
    return ax


def explore_tlb(simulate: Callable[[int, int, int], tuple[float, float]], *, pages: int = 256,
                page_size_kib: int = 4, tlb_entries: int = 64):
    """Three sliders (working set, page size, TLB entries) redrawing what ``simulate`` returns.

    ``simulate(pages, page_size_kib, tlb_entries) -> (hit_rate, references_per_access)``
    is the plain-call twin a notebook cell runs without a browser.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    style = {"description_width": "initial"}
    p = widgets.SelectionSlider(options=[2 ** k for k in range(3, 12)], value=pages,
                                description="ensemble de travail (pages de 4 Kio)",
                                continuous_update=False, style=style)
    s = widgets.SelectionSlider(options=[("4 Kio", 4), ("2 Mio", 2048)], value=page_size_kib,
                                description="taille de page", continuous_update=False, style=style)
    e = widgets.SelectionSlider(options=[2 ** k for k in range(4, 10)], value=tlb_entries,
                                description="entrées du TLB", continuous_update=False, style=style)
    out = widgets.Output()

    def redraw(_change=None):
        out.clear_output(wait=True)
        with out:
            hit_rate, references = simulate(p.value, s.value, e.value)
            _draw_reach(p.value, s.value, e.value, hit_rate, references)
            plt.show()

    for slider in (p, s, e):
        slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([p, s, e, out])


__all__ = ["draw_hit_rates", "draw_comparison", "explore_tlb"]
