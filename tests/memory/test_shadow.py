"""vmkit.memory.shadow: shadow paging against nested paging, exit by exit and reference by reference."""

from functools import lru_cache

from vmkit.cpu.vmx import ExitReason
from vmkit.memory.paging import WRITE, Cause, PageFault
from vmkit.memory.shadow import (
    Guest, NestedPager, ShadowPager, compare, mmu_heavy, tlb_heavy,
)
from vmkit.memory.tlb import TLB

GVA = 0x40_0000
NEIGHBOUR = GVA + 0x1000   # keeps the guest's page table alive when GVA is unmapped
GPA, OTHER_GPA = 0x5000, 0x9000


def _mapped(kind, tlb=None):
    guest = Guest(2)
    pager = kind(guest, tlb)
    pager.guest_map(NEIGHBOUR, 0x1000)
    pager.guest_map(GVA, GPA)
    return guest, pager


@lru_cache(maxsize=None)
def _compare(generator):
    return compare(generator)


def test_guest_pte_write_under_shadow_paging_is_one_exit():
    """Under shadow paging a guest PTE write traps once (#PF, exit 0) and the shadow follows it."""
    guest, pager = _mapped(ShadowPager)

    exits = pager.guest_protect(GVA, writable=False)

    assert [e.reason for e in exits] == [ExitReason.EXCEPTION_NMI]
    assert pager.access(GVA, WRITE).fault.cause is Cause.WRITE


def test_shadow_translation_follows_a_guest_remap():
    """After the guest remaps a page, the shadow walk reaches the new frame's hpa."""
    guest, pager = _mapped(ShadowPager)

    unmap_exits = pager.guest_unmap(GVA)
    map_exits = pager.guest_map(GVA, OTHER_GPA)

    assert (len(unmap_exits), len(map_exits)) == (1, 1)
    assert pager.access(GVA).hpa == guest.hpa(OTHER_GPA)


def test_guest_pte_write_under_nested_paging_is_no_exit():
    """Under nested paging a guest PTE write is an ordinary store: no exit, same effect."""
    guest, pager = _mapped(NestedPager)

    exits = pager.guest_unmap(GVA) + pager.guest_map(GVA, OTHER_GPA)

    assert exits == [] and pager.exits == []
    assert pager.stats.guest_pte_writes == 4 + 1 + 2   # NEIGHBOUR (3 tables + leaf), GVA, remap
    assert pager.access(GVA).hpa == guest.hpa(OTHER_GPA)


def test_guest_cr3_write_exits_under_shadow_paging_only():
    """A guest MOV to CR3 is exit 28 (CR access) under shadow paging, nothing under EPT."""
    shadow, nested = ShadowPager(Guest(2)), NestedPager(Guest(2))

    shadow_exits = shadow.guest_write_cr3(shadow.guest.cr3s[1])
    nested_exits = nested.guest_write_cr3(nested.guest.cr3s[1])

    assert [e.reason for e in shadow_exits] == [ExitReason.CR_ACCESS]
    assert nested_exits == []


def test_shadow_caches_one_shadow_per_guest_cr3():
    """Switching back to a CR3 reuses its shadow: no second shadow is built."""
    pager = ShadowPager(Guest(2))
    first, second = pager.guest.cr3s

    pager.guest_write_cr3(second)
    shadow = pager.shadow
    pager.guest_write_cr3(first)
    pager.guest_write_cr3(second)

    assert pager.shadow is shadow and len(pager.shadows) == 2


def test_writes_to_an_unshadowed_address_space_do_not_exit():
    """Tables of a CR3 the VMM has not shadowed yet are not write-protected."""
    guest = Guest(2)
    pager = ShadowPager(guest)

    exits = pager.guest_map(GVA, GPA, cr3=guest.cr3s[1])

    assert exits == [] and pager.stats.guest_pte_writes == 4


def test_shadow_miss_on_a_mapped_page_is_a_hidden_fault():
    """A page the guest maps but the shadow does not: one #PF exit, a fill, no fault to the guest."""
    guest = Guest(2)
    pager = ShadowPager(guest)
    pager.guest_map(GVA, GPA, cr3=guest.cr3s[1])
    pager.guest_write_cr3(guest.cr3s[1])

    record = pager.access(GVA)

    assert record.fault is None and record.hpa == guest.hpa(GPA)
    assert [e.reason for e in record.exits] == [ExitReason.EXCEPTION_NMI]
    assert (pager.stats.hidden_faults, pager.stats.guest_faults) == (1, 0)
    assert pager.access(GVA).exits == ()


def test_shadow_miss_on_an_unmapped_page_is_reflected_to_the_guest():
    """A page the guest does not map: the #PF exit ends with the fault injected into the guest."""
    _, pager = _mapped(ShadowPager)

    record = pager.access(0x80_0000)

    assert isinstance(record.fault, PageFault) and record.fault.cause is Cause.NOT_PRESENT
    assert [e.reason for e in record.exits] == [ExitReason.EXCEPTION_NMI]
    assert "reflected" in record.exits[0].what
    assert (pager.stats.hidden_faults, pager.stats.guest_faults) == (0, 1)


def test_guest_fault_under_nested_paging_does_not_exit():
    """Under EPT a true guest #PF goes straight to the guest's handler."""
    _, pager = _mapped(NestedPager)

    record = pager.access(0x80_0000)

    assert isinstance(record.fault, PageFault) and record.exits == ()


def test_shadow_walk_is_4_references_nested_walk_is_24():
    """Cold, without a TLB: a shadow walk is native (4 references), a 2D walk 24."""
    _, shadow = _mapped(ShadowPager)
    _, nested = _mapped(NestedPager)

    assert shadow.access(GVA).references == 4
    assert nested.access(GVA).references == 24


def test_second_access_hits_the_tlb():
    """With a TLB the second access to a page hits and walks nothing."""
    _, pager = _mapped(NestedPager, TLB(64, 4))

    first, second = pager.access(GVA), pager.access(GVA)

    assert (first.tlb_hit, second.tlb_hit) == (False, True)
    assert second.references == 0 and (pager.tlb_hits, pager.tlb_misses) == (1, 1)


def test_guest_cr3_write_flushes_the_guest_tlb_entries():
    """After a guest MOV to CR3 the same page misses again (non-global entries flushed)."""
    guest, pager = _mapped(ShadowPager, TLB(64, 4))
    pager.access(GVA)

    pager.guest_write_cr3(guest.cr3s[0])

    assert not pager.access(GVA).tlb_hit


def test_mmu_heavy_favours_nested_paging():
    """On fork/exec/mmap-like work, nested paging exits far less and costs less."""
    result = _compare(mmu_heavy)

    assert result.nested.exits * 10 < result.shadow.exits
    assert result.nested.cycles < result.shadow.cycles and result.winner == "nested"


def test_tlb_heavy_favours_shadow_paging():
    """On static tables and many TLB misses, shadow walks read fewer entries and cost less."""
    result = _compare(tlb_heavy)

    assert result.shadow.references_per_walk == 4 and result.nested.references_per_walk == 24
    assert result.shadow.walk_references < result.nested.walk_references
    assert result.shadow.cycles < result.nested.cycles and result.winner == "shadow"


def test_same_seed_same_results():
    """Workloads and comparisons are deterministic for a seed, and differ across seeds."""
    assert mmu_heavy(5, steps=300) == mmu_heavy(5, steps=300) != mmu_heavy(6, steps=300)
    assert compare(mmu_heavy(5, steps=300)) == compare(mmu_heavy(5, steps=300))
