"""vmkit.memory.mmu: references per access with a TLB, a page-walk cache and a nested TLB."""

import pytest

from vmkit.core import VmkitError
from vmkit.memory.mmu import MMU, MMUConfig, random_accesses
from vmkit.memory.nested import nested_setup, walk_2d
from vmkit.memory.paging import AddressSpace, walk
from vmkit.memory.physical import PhysicalMemory

BASE, PAGES = 0x1000_0000, 64


@pytest.fixture(scope="module")
def native():
    mem = PhysicalMemory(1 << 24)
    space = AddressSpace(mem)
    for i in range(PAGES):
        space.map(BASE + i * 4096, mem.alloc_frame() * 4096)
    return lambda gva, access: walk(mem, space.cr3, gva, access, set_accessed_dirty=False)


@pytest.fixture(scope="module")
def nested():
    host, ept, guest, space = nested_setup(host_size=1 << 25, guest_size=1 << 22)
    for i in range(PAGES):
        space.map(BASE + i * 4096, guest.alloc_frame() * 4096)
    walker = lambda gva, access: walk_2d(guest, space.cr3, gva, access, set_accessed_dirty=False)  # noqa: E731
    return walker, ept.eptp.encode()


def test_a_tlb_hit_costs_no_reference(native):
    """The second access to a page hits the TLB: zero references."""
    mmu = MMU(native)
    mmu.access(BASE)
    before = mmu.stats.references

    mmu.access(BASE + 8)

    assert mmu.stats.references == before and mmu.stats.tlb_hits == 1


def test_cold_misses_cost_the_whole_walk(native, nested):
    """Without a page-walk cache every miss costs 4 references natively, 24 nested."""
    walker, eptp = nested
    addresses = [BASE + i * 4096 for i in range(PAGES)]

    flat = MMU(native).run(addresses)
    two_d = MMU(walker, eptp=eptp).run(addresses)

    assert flat.references_per_miss == 4 and two_d.references_per_miss == 24


def test_page_walk_cache_shortens_both_dimensions(native, nested):
    """With the PWC, a native miss in a warm region costs 1 reference; a nested one far fewer than 24."""
    walker, eptp = nested
    addresses = [BASE + i * 4096 for i in range(PAGES)]

    flat = MMU(native, MMUConfig(page_walk_cache=True)).run(addresses)
    two_d = MMU(walker, MMUConfig(page_walk_cache=True), eptp=eptp).run(addresses)

    assert flat.references < 4 * PAGES and flat.references_per_miss < 1.1
    assert two_d.references_per_miss < 4


def test_nested_tlb_saves_the_ept_walks_of_guest_tables(nested):
    """The nested TLB removes EPT references the page-walk cache alone still makes."""
    walker, eptp = nested
    addresses = random_accesses(1, BASE, PAGES, 500)

    pwc = MMU(walker, MMUConfig(page_walk_cache=True), eptp=eptp).run(addresses)
    both = MMU(walker, MMUConfig(page_walk_cache=True, nested_tlb=True), eptp=eptp).run(addresses)

    assert both.references < pwc.references


def test_small_tlb_hits_less_on_a_large_working_set(native):
    """A 16-entry TLB over 64 pages hits less often than a 64-entry one."""
    addresses = random_accesses(2, BASE, PAGES, 1000)

    small = MMU(native, MMUConfig(tlb_entries=16, tlb_ways=4)).run(addresses)
    large = MMU(native, MMUConfig(tlb_entries=64, tlb_ways=4)).run(addresses)

    assert small.tlb_hit_rate < large.tlb_hit_rate


def test_random_accesses_are_seeded():
    """The same seed draws the same addresses, inside the working set."""
    a = random_accesses(3, BASE, PAGES, 100)

    assert a == random_accesses(3, BASE, PAGES, 100)
    assert all(BASE <= x < BASE + PAGES * 4096 for x in a)


def test_mmu_needs_a_config_object(native):
    """MMU(config) refuses anything but an MMUConfig."""
    with pytest.raises(VmkitError):
        MMU(native, {"tlb_entries": 8})
