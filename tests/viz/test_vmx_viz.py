"""Tests for vmkit.viz.vmx: the VMX state diagram, its explorer and the history table."""

import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from vmkit.core import VmkitError  # noqa: E402
from vmkit.cpu.vmx import VMX, ExitReason, VMXState  # noqa: E402
from vmkit.viz import VMXExplorer, draw_vmx_states, explore_vmx, vmx_history_table  # noqa: E402
from vmkit.viz.vmx import BUTTONS, vmx_state_graph  # noqa: E402

TO_GUEST = ("VMXON", "VMCLEAR", "VMPTRLD", "VMWRITE hôte", "VMLAUNCH")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def texts(ax):
    return [t.get_text().replace("\n", " ") for t in ax.texts]


def buttons_of(box):
    return {b.description: b for b in box.children[0].children}


def test_draw_returns_axes_with_the_three_states():
    """The drawing names the three VMX states of the SDM."""
    ax = draw_vmx_states(VMX().snapshot())
    assert isinstance(ax, matplotlib.axes.Axes)
    for state in ("VMX off", "VMX root operation", "VMX non-root operation"):
        assert state in texts(ax)


def test_draw_uses_the_given_axes_and_labels_the_edges():
    """draw_vmx_states draws on the Axes it is given and labels every transition."""
    _, given = plt.subplots()
    ax = draw_vmx_states(VMX().snapshot(), ax=given)
    assert ax is given
    for label in ("VMXON", "VMXOFF", "VMLAUNCH VMRESUME", "VM exit"):
        assert label in texts(ax)


def test_state_graph_has_the_four_transitions():
    """The graph holds the states and the four transitions between them."""
    graph = vmx_state_graph()
    assert sorted(graph.nodes) == ["VMX non-root operation", "VMX off", "VMX root operation"]
    assert graph.number_of_edges() == 4


def test_draw_shows_current_vmcs_and_failed_transition():
    """A failed instruction shows in the drawing with its error number, beside the VMCS."""
    explorer = VMXExplorer()
    for name in TO_GUEST + ("VM exit", "VMLAUNCH"):
        explorer.press(name)
    shown = " ".join(texts(draw_vmx_states(explorer.vmx.snapshot())))
    assert "VMCS courant : 0x2000" in shown
    assert "launch state : launched" in shown
    assert "erreur VM-instruction 4" in shown


def test_draw_changes_nothing():
    """Drawing a snapshot leaves the model untouched."""
    vmx = VMX()
    before = len(vmx.history)
    draw_vmx_states(vmx.snapshot())
    assert len(vmx.history) == before and vmx.state is VMXState.OFF


def test_press_sequence_reaches_non_root():
    """VMXON, VMCLEAR, VMPTRLD, host VMWRITEs and VMLAUNCH put the model in non-root."""
    explorer = VMXExplorer()
    results = [explorer.press(name) for name in TO_GUEST]
    assert all(r.startswith("✔") for r in results)
    assert explorer.vmx.state is VMXState.NON_ROOT
    assert explorer.vmx.current_vmcs.address == 0x2000


def test_second_vmlaunch_reports_error_4_in_french():
    """VMLAUNCH again on the launched VMCS (after the VM exit) reports error 4 in French."""
    explorer = VMXExplorer()
    for name in TO_GUEST + ("VM exit",):
        explorer.press(name)
    text = explorer.press("VMLAUNCH")
    assert text.startswith("✘")
    assert "erreur VM-instruction 4" in text
    assert "VMLAUNCH avec un VMCS qui n'est pas « clear »" in text
    assert explorer.last_ok is False


def test_vmlaunch_in_non_root_explains_in_french():
    """Pressing VMLAUNCH while the guest runs explains the would-be VM exit, raising nothing."""
    explorer = VMXExplorer()
    for name in TO_GUEST:
        explorer.press(name)
    text = explorer.press("VMLAUNCH")
    assert "sortie VM (raison 20, VMLAUNCH)" in text
    assert explorer.vmx.state is VMXState.NON_ROOT


def test_vm_exit_uses_the_chosen_reason():
    """The VM exit button exits with the explorer's exit reason."""
    explorer = VMXExplorer(exit_reason=ExitReason.HLT)
    for name in TO_GUEST:
        explorer.press(name)
    assert "raison 12, HLT" in explorer.press("VM exit")
    assert explorer.vmx.state is VMXState.ROOT


def test_unknown_button_is_a_caller_mistake():
    """A button name that does not exist raises VmkitError, listing the buttons."""
    with pytest.raises(VmkitError, match="VMXON"):
        VMXExplorer().press("VMCALL")


def test_available_follows_the_model():
    """available() lists the buttons whose instruction would succeed now."""
    explorer = VMXExplorer()
    assert explorer.available() == ["VMXON"]
    for name in TO_GUEST:
        explorer.press(name)
    assert explorer.available() == ["VM exit"]


def test_explore_vmx_buttons_drive_the_model():
    """Clicking the widget's buttons runs the instructions on the model and reports them."""
    vmx = VMX()
    box = explore_vmx(vmx)
    assert isinstance(box, widgets.VBox)
    buttons = buttons_of(box)
    assert list(buttons) == list(BUTTONS)
    for name in TO_GUEST:
        buttons[name].click()
    assert vmx.state is VMXState.NON_ROOT
    assert "VMLAUNCH réussi" in box.children[1].value
    assert buttons["VM exit"].button_style == "success"


def test_explore_vmx_shows_errors_in_the_html_line():
    """A failing click puts the error number and its French text in the result line."""
    box = explore_vmx()
    buttons = buttons_of(box)
    buttons["VMXON"].click()
    buttons["VMXON"].click()
    assert "erreur VM-instruction 15" in box.children[1].value
    assert "VMXON exécuté en mode VMX root" in box.children[1].value


def test_history_table_lists_every_transition():
    """The history table has one row per transition, with the error number of failures."""
    explorer = VMXExplorer()
    for name in ("VMXON", "VMXON"):
        explorer.press(name)
    table = vmx_history_table(explorer.vmx).data
    assert table.count("<tr>") == 1 + len(explorer.vmx.history)
    assert "<td>15</td>" in table and "<code>VMXON</code>" in table
