"""Drawing and exploring what vmkit's models return.

``vmkit.viz`` is the only layer that imports matplotlib, networkx, ipywidgets
and IPython; ``import vmkit`` and the model packages stay free of them. Two
shapes of function live here:

- ``draw_<thing>(record, ax=None)`` draws a record a model returned (a
  snapshot, a trace) on a matplotlib Axes, changes nothing, returns the Axes;
- ``explore_<thing>(...)`` wires ipywidgets to model methods and redraws. Every
  button calls a plain method of a small controller class, so a notebook cell
  or a test runs the same code without a browser (the plain-call twin).
"""

from vmkit.viz.cpu import draw_shares, draw_timeline, explore_timers
from vmkit.viz.io import explore_typology, typology_table
from vmkit.viz.memory import draw_grid, draw_walk, explore_grid, explore_walk
from vmkit.viz.memory_perf import draw_comparison, draw_hit_rates, explore_tlb
from vmkit.viz.vmx import VMXExplorer, draw_vmx_states, explore_vmx, vmx_history_table

__all__ = [
    "draw_comparison",
    "draw_hit_rates",
    "explore_tlb",
    "draw_grid",
    "draw_walk",
    "explore_grid",
    "explore_walk",
    "draw_shares",
    "draw_timeline",
    "explore_timers",
    "VMXExplorer",
    "draw_vmx_states",
    "explore_vmx",
    "vmx_history_table",
    "explore_typology",
    "typology_table",
]
