"""vmkit.memory.nested: the two-dimensional walk, counted by doing it."""

import pytest

from vmkit.core import VmkitError
from vmkit.cpu.vmx import ExitReason
from vmkit.memory.ept import EPTViolationQualification
from vmkit.memory.nested import GuestPhysicalMemory, nested_setup, walk_2d
from vmkit.memory.paging import READ, WRITE, PageFault
from vmkit.memory.tlb import references_per_miss

GVA = 0x400123
LARGE = 2 << 20


def _mapped(guest_page=4096, ept_page=4096, guest_levels=4, ept_levels=4):
    host, ept, guest, space = nested_setup(guest_levels=guest_levels, ept_levels=ept_levels,
                                           ept_page_size=ept_page)
    if guest_page == 4096:
        data = guest.alloc_frame() * 4096
    else:
        data = LARGE
        guest.back(data, LARGE)
    space.map(GVA & ~(guest_page - 1), data, size=guest_page)
    return host, ept, guest, space, data


@pytest.mark.parametrize(("guest_levels", "ept_levels"), [(4, 4), (5, 5), (4, 5), (5, 4)])
def test_cold_2d_walk_makes_n_plus_1_times_m_plus_1_minus_1_references(guest_levels, ept_levels):
    """A cold nested walk reads (n+1)(m+1)-1 entries: 24 for 4+4, 35 for 5+5."""
    *_, guest, space, _ = _mapped(guest_levels=guest_levels, ept_levels=ept_levels)

    walk = walk_2d(guest, space.cr3, GVA, READ, levels=guest_levels)

    assert walk.ok
    assert walk.memory_references == references_per_miss(guest_levels, ept_levels)
    assert walk.memory_references == (guest_levels + 1) * (ept_levels + 1) - 1


@pytest.mark.parametrize(("guest_page", "ept_page", "expected"), [
    (4096, 4096, 24), (LARGE, 4096, 19), (4096, LARGE, 19), (LARGE, LARGE, 15)])
def test_large_pages_shorten_either_dimension(guest_page, ept_page, expected):
    """2 MiB pages remove a level from the guest walk, from every EPT walk, or from both."""
    *_, guest, space, _ = _mapped(guest_page, ept_page)

    assert walk_2d(guest, space.cr3, GVA, READ).memory_references == expected


def test_2d_walk_reaches_the_host_byte():
    """gva -> gpa (guest tables) -> hpa (EPT): the byte written at the hpa is the guest's byte."""
    host, _, guest, space, data = _mapped()
    guest.write(data + 0x123, b"\x42")

    walk = walk_2d(guest, space.cr3, GVA, READ)

    assert walk.result.gpa == data + 0x123
    assert host.read(walk.result.hpa, 1) == b"\x42"


def test_grid_has_one_row_per_guest_level_and_one_for_the_data():
    """The grid is (n+1) rows of m EPT references, each ended by the guest entry (or the data)."""
    *_, guest, space, _ = _mapped()

    grid = walk_2d(guest, space.cr3, GVA, READ).grid()

    assert [row[-1] for row in grid] == ["PML4", "PDPT", "PD", "PT", "donnée"]
    assert all(row[:-1] == ["EPT PML4", "EPT PDPT", "EPT PD", "EPT PT"] for row in grid)


def test_unbacked_data_page_is_an_ept_violation_on_the_final_access():
    """A guest page the VMM never backed: EPT violation, exit 48, final translation (bit 8 = 1)."""
    _, _, guest, space, _ = _mapped()
    space.map(0x800000, 0x300000)  # guest-physical 0x300000: never backed

    walk = walk_2d(guest, space.cr3, 0x800000, WRITE)

    assert walk.result.exit_reason is ExitReason.EPT_VIOLATION
    q = EPTViolationQualification.decode(walk.result.qualification)
    assert (q.write, q.gla_valid, q.final) == (True, True, True)


def test_unbacked_guest_table_is_an_ept_violation_during_the_walk():
    """An EPT hole under a guest page table: violation while reading it (bit 8 = 0)."""
    _, ept, guest, space, _ = _mapped()
    pt = space.entries(GVA)[-1].table
    ept.unmap(pt)

    walk = walk_2d(guest, space.cr3, GVA, READ)

    q = EPTViolationQualification.decode(walk.result.qualification)
    assert walk.result.gpa == pt + 8 * ((GVA >> 12) & 511)
    assert (q.read, q.gla_valid, q.final) == (True, True, False)
    assert len(walk.steps) == 4  # PML4, PDPT, PD rows done, the PT row stopped in the EPT


def test_guest_page_fault_comes_from_the_guest_tables():
    """A gva the guest never mapped is a guest #PF (handled in the guest, no VM exit)."""
    _, _, guest, space, _ = _mapped()

    walk = walk_2d(guest, space.cr3, 0x7000_0000, READ)

    assert isinstance(walk.result, PageFault)


def test_walk_2d_needs_guest_physical_memory():
    """Passing plain host memory is a caller mistake, said as such."""
    host, *_ = _mapped()

    with pytest.raises(VmkitError, match="GuestPhysicalMemory"):
        walk_2d(host, 0, GVA)


def test_guest_memory_refuses_bad_sizes():
    """Guest memory is frame-aligned; EPT pages are 4 KiB or 2 MiB."""
    host, ept, *_ = _mapped()

    with pytest.raises(VmkitError):
        GuestPhysicalMemory(host, ept, 5000)
    with pytest.raises(VmkitError):
        GuestPhysicalMemory(host, ept, 1 << 22, ept_page_size=1 << 30)


def test_grid_names_the_guest_row_that_an_ept_fault_stopped():
    """When the EPT walk of the guest's PT entry faults, that row is still labelled PT, not data."""
    _, ept, guest, space, _ = _mapped()
    ept.unmap(space.entries(GVA)[-1].table)

    grid = walk_2d(guest, space.cr3, GVA, READ).grid()

    assert [row[-1] for row in grid] == ["PML4", "PDPT", "PD", "PT"]


def test_reprs_show_no_memory_addresses():
    """Guest memory and address spaces print their state, not an object address."""
    _, _, guest, space, _ = _mapped()

    assert "0x7f" not in repr(guest) and repr(space).startswith("AddressSpace(cr3=")


@pytest.mark.parametrize("bad", [
    lambda: walk_2d(None, 0, GVA), lambda: GuestPhysicalMemory(None, None),
    lambda: references_per_miss(4.0, 4)])
def test_caller_mistakes_raise_vmkit_errors(bad):
    """Wrong objects or types are said plainly, never a raw TypeError or AttributeError."""
    with pytest.raises(VmkitError):
        bad()


def test_a_guest_table_pointing_past_the_ept_is_an_ept_violation():
    """A guest PTE holding a gpa wider than 48 bits is an EPT violation, not a crash."""
    _, _, guest, space, _ = _mapped()
    space.map(0x1000, 1 << 50)

    walk = walk_2d(guest, space.cr3, 0x1000)

    assert walk.result.exit_reason is ExitReason.EPT_VIOLATION
