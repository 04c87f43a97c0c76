"""Tests for vmkit.viz.cpu: the timeline of CPU holders, the shares bars and the timers explorer."""

import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from vmkit.cpu.hypervisor import Hypervisor, HypervisorConfig  # noqa: E402
from vmkit.cpu.kernel import GuestKernel  # noqa: E402
from vmkit.cpu.programs import hello, worker  # noqa: E402
from vmkit.cpu.trace import Span, share  # noqa: E402
from vmkit.viz.cpu import draw_shares, draw_timeline, explore_timers  # noqa: E402

SPANS = [
    Span(0, 10, "hypervisor"),
    Span(10, 30, "pid 1", "vm1"),
    Span(30, 40, "kernel", "vm1"),
    Span(40, 50, "hypervisor"),
    Span(50, 80, "pid 2", "vm2"),
    Span(80, 90, "idle", "vm2"),
]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def labels(ax):
    return [t.get_text() for t in ax.get_yticklabels()]


def test_draw_timeline_returns_axes_with_one_label_per_row():
    """Each (vm, holder) gets one y tick: hypervisor first, then per VM, kernel before programs."""
    ax = draw_timeline(SPANS)

    assert isinstance(ax, plt.Axes)
    assert labels(ax) == ["hypervisor", "vm1 · kernel", "vm1 · pid 1", "vm2 · idle", "vm2 · pid 2"]


def test_draw_timeline_draws_one_bar_collection_per_row():
    """One broken_barh collection per row."""
    ax = draw_timeline(SPANS)

    assert len(ax.collections) == len(labels(ax))


def test_draw_timeline_spans_whole_trace_by_default():
    """The x axis runs from 0 to the end of the last span."""
    ax = draw_timeline(SPANS)

    assert ax.get_xlim() == (0, 90)


def test_draw_timeline_window_keeps_only_rows_shown():
    """With start/end, rows outside the window disappear and the x axis is the window."""
    ax = draw_timeline(SPANS, start=45, end=75)

    assert labels(ax) == ["hypervisor", "vm2 · pid 2"]
    assert ax.get_xlim() == (45, 75)


def test_draw_timeline_of_a_hypervisor_run_lists_every_holder():
    """A real run's timeline has a row for every (vm · holder) of its spans."""
    hv = Hypervisor(HypervisorConfig(preemption_timer=5_000))
    hv.create_vm("vm1", GuestKernel((hello(), worker("W", "W", work=500, rounds=2)), timer_period=3_000))
    spans = hv.run(60_000).spans()

    ax = draw_timeline(spans, title="run")

    assert set(labels(ax)) == {f"{s.vm} · {s.holder}" if s.vm else s.holder for s in spans}
    assert ax.get_title() == "run"


def test_draw_timeline_uses_given_axes():
    """draw_timeline draws into the Axes it is given."""
    _, ax = plt.subplots()

    assert draw_timeline(SPANS, ax) is ax


def test_draw_shares_one_bar_per_entry():
    """draw_shares draws one horizontal bar per (vm, holder), of its total length."""
    shares = share(SPANS)

    ax = draw_shares(shares)

    assert len(ax.patches) == len(shares)
    assert sorted(p.get_width() for p in ax.patches) == sorted(shares.values())


def test_draw_shares_labels_entries():
    """The bars are labelled 'vm · holder', or the bare holder outside any VM."""
    ax = draw_shares({(None, "hypervisor"): 20, ("vm1", "pid 1"): 30}, title="parts")

    assert labels(ax) == ["hypervisor", "vm1 · pid 1"]
    assert ax.get_title() == "parts"


class FakeSimulate:
    def __init__(self):
        self.calls = []

    def __call__(self, period, quantum):
        self.calls.append((period, quantum))
        return [Span(0, period, "hypervisor"), Span(period, period + quantum, "pid 1", "vm1")]


def sliders(box):
    period, quantum = box.children[0].children
    return period, quantum


def test_explore_timers_returns_vbox():
    """explore_timers returns a VBox holding the two sliders."""
    box = explore_timers(FakeSimulate())

    assert isinstance(box, widgets.VBox)
    assert all(isinstance(s, widgets.IntSlider) for s in sliders(box))


def test_explore_timers_simulates_once_with_defaults():
    """At creation simulate is called once, with the sliders' default values."""
    simulate = FakeSimulate()

    explore_timers(simulate, period=(1_000, 9_000, 4_000), quantum=(5_000, 50_000, 20_000))

    assert simulate.calls == [(4_000, 20_000)]


def test_explore_timers_resimulates_when_period_changes():
    """Moving the period slider calls simulate again with the new period."""
    simulate = FakeSimulate()
    box = explore_timers(simulate)
    period, _ = sliders(box)

    period.value = 30_000

    assert simulate.calls == [(20_000, 50_000), (30_000, 50_000)]


def test_explore_timers_resimulates_when_quantum_changes():
    """Moving the preemption-timer slider calls simulate again with the new quantum."""
    simulate = FakeSimulate()
    box = explore_timers(simulate)
    _, quantum = sliders(box)

    quantum.value = 100_000

    assert simulate.calls[-1] == (20_000, 100_000)
    assert len(simulate.calls) == 2
