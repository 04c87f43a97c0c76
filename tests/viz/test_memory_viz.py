"""vmkit.viz.memory: the walk and the 2D grid drawn from the walkers' records."""

import matplotlib

matplotlib.use("Agg")

from vmkit.memory.nested import nested_setup, walk_2d  # noqa: E402
from vmkit.memory.paging import USER_WRITE, AddressSpace, walk  # noqa: E402
from vmkit.memory.physical import PhysicalMemory  # noqa: E402
from vmkit.viz.memory import draw_grid, draw_walk, explore_grid, explore_walk  # noqa: E402

GVA = 0x7FFF_FFFF_F123


def _walker():
    mem = PhysicalMemory(1 << 22)
    space = AddressSpace(mem)
    space.map(GVA & ~0xFFF, mem.alloc_frame() * 4096, writable=False)
    return lambda gva, access=None: walk(mem, space.cr3, gva, access or USER_WRITE)


def test_draw_walk_shows_one_box_per_level_and_the_outcome():
    """Four table boxes and the outcome: five texts, the fault explained in French."""
    ax = draw_walk(_walker()(GVA))

    texts = [t.get_text() for t in ax.texts if t.get_text()]  # arrows are empty annotations
    assert len(texts) == 5 and texts[0].startswith("PML4") and "lecture seule" in texts[-1]


def test_draw_grid_numbers_the_references_in_order():
    """The 4+4 grid shows 24 numbered references and the data cell."""
    host, ept, guest, space = nested_setup()
    space.map(0x400000, guest.alloc_frame() * 4096)

    ax = draw_grid(walk_2d(guest, space.cr3, 0x400123))

    numbers = [int(t.get_text().split("\n")[0]) for t in ax.texts if t.get_text()[:1].isdigit()]
    assert numbers == list(range(1, 25))


def test_draw_grid_upto_hides_later_references():
    """upto=5 shows only the first five references."""
    host, ept, guest, space = nested_setup()
    space.map(0x400000, guest.alloc_frame() * 4096)

    ax = draw_grid(walk_2d(guest, space.cr3, 0x400123), upto=5)

    assert sum(1 for t in ax.texts if t.get_text()[:1].isdigit()) == 5


def test_explore_walk_redraws_on_a_new_address_and_survives_bad_text():
    """Typing an address redraws; typing text that is not a number says so instead of raising."""
    calls = []
    walker = _walker()
    box = explore_walk(lambda gva: calls.append(gva) or walker(gva), start=GVA)

    box.children[0].value = "pas un nombre"
    box.children[0].value = hex(GVA + 8)

    assert calls == [GVA, GVA + 8]


def test_explore_grid_has_a_play_button_and_a_slider():
    """The grid explorer steps with a Play widget linked to a slider up to the reference count."""
    host, ept, guest, space = nested_setup()
    space.map(0x400000, guest.alloc_frame() * 4096)

    box = explore_grid(walk_2d(guest, space.cr3, 0x400123))

    play, slider = box.children[0].children
    assert slider.max == 24 and play.max == 24
