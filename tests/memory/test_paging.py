"""vmkit.memory.paging: the x86-64 page walk, its faults, A/D bits and the table builder."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmkit.core import VmkitError
from vmkit.memory.paging import (
    FETCH, PTE, READ, USER_FETCH, USER_READ, USER_WRITE, WRITE, Access, AddressSpace,
    GeneralProtection, PageFault, PFError, Translation, decompose, is_canonical, walk,
)
from vmkit.memory.physical import FRAME, PhysicalMemory

GVA = 0x0000_7FFF_FFFF_F123
PAGE = GVA & ~0xFFF
PA = 0x1234_5000


def _space(levels=4, **rights):
    """Fresh memory with one 4 KiB page mapped at PAGE -> PA."""
    mem = PhysicalMemory(1 << 20)
    space = AddressSpace(mem, levels=levels)
    space.map(PAGE, PA, **rights)
    return mem, space


def _entries(mem, space, gva=GVA):
    """The raw entries on the path of gva, read without counting."""
    return [ref.entry for ref in space.entries(gva)]


def test_decompose_splits_a_known_address():
    """0x7fff_ffff_f123 has indexes 255, 511, 511, 511 and offset 0x123."""
    d = decompose(GVA)

    assert d.indexes == (255, 511, 511, 511) and d.offset == 0x123 and d.page_offset_bits == 12


def test_decompose_with_five_levels_adds_the_pml5_index_first():
    """With LA57 the first index comes from bits 56:48."""
    assert decompose(0x0001_0000_0000_0000 | GVA, levels=5).indexes == (1, 255, 511, 511, 511)


@pytest.mark.parametrize("gva, levels, expected", [
    (0x0000_7FFF_FFFF_FFFF, 4, True),
    (0xFFFF_8000_0000_0000, 4, True),
    (0x0000_8000_0000_0000, 4, False),
    (0xFFFF_7FFF_FFFF_FFFF, 4, False),
    (0x0000_8000_0000_0000, 5, True),
    (0x00FF_FFFF_FFFF_FFFF, 5, True),
    (0x0100_0000_0000_0000, 5, False),
    (0xFF00_0000_0000_0000, 5, True),
])
def test_canonical_addresses_sign_extend_the_top_bit(gva, levels, expected):
    """Bits 63:47 (63:56 with five levels) must all be equal."""
    assert is_canonical(gva, levels) is expected


def test_4k_page_walks_in_four_references_through_the_right_tables():
    """A 4 KiB page costs 4 reads: PML4, PDPT, PD, PT, at the expected entries."""
    mem, space = _space()
    reads = mem.reads

    w = walk(mem, space.cr3, GVA)

    assert w.ok and w.memory_references == 4 == mem.reads - reads
    assert [r.name for r in w.references] == ["PML4", "PDPT", "PD", "PT"]
    assert [r.table for r in w.references] == [0, 0x1000, 0x2000, 0x3000]
    assert [r.index for r in w.references] == [255, 511, 511, 511]
    assert [r.address for r in w.references] == [0x7F8, 0x1FF8, 0x2FF8, 0x3FF8]
    assert w.result == Translation(GVA, PA | 0x123, 4096, True, True, True)


def test_2m_page_walks_in_three_references():
    """A PDE with PS set ends the walk: 3 reads and a 2 MiB offset."""
    mem = PhysicalMemory(1 << 20)
    space = AddressSpace(mem)
    space.map(0x4000_0000, 0x20_0000, size=2 << 20)

    w = walk(mem, space.cr3, 0x4012_3456)

    assert w.memory_references == 3 and w.result.pa == 0x32_3456 and w.result.page_size == 2 << 20


def test_1g_page_walks_in_two_references():
    """A PDPTE with PS set ends the walk: 2 reads and a 1 GiB offset."""
    mem = PhysicalMemory(1 << 20)
    space = AddressSpace(mem)
    space.map(0x80_0000_0000, 0x4000_0000, size=1 << 30)

    w = walk(mem, space.cr3, 0x80_1234_5678)

    assert w.memory_references == 2 and w.result.pa == 0x5234_5678 and w.result.page_size == 1 << 30


def test_five_level_paging_adds_one_reference():
    """LA57 reads a PML5 entry first: 5 references for a 4 KiB page."""
    mem = PhysicalMemory(1 << 20)
    space = AddressSpace(mem, levels=5)
    space.map(0x0001_0000_0000_0000, PA)

    w = walk(mem, space.cr3, 0x0001_0000_0000_0042, levels=5)

    assert w.memory_references == 5 and w.references[0].name == "PML5" and w.result.pa == PA | 0x42


@pytest.mark.parametrize("depth, name", [(0, "PML4"), (1, "PDPT"), (2, "PD"), (3, "PT")])
@pytest.mark.parametrize("access, code", [(READ, 0), (USER_WRITE, PFError.W | PFError.U)])
def test_not_present_entry_faults_at_its_level(depth, name, access, code):
    """Clearing the entry at one level faults there, with P=0 and the access bits."""
    mem, space = _space()
    mem.write_u64(space.entries(GVA)[depth].address, 0)

    w = walk(mem, space.cr3, GVA, access)

    assert w.result.error_code == code and w.memory_references == depth + 1
    assert w.result.explain() == f"page non présente au niveau {name}"


def test_supervisor_write_to_read_only_page_faults_with_wp():
    """CR0.WP=1: a supervisor write to a read-only page is a protection fault, P|W."""
    mem, space = _space(writable=False)

    w = walk(mem, space.cr3, GVA, WRITE, wp=True)

    assert w.result.error_code == PFError.P | PFError.W and "lecture seule" in w.result.explain()


def test_supervisor_write_to_read_only_page_succeeds_without_wp():
    """CR0.WP=0: the supervisor may write to a read-only page."""
    mem, space = _space(writable=False)

    assert walk(mem, space.cr3, GVA, WRITE, wp=False).ok


def test_user_write_to_read_only_page_faults_even_without_wp():
    """CR0.WP only relaxes supervisor writes: a user write still faults, P|W|U."""
    mem, space = _space(writable=False)

    assert walk(mem, space.cr3, GVA, USER_WRITE, wp=False).result.error_code == 7


def test_user_access_to_supervisor_page_faults():
    """A user read of a page with US=0 is a protection fault, P|U."""
    mem, space = _space(user=False)

    w = walk(mem, space.cr3, GVA, USER_READ)

    assert w.result.error_code == PFError.P | PFError.U
    assert w.result.explain().startswith("accès utilisateur à une page superviseur")


def test_fetch_from_nx_page_faults_with_nxe():
    """With EFER.NXE, fetching from an NX page faults with P|ID."""
    mem, space = _space(executable=False)

    w = walk(mem, space.cr3, GVA, FETCH, nxe=True)

    assert w.result.error_code == PFError.P | PFError.ID and not w.ok


def test_nx_bit_is_reserved_without_nxe():
    """With EFER.NXE=0, bit 63 is reserved: any access faults with RSVD."""
    mem, space = _space(executable=False)

    assert walk(mem, space.cr3, GVA, READ, nxe=False).result.error_code == PFError.P | PFError.RSVD


def test_id_bit_needs_nxe_or_smep():
    """A not-present fetch reports ID only when NXE or SMEP is on (SDM §4.7)."""
    mem = PhysicalMemory(1 << 16)
    space = AddressSpace(mem)

    codes = [walk(mem, space.cr3, GVA, FETCH, nxe=n, smep=s).result.error_code
             for n, s in [(False, False), (True, False), (False, True)]]

    assert codes == [0, PFError.ID, PFError.ID]


def test_smep_forbids_supervisor_fetch_from_user_page():
    """With CR4.SMEP a supervisor fetch from a user page faults, P|ID."""
    mem, space = _space(user=True)

    w = walk(mem, space.cr3, GVA, FETCH, smep=True)

    assert w.result.error_code == PFError.P | PFError.ID and "SMEP" in w.result.explain()


def test_user_fetch_from_executable_user_page_succeeds():
    """A user fetch from a user, executable page translates."""
    mem, space = _space()

    assert walk(mem, space.cr3, GVA, USER_FETCH, smep=True).result.executable


def test_misaligned_2m_page_faults_with_rsvd():
    """A 2 MiB PDE with bits 20:13 set is a reserved-bit fault at PD."""
    mem, space = _space()
    pde = space.entries(GVA)[2]
    mem.write_u64(pde.address, 0x20_2000 | PTE.PS | PTE.P)

    w = walk(mem, space.cr3, GVA)

    assert w.result.error_code == PFError.P | PFError.RSVD and w.result.level == 2
    assert "bit réservé" in w.result.explain()


def test_pat_bit_of_a_2m_page_is_not_reserved():
    """Bit 12 of a 2 MiB PDE is PAT, not an address bit: the walk succeeds."""
    mem, space = _space()
    pde = space.entries(GVA)[2]
    mem.write_u64(pde.address, 0x20_1000 | PTE.PS | PTE.P)

    w = walk(mem, space.cr3, GVA)

    assert w.ok and w.result.pa == 0x20_0000 | (GVA & 0x1F_FFFF)


def test_ps_in_a_pml4_entry_faults_with_rsvd():
    """PS is reserved in a PML4E: the walk stops at PML4 with P|RSVD."""
    mem, space = _space()
    pml4e = space.entries(GVA)[0]
    mem.write_u64(pml4e.address, pml4e.entry | PTE.PS)

    w = walk(mem, space.cr3, GVA, USER_READ)

    assert w.result.error_code == PFError.P | PFError.RSVD | PFError.U and w.memory_references == 1


def test_a_read_sets_accessed_on_every_level_and_no_dirty():
    """After a read every entry used has A, and the leaf has no D."""
    mem, space = _space()

    walk(mem, space.cr3, GVA, READ)

    entries = _entries(mem, space)
    assert all(e & PTE.A for e in entries) and not any(e & PTE.D for e in entries)


def test_a_write_sets_dirty_on_the_leaf_only():
    """After a write only the leaf PTE has D; the Reference keeps the value read."""
    mem, space = _space()

    w = walk(mem, space.cr3, GVA, WRITE)

    assert [bool(e & PTE.D) for e in _entries(mem, space)] == [False, False, False, True]
    assert not w.references[-1].entry & (PTE.A | PTE.D)


def test_accessed_is_written_back_only_when_not_already_set():
    """A second read writes nothing: A is already set everywhere."""
    mem, space = _space()
    walk(mem, space.cr3, GVA)
    writes = mem.writes

    walk(mem, space.cr3, GVA)

    assert mem.writes == writes


def test_a_faulting_walk_changes_no_accessed_or_dirty_bit():
    """A page fault leaves every entry as it was."""
    mem, space = _space(writable=False)
    before, writes = _entries(mem, space), mem.writes

    w = walk(mem, space.cr3, GVA, WRITE)

    assert not w.ok and _entries(mem, space) == before and mem.writes == writes


def test_set_accessed_dirty_false_leaves_memory_alone():
    """set_accessed_dirty=False translates without writing back."""
    mem, space = _space()

    w = walk(mem, space.cr3, GVA, WRITE, set_accessed_dirty=False)

    assert w.ok and mem.writes == 0


def test_non_canonical_address_is_a_general_protection_fault():
    """A non-canonical gva raises #GP before any table is read."""
    mem, space = _space()

    w = walk(mem, space.cr3, 0x0000_8000_0000_0000)

    assert isinstance(w.result, GeneralProtection) and w.result.vector == 13
    assert w.memory_references == 0 and mem.reads == 0


def test_entry_pointing_beyond_memory_reads_all_ones_and_faults_rsvd():
    """A table beyond installed memory reads all ones (master abort): RSVD at that level."""
    mem, space = _space()
    pde = space.entries(GVA)[2]
    mem.write_u64(pde.address, (1 << 40) | PTE.P | PTE.RW | PTE.US)

    w = walk(mem, space.cr3, GVA)

    assert w.references[-1].entry == (1 << 64) - 1
    assert isinstance(w.result, PageFault) and w.result.vector == 14
    assert w.result.error_code == PFError.P | PFError.RSVD and w.result.level == 1


@pytest.mark.parametrize("gva, pa, size", [
    (PAGE + 1, PA, 4096), (PAGE, PA + 8, 4096), (0x20_0000, 0x1000, 2 << 20),
    (0x20_0000, 0x20_0000, 1 << 30), (0x1000, 0, 8192),
])
def test_address_space_refuses_misaligned_maps(gva, pa, size):
    """gva and pa must be aligned to the page size, and the size must be a real one."""
    space = AddressSpace(PhysicalMemory(1 << 20))

    with pytest.raises(VmkitError):
        space.map(gva, pa, size=size)


@pytest.mark.parametrize("first, second", [
    ((PAGE, 4096), (PAGE, 4096)),
    ((0x20_0000, 2 << 20), (0x20_1000, 4096)),
    ((0x20_1000, 4096), (0x20_0000, 2 << 20)),
    ((0x4000_0000, 1 << 30), (0x4020_0000, 2 << 20)),
])
def test_address_space_refuses_overlapping_maps(first, second):
    """Mapping over an existing mapping, of any size, is refused."""
    space = AddressSpace(PhysicalMemory(1 << 20))
    space.map(first[0], first[0], size=first[1])

    with pytest.raises(VmkitError, match="overlaps"):
        space.map(second[0], second[0], size=second[1])


def test_address_space_refuses_non_canonical_gva():
    """A non-canonical gva cannot be mapped."""
    with pytest.raises(VmkitError, match="canonical"):
        AddressSpace(PhysicalMemory(1 << 20)).map(0x0000_8000_0000_0000, 0)


def test_unmap_faults_afterwards_and_frees_empty_tables():
    """After unmap the walk faults and the intermediate tables are back in the allocator."""
    mem, space = _space()

    space.unmap(GVA)

    assert walk(mem, space.cr3, GVA).result.error_code == 0 and mem.frames_in_use == 1


def test_protect_changes_the_leaf_rights():
    """protect(writable=False) turns a write into a protection fault."""
    mem, space = _space()

    space.protect(GVA, writable=False)

    assert walk(mem, space.cr3, GVA, WRITE).result.error_code == PFError.P | PFError.W
    assert walk(mem, space.cr3, GVA, READ).ok


def test_mappings_lists_pages_sorted_with_canonical_gvas():
    """mappings() lists every page by gva, upper-half addresses sign-extended."""
    space = AddressSpace(PhysicalMemory(1 << 20))
    space.map(0xFFFF_8000_0000_0000, 0x2000, writable=False)
    space.map(0x20_0000, 0x40_0000, size=2 << 20, global_=True)

    listed = [(m.gva, m.pa, m.size) for m in space.mappings()]

    assert listed == [(0x20_0000, 0x40_0000, 2 << 20), (0xFFFF_8000_0000_0000, 0x2000, 4096)]
    assert space.mappings()[0].flags & PTE.G and not space.mappings()[1].flags & PTE.RW


def test_invalid_arguments_are_caller_mistakes():
    """levels other than 4 or 5 and gvas outside 64 bits raise VmkitError."""
    mem = PhysicalMemory(1 << 16)

    for call in (lambda: walk(mem, 0, 0, levels=3), lambda: walk(mem, 0, 1 << 64),
                 lambda: walk(mem, 0, -1), lambda: Access(write=True, fetch=True)):
        with pytest.raises(VmkitError):
            call()


def test_walk_and_access_read_well():
    """str() of an access and of a walk names the access, the levels and the outcome."""
    mem, space = _space()

    text = str(walk(mem, space.cr3, GVA, USER_WRITE))

    assert str(USER_WRITE) == "user write" and str(READ) == "supervisor read"
    assert "4 memory references" in text and "PDPT" in text and f"-> {GVA:#x} -> {PA | 0x123:#x}" in text


@settings(max_examples=50, deadline=None)
@given(pages=st.dictionaries(st.integers(0, (1 << 35) - 1), st.integers(0, (1 << 40) - 1),
                             min_size=1, max_size=8),
       offset=st.integers(0, FRAME - 1))
def test_walk_translates_every_mapped_page(pages, offset):
    """For random 4 KiB mappings, walk(gva + offset) is pa + offset."""
    mem = PhysicalMemory(1 << 20)
    space = AddressSpace(mem)
    for vpn, pfn in pages.items():
        space.map(vpn * FRAME, pfn * FRAME)

    results = [walk(mem, space.cr3, vpn * FRAME + offset).result for vpn in pages]

    assert [r.pa for r in results] == [pfn * FRAME + offset for pfn in pages.values()]


def test_walk_needs_a_memory():
    """walk(None, ...) is a caller mistake said plainly."""
    with pytest.raises(VmkitError, match="PhysicalMemory"):
        walk(None, 0, 0)


def test_is_canonical_checks_its_levels():
    """is_canonical refuses a paging depth other than 4 or 5."""
    with pytest.raises(VmkitError):
        is_canonical(0, 3)
