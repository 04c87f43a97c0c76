"""Chapter 3 drawn: the device typology as a table a student can filter."""

from __future__ import annotations

import html

from IPython.display import HTML

from vmkit.io.typology import KINDS, DeviceKind, examples

_HEAD = ("périphérique", "type", "VM à la fois", "ce que l'hyperviseur partage",
         "technologie réelle", "sur la diapo")


def typology_table(kind: DeviceKind | str | None = None) -> HTML:
    """The examples of one kind (or all five kinds, in the slides' order) as an HTML table."""
    rows = []
    for ex in examples(kind):
        info = KINDS[ex.kind]
        kind_cell = ex.kind.value
        if ex.in_practice is not None:
            kind_cell += f" (en pratique : {ex.in_practice.value})"
        cells = (ex.label, kind_cell, info.vms_at_once, info.multiplexed_unit, ex.technology,
                 "✔" if ex.on_slide else "")
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in _HEAD)
    return HTML(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def explore_typology():
    """A drop-down of the five kinds (or all) above the table; ``typology_table`` is the twin."""
    import ipywidgets as widgets

    choice = widgets.Dropdown(options=[("tous", None)] + [(k.value, k) for k in DeviceKind],
                              value=None, description="type")
    table = widgets.HTML()

    def redraw(_change=None):
        table.value = typology_table(choice.value).data

    choice.observe(redraw, names="value")
    redraw()
    return widgets.VBox([choice, table])
