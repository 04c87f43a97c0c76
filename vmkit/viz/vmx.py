"""The VMX state machine of vmkit.cpu.vmx, drawn and explored.

``draw_vmx_states`` draws a ``VMXSnapshot``: the three VMX states of the Intel
SDM (Vol. 3C, ch. 23: VMX off, VMX root operation, VMX non-root operation),
the instructions that move between them, the current VMCS and the last
transition. ``explore_vmx`` puts one button per instruction above that drawing;
each button calls ``VMXExplorer.press``, which a cell or a test can call alone.
``vmx_history_table`` lists ``VMX.history``.

Taught in course/01_cpu/02_vtx_lifecycle.ipynb.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import matplotlib.pyplot as plt
import networkx as nx
from IPython.display import HTML, display
from matplotlib.axes import Axes

from vmkit.core import VmkitError
from vmkit.cpu.vmx import (
    HOST_STATE_64,
    VM_INSTRUCTION_ERROR_TEXT,
    VMX,
    VMX_INSTRUCTION_EXITS,
    ExitReason,
    VMXError,
    VMXSnapshot,
    VMXState,
)

#: Host-physical addresses the explorer uses: one VMXON region, one VMCS.
VMXON_REGION = 0x1000
VMCS_REGION = 0x2000

#: The explorer's buttons, in the order a VMM uses the instructions.
BUTTONS = ("VMXON", "VMCLEAR", "VMPTRLD", "VMWRITE hôte", "VMLAUNCH", "VMRESUME", "VM exit",
           "VMXOFF")

# Which name of VMX.available_instructions() each button stands for.
_INSTRUCTION_OF = {"VMXON": "vmxon", "VMCLEAR": "vmclear", "VMPTRLD": "vmptrld",
                   "VMWRITE hôte": "vmwrite", "VMLAUNCH": "vmlaunch", "VMRESUME": "vmresume",
                   "VM exit": "vm_exit", "VMXOFF": "vmxoff"}

# Fixed positions, left to right as a VMM walks them, so every drawing looks the same.
_POSITIONS = {VMXState.OFF: (0.0, 0.0), VMXState.ROOT: (1.6, 0.0), VMXState.NON_ROOT: (3.2, 0.0)}
_EDGES = {
    (VMXState.OFF, VMXState.ROOT): "VMXON",
    (VMXState.ROOT, VMXState.OFF): "VMXOFF",
    (VMXState.ROOT, VMXState.NON_ROOT): "VMLAUNCH\nVMRESUME",
    (VMXState.NON_ROOT, VMXState.ROOT): "VM exit",
}
_ROLES = {VMXState.OFF: "hors VMX", VMXState.ROOT: "l'hyperviseur (VMM)",
          VMXState.NON_ROOT: "l'invité"}
_SHORT = {VMXState.OFF: "off", VMXState.ROOT: "root", VMXState.NON_ROOT: "non-root"}

_FIGSIZE = (9.0, 3.8)
_NODE_SIZE = 5800
_CURVE = "arc3,rad=0.35"  # the two directions of a pair of states get separate arcs
_CURRENT, _IDLE = "#8ec5ff", "#eeeeee"
_OK, _FAILED, _GREY = "#1f6fb4", "#c62828", "#777777"


def vmx_state_graph() -> nx.DiGraph:
    """The VMX states as nodes (named by ``VMXState.value``), transitions as labelled edges."""
    graph = nx.DiGraph()
    graph.add_nodes_from(state.value for state in VMXState)
    for (source, target), label in _EDGES.items():
        graph.add_edge(source.value, target.value, label=label)
    return graph


def draw_vmx_states(snapshot: VMXSnapshot, ax: Axes | None = None) -> Axes:
    """Draw the VMX state machine with the snapshot's state, VMCS and last transition."""
    if ax is None:
        _, ax = plt.subplots(figsize=_FIGSIZE)
    graph = vmx_state_graph()
    pos = {state.value: _POSITIONS[state] for state in VMXState}
    last, lit = snapshot.last, None  # lit: the edge the last instruction took, if it moved
    if last is not None and last.ok and last.before is not last.after:
        lit = (last.before.value, last.after.value)

    nodes = [state.value for state in VMXState]
    current = [state is snapshot.state for state in VMXState]
    nx.draw_networkx_nodes(graph, pos, nodelist=nodes, node_size=_NODE_SIZE, ax=ax,
                           node_color=[_CURRENT if c else _IDLE for c in current],
                           edgecolors=[_OK if c else _GREY for c in current],
                           linewidths=[3.0 if c else 1.0 for c in current])
    nx.draw_networkx_labels(graph, pos, ax=ax, font_size=9,
                            labels={n: n.replace(" operation", "\noperation") for n in nodes})
    edges = list(graph.edges)
    nx.draw_networkx_edges(graph, pos, edgelist=edges, node_size=_NODE_SIZE, ax=ax,
                           connectionstyle=_CURVE, arrowsize=18,
                           edge_color=[_OK if e == lit else _GREY for e in edges],
                           width=[2.8 if e == lit else 1.2 for e in edges])
    nx.draw_networkx_edge_labels(graph, pos, ax=ax, node_size=_NODE_SIZE,
                                 connectionstyle=_CURVE, rotate=False, font_size=9,
                                 edge_labels={e: graph.edges[e]["label"] for e in edges},
                                 bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none"})
    _draw_captions(ax, snapshot)
    ax.set_title(f"État VMX : {snapshot.state.value}")
    ax.set_xlim(-0.6, 3.8)
    ax.set_ylim(-1.0, 0.65)
    ax.set_axis_off()
    return ax


def _draw_captions(ax: Axes, snapshot: VMXSnapshot) -> None:
    """Who runs in each state; the current VMCS (left box); the last transition (right box)."""
    for state, (x, y) in _POSITIONS.items():
        ax.text(x, y - 0.55, _ROLES[state], ha="center", va="center", fontsize=9,
                style="italic", color=_GREY)
    last = snapshot.last
    ax.text(0.01, 0.02, _vmcs_text(snapshot), transform=ax.transAxes, fontsize=9,
            va="bottom", ha="left", family="monospace",
            bbox={"boxstyle": "round", "fc": "#f7f7f7", "ec": _GREY})
    failed = last is not None and not last.ok
    ax.text(0.99, 0.02, _last_text(snapshot), transform=ax.transAxes, fontsize=9,
            va="bottom", ha="right", color=_FAILED if failed else "black",
            bbox={"boxstyle": "round", "fc": "#fdecea" if failed else "#f7f7f7",
                  "ec": _FAILED if failed else _GREY})


def _vmcs_text(snapshot: VMXSnapshot) -> str:
    if snapshot.current_vmcs is None:
        return "VMCS courant : aucun"
    return f"VMCS courant : {snapshot.current_vmcs:#x}\nlaunch state : {snapshot.launch_state}"


def _name(instruction: str) -> str:
    return "VM exit" if instruction == "vm exit" else instruction.upper()


def _last_text(snapshot: VMXSnapshot) -> str:
    last = snapshot.last
    if last is None:
        return "Aucune instruction exécutée"
    if last.ok:
        return (f"Dernière transition : {_name(last.instruction)}\n"
                f"{_SHORT[last.before]} → {_SHORT[last.after]}")
    if last.error:
        return (f"{_name(last.instruction)} a échoué : erreur VM-instruction {last.error}\n"
                f"{VM_INSTRUCTION_ERROR_TEXT[last.error]}")
    return f"{_name(last.instruction)} a échoué : {last.note}"


class VMXExplorer:
    """What the explorer's buttons do, without widgets: ``press(name)`` runs one.

    The explorer sets CR4.VMXE and writes the VMCS revision identifier at
    ``VMCS_REGION`` first, as a VMM does before its first VMXON and VMPTRLD.
    """

    def __init__(self, vmx: VMX | None = None, exit_reason: ExitReason | int = ExitReason.CPUID):
        self.vmx = VMX() if vmx is None else vmx
        try:
            self.exit_reason = ExitReason(exit_reason)
        except ValueError:
            raise VmkitError(f"{exit_reason!r} is not an Intel basic exit reason (see ExitReason)") from None
        if vmx is not None and not isinstance(vmx, VMX):
            raise VmkitError(f"VMXExplorer(vmx) takes a VMX model, not {vmx!r}")
        self.last_ok: bool | None = None  # None until a button is pressed
        if self.vmx.state is VMXState.OFF and not self.vmx.cr4_vmxe:
            self.vmx.set_cr4_vmxe(True)
        if VMCS_REGION not in self.vmx.vmcs_regions:
            self.vmx.allocate_vmcs(VMCS_REGION)

    def press(self, name: str) -> str:
        """Run the instruction of button ``name`` and say, in French, what happened."""
        if name not in BUTTONS:
            raise VmkitError(f"no button {name!r}: the buttons are {', '.join(BUTTONS)}")
        try:
            self._run(name)
        except VMXError as err:
            self.last_ok = False
            return "✘ " + _failure_text(name, err, self.vmx.state)
        except VmkitError:
            # Not a VMX failure: the button makes no sense in this state (see _refusal_text).
            self.last_ok = False
            return "✘ " + _refusal_text(name, self.vmx.state)
        self.last_ok = True
        return "✔ " + self._success_text(name)

    def available(self) -> list[str]:
        """The buttons whose instruction would succeed now, in ``BUTTONS`` order."""
        ok = set(self.vmx.available_instructions())
        return [name for name in BUTTONS if _INSTRUCTION_OF[name] in ok]

    def _run(self, name: str) -> None:
        vmx = self.vmx
        if name == "VMXON":
            vmx.vmxon(VMXON_REGION)
        elif name == "VMCLEAR":
            vmx.vmclear(VMCS_REGION)
        elif name == "VMPTRLD":
            vmx.vmptrld(VMCS_REGION)
        elif name == "VMWRITE hôte":
            for encoding, value in HOST_STATE_64.items():
                vmx.vmwrite(encoding, value)
        elif name == "VMLAUNCH":
            vmx.vmlaunch()
        elif name == "VMRESUME":
            vmx.vmresume()
        elif name == "VM exit":
            vmx.vm_exit(self.exit_reason)
        else:
            vmx.vmxoff()

    def _success_text(self, name: str) -> str:
        reason = self.exit_reason
        return {
            "VMXON": f"VMXON réussi : le processeur entre en VMX root operation "
                     f"(région VMXON {VMXON_REGION:#x}).",
            "VMCLEAR": f"VMCLEAR réussi : le VMCS {VMCS_REGION:#x} est « clear » "
                       "et n'est plus courant.",
            "VMPTRLD": f"VMPTRLD réussi : le VMCS {VMCS_REGION:#x} devient le VMCS courant.",
            "VMWRITE hôte": f"{len(HOST_STATE_64)} VMWRITE réussis : l'état hôte "
                            "(HOST_CR0, HOST_RSP, HOST_RIP…) est dans le VMCS.",
            "VMLAUNCH": "VMLAUNCH réussi : l'invité tourne en VMX non-root operation, "
                        "le VMCS est « launched ».",
            "VMRESUME": "VMRESUME réussi : l'invité reprend en VMX non-root operation.",
            "VM exit": f"Sortie VM (raison {int(reason)}, {reason.name}) : retour en "
                       "VMX root operation, chez l'hyperviseur.",
            "VMXOFF": "VMXOFF réussi : le processeur quitte le mode VMX.",
        }[name]


def _failure_text(name: str, err: VMXError, state: VMXState) -> str:
    if err.number:
        stored = ("rangé dans VM_INSTRUCTION_ERROR" if err.kind == "VMfailValid"
                  else "non rangé, faute de VMCS courant")
        return (f"{name} échoue : {err.kind}, erreur VM-instruction {err.number} "
                f"({VM_INSTRUCTION_ERROR_TEXT[err.number]} ; {stored}).")
    if err.kind == "#UD" and state is VMXState.OFF:
        return f"{name} échoue : #UD, le processeur n'est pas en mode VMX (VMXON d'abord)."
    if err.kind == "VMfailInvalid":
        return f"{name} échoue : VMfailInvalid, il n'y a pas de VMCS courant (VMPTRLD d'abord)."
    return f"{name} échoue : {err.kind}."


def _refusal_text(name: str, state: VMXState) -> str:
    if name == "VM exit":
        return (f"Pas de sortie VM possible : aucun invité ne tourne ({state.value}). "
                "VMLAUNCH ou VMRESUME d'abord.")
    exit_reason = VMX_INSTRUCTION_EXITS[_INSTRUCTION_OF[name]]
    return (f"L'invité tourne (VMX non-root operation) : c'est lui qui exécuterait {name}, "
            f"ce qui provoquerait une sortie VM (raison {int(exit_reason)}, "
            f"{exit_reason.name}). Cliquez d'abord sur « VM exit ».")


def explore_vmx(vmx: VMX | None = None) -> widgets.VBox:
    """Buttons for the VMX instructions, the result in French, and the redrawn state machine."""
    explorer = VMXExplorer(vmx)
    buttons = [widgets.Button(description=name, layout=widgets.Layout(width="auto"))
               for name in BUTTONS]
    result = widgets.HTML(value="<i>Cliquez sur une instruction ; en vert, celles qui "
                                "réussiraient maintenant.</i>")
    figure = widgets.Output(layout=widgets.Layout(min_height="360px"))

    def refresh() -> None:
        available = set(explorer.available())
        for button in buttons:
            button.button_style = "success" if button.description in available else ""
        figure.clear_output(wait=True)
        with figure:
            _show(explorer.vmx.snapshot())

    def on_click(button: widgets.Button) -> None:
        text = explorer.press(button.description)
        color = _OK if explorer.last_ok else _FAILED
        result.value = f'<span style="color:{color}">{html.escape(text)}</span>'
        refresh()

    for button in buttons:
        button.on_click(on_click)
    refresh()
    row = widgets.HBox(buttons, layout=widgets.Layout(flex_flow="row wrap"))
    return widgets.VBox([row, result, figure])


def _show(snapshot: VMXSnapshot) -> None:
    # A new figure per click, closed at once: display() alone would leak one per click.
    with plt.ioff():
        fig, ax = plt.subplots(figsize=_FIGSIZE)
    draw_vmx_states(snapshot, ax)
    display(fig)
    plt.close(fig)


def vmx_history_table(vmx: VMX) -> HTML:
    """``vmx.history`` as an HTML table: instruction, detail, state before and after, ok, error."""
    head = "".join(f"<th>{h}</th>" for h in
                   ("#", "instruction", "détail", "avant", "après", "ok", "erreur"))
    rows = []
    for i, t in enumerate(vmx.history, start=1):
        cells = (str(i), f"<code>{html.escape(_name(t.instruction))}</code>", html.escape(t.note),
                 t.before.value, t.after.value, "✔" if t.ok else "✘",
                 "" if t.error is None else str(t.error))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return HTML(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
