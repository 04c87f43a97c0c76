"""vmkit.viz.memory_perf: TLB hit-rate curves, shadow-vs-EPT bars and the TLB explorer."""

import matplotlib

matplotlib.use("Agg")

from vmkit.memory.mmu import simulate_tlb, sweep_tlb  # noqa: E402
from vmkit.memory.shadow import compare, mmu_heavy, tlb_heavy  # noqa: E402
from vmkit.viz.memory_perf import draw_comparison, draw_hit_rates, explore_tlb  # noqa: E402


def test_simulate_tlb_hits_almost_always_inside_the_reach():
    """A working set smaller than the TLB only misses on each page's first touch."""
    hit_rate, references = simulate_tlb(16, 4, 64, accesses=1000)

    assert hit_rate == (1000 - 16) / 1000 and references == 16 * 4 / 1000


def test_simulate_tlb_large_pages_extend_the_reach():
    """The same 1 MiB working set misses often in 4 KiB pages, almost never in 2 MiB ones."""
    small, _ = simulate_tlb(256, 4, 64)
    large, _ = simulate_tlb(256, 2048, 64)

    assert small < 0.3 < 0.99 < large


def test_sweep_tlb_makes_one_record_per_combination():
    """Two page sizes x two TLB sizes x three working sets: twelve records, in that order."""
    rows = sweep_tlb(lambda p, s, e: (p / 100, s / 100), [8, 16, 32], [16, 64], [4, 2048])

    assert len(rows) == 12
    assert rows[0] == {"pages": 8, "page_size_kib": 4, "tlb_entries": 16, "hit_rate": 0.08,
                       "references_per_access": 0.04}


def test_draw_hit_rates_draws_one_curve_per_series_on_each_axis():
    """Two series give two hit-rate lines on the Axes and two dashed lines on its twin."""
    rows = sweep_tlb(lambda p, s, e: (0.5, 2.0), [8, 16], [16, 64])

    ax = draw_hit_rates(rows)

    twin = [other for other in ax.figure.axes if other is not ax][0]
    assert len([line for line in ax.lines if line.get_label().startswith("TLB")]) == 2
    assert len(twin.lines) == 2


def test_draw_comparison_labels_the_bars_with_the_counts():
    """Six bars (three groups, two pagers), labelled with the exits and references counted."""
    comparison = compare(mmu_heavy(0, processes=2, pages=8, steps=100))

    ax = draw_comparison(comparison)

    labels = [t.get_text() for t in ax.texts]
    assert len(ax.patches) == 6
    assert str(comparison.shadow.exits) in labels
    assert str(comparison.nested.walk_references) in labels


def test_draw_comparison_names_the_winner_in_the_title():
    """On a TLB-heavy workload the title says shadow paging wins."""
    comparison = compare(tlb_heavy(0, pages=256, steps=200))

    ax = draw_comparison(comparison)

    assert "les tables fantômes gagnent" in ax.get_title()


def test_explore_tlb_calls_simulate_again_when_a_slider_moves():
    """The explorer simulates once at start, then once per slider change, with the new values."""
    calls = []
    box = explore_tlb(lambda p, s, e: calls.append((p, s, e)) or (0.5, 2.0))

    box.children[1].value = 2048
    box.children[2].value = 16

    assert calls == [(256, 4, 64), (256, 2048, 64), (256, 2048, 16)]
