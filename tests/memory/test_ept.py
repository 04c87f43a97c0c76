"""vmkit.memory.ept: EPTP, the EPT walk, violations, misconfigurations, A/D flags."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmkit.core import VmkitError
from vmkit.memory.ept import (
    EPT, EPTE, EPTP, EPTAccess, EPTMisconfiguration, EPTTranslation, EPTViolation,
    EPTViolationQualification, MemoryType, ept_walk, memory_type,
)
from vmkit.memory.physical import PhysicalMemory

MiB2, GiB = 1 << 21, 1 << 30
R, W, X, GLA, FINAL = 1 << 0, 1 << 1, 1 << 2, 1 << 7, 1 << 8
READABLE, WRITABLE, EXECUTABLE = 1 << 3, 1 << 4, 1 << 5


def _ept(**kwargs):
    return EPT(PhysicalMemory(1 << 22), **kwargs)


def _walk(ept, gpa, access=EPTAccess.READ, **kwargs):
    return ept_walk(ept.memory, ept.eptp, gpa, access, **kwargs)


def test_eptp_encodes_4_level_wb_without_ad():
    """EPTP(0x1000) is 0x101E: WB (6), walk length 4 (3 << 3), no A/D."""
    assert EPTP(0x1000).encode() == 0x101E


def test_eptp_encodes_accessed_dirty_in_bit_6():
    """Enabling A/D sets bit 6: 0x105E."""
    assert EPTP(0x1000, accessed_dirty=True).encode() == 0x105E


def test_eptp_encodes_5_level_walk():
    """A 5-level walk puts 4 in bits 5:3: 0x1026."""
    assert EPTP(0x1000, walk_length=5).encode() == 0x1026


def test_eptp_decode_inverts_encode():
    """decode reads back the fields encode wrote."""
    assert EPTP.decode(0x105E) == EPTP(0x1000, accessed_dirty=True)
    assert EPTP.decode(0x2000 | 0x18) == EPTP(0x2000, memory_type=MemoryType.UC)


@pytest.mark.parametrize("value", [0x101D, 0x1016, 0x1036, 0x109E, 0x101E | 1 << 60])
def test_eptp_decode_refuses_invalid_values(value):
    """Memory type other than 0/6, walk length other than 4/5, or a reserved bit is refused."""
    with pytest.raises(VmkitError):
        EPTP.decode(value)


def test_eptp_refuses_unaligned_root():
    """The root table must be 4 KiB aligned."""
    with pytest.raises(VmkitError, match="aligned"):
        EPTP(0x1800)


@pytest.mark.parametrize("size, references", [(4096, 4), (MiB2, 3), (GiB, 2)])
def test_walk_length_depends_on_page_size(size, references):
    """A 4 KiB page takes 4 references, 2 MiB takes 3, 1 GiB takes 2."""
    ept = _ept()
    ept.map(GiB, GiB, size=size)

    walk = _walk(ept, GiB + 0x123)

    assert walk.ok and walk.memory_references == references
    assert walk.result.hpa == GiB + 0x123 and walk.result.page_size == size


def test_5_level_walk_takes_one_more_reference():
    """With a 5-level EPT a 4 KiB page takes 5 references, starting at the PML5."""
    ept = _ept(walk_length=5)
    ept.map(0x5000, 0x9000)

    walk = _walk(ept, 0x5008)

    assert walk.memory_references == 5 and walk.references[0].name == "EPT PML5"
    assert [ref.name for ref in walk.references[1:]] == ["EPT PML4", "EPT PDPT", "EPT PD", "EPT PT"]


def test_memory_references_counts_physical_reads():
    """Each reference is one 64-bit read of physical memory."""
    ept = _ept()
    ept.map(0x5000, 0x9000)
    before = ept.memory.reads

    walk = _walk(ept, 0x5000)

    assert ept.memory.reads - before == walk.memory_references == 4


def test_not_present_read_qualification():
    """A read of an unmapped gpa: bit 0 and bit 7 set, bits 3-5 clear."""
    walk = _walk(_ept(), 0x7000)

    assert isinstance(walk.result, EPTViolation)
    assert walk.result.qualification == R | GLA | FINAL
    assert walk.result.gpa == 0x7000


def test_not_present_write_without_gla_clears_bits_7_and_8():
    """A write with gla_valid False sets bit 1 only."""
    walk = _walk(_ept(), 0x7000, EPTAccess.WRITE, gla_valid=False)

    assert walk.result.qualification == W and not walk.result.gla_valid


def test_access_to_guest_paging_entry_clears_bit_8():
    """final False (a guest paging-structure read) leaves bit 8 clear with bit 7 set."""
    walk = _walk(_ept(), 0x7000, final=False)

    assert walk.result.qualification == R | GLA


def test_not_present_in_a_lower_table_ands_over_entries_walked():
    """A missing PT entry after R|W|X tables still reports bits 3-5 clear."""
    ept = _ept()
    ept.map(0x5000, 0x9000)

    walk = _walk(ept, 0x6000)

    assert walk.memory_references == 4 and walk.result.qualification & 0b111000 == 0


def test_write_to_read_only_mapping():
    """Writing a R+X page: bits 1, 3 and 5 set, bit 4 clear."""
    ept = _ept()
    ept.map(0x5000, 0x9000, write=False)

    q = _walk(ept, 0x5000, EPTAccess.WRITE).result.qualification

    assert q == W | READABLE | EXECUTABLE | GLA | FINAL


def test_fetch_from_non_executable_mapping():
    """Fetching from a R+W page is a violation with bit 2 set and bit 5 clear."""
    ept = _ept()
    ept.map(0x5000, 0x9000, execute=False)

    q = _walk(ept, 0x5000, EPTAccess.FETCH).result.qualification

    assert q == X | READABLE | WRITABLE | GLA | FINAL


def test_permission_cleared_in_an_intermediate_entry_is_enforced():
    """A bit clear in any entry of the walk forbids the access, even if the leaf allows it."""
    ept = _ept()
    ept.map(0x5000, 0x9000)
    pml4e = ept.entries(0x5000)[0]
    ept.memory.write_u64(pml4e.address, pml4e.entry & ~EPTE.WRITE)

    walk = _walk(ept, 0x5000, EPTAccess.WRITE)

    assert isinstance(walk.result, EPTViolation) and not walk.result.decoded.writable


@pytest.mark.parametrize("read, write, execute, reason", [
    (False, True, False, "entrée en écriture seule"),
    (False, True, True, "écriture et exécution sans lecture"),
])
def test_write_without_read_is_a_misconfiguration(read, write, execute, reason):
    """Bits 2:0 = 010 or 110 are misconfigurations, whatever the access."""
    ept = _ept()
    ept.map(0x5000, 0x9000, read=read, write=write, execute=execute, allow_misconfig=True)

    walk = _walk(ept, 0x5000, EPTAccess.FETCH)

    assert isinstance(walk.result, EPTMisconfiguration) and walk.result.reason == reason


def test_execute_only_needs_the_capability():
    """Bits 2:0 = 100 are a misconfiguration unless the CPU supports execute-only."""
    ept = _ept()
    ept.map(0x5000, 0x9000, read=False, write=False, allow_misconfig=True)

    without = _walk(ept, 0x5000, EPTAccess.FETCH)
    with_cap = _walk(ept, 0x5000, EPTAccess.FETCH, execute_only=True)

    assert isinstance(without.result, EPTMisconfiguration)
    assert with_cap.ok and with_cap.result.executable and not with_cap.result.readable


def test_read_of_execute_only_page_is_a_violation():
    """With the capability, reading an execute-only page is a violation with bit 5 set."""
    ept = _ept()
    ept.map(0x5000, 0x9000, read=False, write=False, allow_misconfig=True)

    q = _walk(ept, 0x5000, execute_only=True).result.qualification

    assert q == R | EXECUTABLE | GLA | FINAL


@pytest.mark.parametrize("kind", [2, 3, 7])
def test_reserved_memory_type_is_a_misconfiguration(kind):
    """A leaf with memory type 2, 3 or 7 is a misconfiguration."""
    ept = _ept()
    ept.map(0x5000, 0x9000, memory_type=kind, allow_misconfig=True)

    walk = _walk(ept, 0x5000)

    assert walk.result.reason == f"type mémoire réservé {kind}"
    assert memory_type(walk.references[-1].entry) == kind


def test_large_bit_in_pml4e_is_a_misconfiguration():
    """Bit 7 of an EPT PML4E is reserved."""
    ept = _ept()
    ept.map(0x5000, 0x9000)
    pml4e = ept.entries(0x5000)[0]
    ept.memory.write_u64(pml4e.address, pml4e.entry | EPTE.LARGE)

    walk = _walk(ept, 0x5000)

    assert walk.result.reason == "bit réservé" and walk.memory_references == 1


@pytest.mark.parametrize("size", [MiB2, GiB])
def test_misaligned_large_page_is_a_misconfiguration(size):
    """A large-page address with bits below the page size set hits reserved bits."""
    ept = _ept()
    ept.map(GiB, 0x40000000 + 0x1000, size=size, allow_misconfig=True)

    walk = _walk(ept, GiB)

    assert walk.result.reason == "bit réservé"


def test_misconfiguration_wins_over_permission():
    """A misconfigured leaf is reported as exit 49 even for an access it would forbid."""
    ept = _ept()
    ept.map(0x5000, 0x9000, memory_type=7, write=False, allow_misconfig=True)

    walk = _walk(ept, 0x5000, EPTAccess.WRITE)

    assert walk.result.exit_reason == 49


def test_exit_reasons_are_48_and_49():
    """Violations are exit 48, misconfigurations exit 49."""
    assert EPTViolation.exit_reason == 48 and EPTMisconfiguration.exit_reason == 49


def test_accessed_flags_untouched_without_ad_enabled():
    """Without EPTP bit 6 a walk writes nothing."""
    ept = _ept()
    ept.map(0x5000, 0x9000)
    before = ept.memory.writes

    _walk(ept, 0x5000, EPTAccess.WRITE)

    assert ept.memory.writes == before
    assert all(not ref.entry & (EPTE.ACCESSED | EPTE.DIRTY) for ref in ept.entries(0x5000))


def test_read_sets_accessed_everywhere_and_dirty_nowhere():
    """With A/D enabled a read sets A in every entry used, D in none."""
    ept = _ept(accessed_dirty=True)
    ept.map(0x5000, 0x9000)

    _walk(ept, 0x5000)

    path = ept.entries(0x5000)
    assert all(ref.entry & EPTE.ACCESSED for ref in path)
    assert not any(ref.entry & EPTE.DIRTY for ref in path)


def test_write_sets_dirty_in_the_leaf_only():
    """With A/D enabled a write sets D in the leaf and nowhere else."""
    ept = _ept(accessed_dirty=True)
    ept.map(0x5000, 0x9000)

    _walk(ept, 0x5000, EPTAccess.WRITE)

    dirty = [bool(ref.entry & EPTE.DIRTY) for ref in ept.entries(0x5000)]
    assert dirty == [False, False, False, True]


def test_failed_walk_sets_no_flags():
    """A violation leaves A/D untouched."""
    ept = _ept(accessed_dirty=True)
    ept.map(0x5000, 0x9000, write=False)

    _walk(ept, 0x5000, EPTAccess.WRITE)

    assert not any(ref.entry & EPTE.ACCESSED for ref in ept.entries(0x5000))


def test_guest_paging_reads_count_as_writes_with_ad():
    """With A/D enabled, a read of a guest paging-structure entry is treated as a write."""
    ept = _ept(accessed_dirty=True)
    ept.map(0x5000, 0x9000, write=False)

    walk = _walk(ept, 0x5000, final=False)

    assert walk.access.write and walk.result.qualification & (R | W) == R | W


def test_map_refuses_overlaps_and_misalignment():
    """A second mapping over a page, or an unaligned large page, is a caller mistake."""
    ept = _ept()
    ept.map(0, 0, size=MiB2)

    with pytest.raises(VmkitError, match="overlaps"):
        ept.map(0x5000, 0x9000)
    with pytest.raises(VmkitError, match="aligned"):
        ept.map(MiB2 + 0x1000, 0, size=MiB2)


def test_map_refuses_misconfigurations_unless_asked():
    """Write-only, execute-only or a reserved type need allow_misconfig=True."""
    ept = _ept()

    for kwargs in ({"read": False}, {"read": False, "write": False}, {"memory_type": 2}):
        with pytest.raises(VmkitError, match="allow_misconfig"):
            ept.map(0x5000, 0x9000, **kwargs)


def test_unmap_frees_empty_tables():
    """Unmapping the only page gives back its PT, PD and PDPT frames."""
    ept = _ept()
    in_use = ept.memory.frames_in_use
    ept.map(0x5000, 0x9000)

    ept.unmap(0x5000)

    assert ept.memory.frames_in_use == in_use and ept.mappings() == []
    assert isinstance(_walk(ept, 0x5000).result, EPTViolation)


def test_protect_changes_leaf_permissions():
    """protect clears W; a write then violates, a read still translates."""
    ept = _ept()
    ept.map(0x5000, 0x9000)

    ept.protect(0x5000, write=False)

    assert not _walk(ept, 0x5000, EPTAccess.WRITE).ok and _walk(ept, 0x5000).ok


def test_mappings_lists_every_leaf_in_gpa_order():
    """mappings() reports each mapping with its size and permissions."""
    ept = _ept()
    ept.map(MiB2, 0, size=MiB2, execute=False)
    ept.map(0x5000, 0x9000)

    assert ept.mappings() == [
        EPTTranslation(0x5000, 0x9000, 4096, True, True, True),
        EPTTranslation(MiB2, 0, MiB2, True, True, False),
    ]


def test_gpa_beyond_48_bits_is_a_violation_on_a_4_level_ept():
    """A 4-level EPT translates 48 bits; a wider gpa (a guest's tables may hold one) is an EPT violation."""
    walk = _walk(_ept(), 1 << 48)

    assert isinstance(walk.result, EPTViolation) and walk.references == ()


qualifications = st.builds(
    EPTViolationQualification, st.booleans(), st.booleans(), st.booleans(), st.booleans(),
    st.booleans(), st.booleans(), st.just(True), st.booleans(),
) | st.builds(
    EPTViolationQualification, st.booleans(), st.booleans(), st.booleans(), st.booleans(),
    st.booleans(), st.booleans(), st.just(False), st.just(False),
)


@given(qualifications)
def test_qualification_round_trips(fields):
    """decode(encode(q)) is q for every valid qualification."""
    assert EPTViolationQualification.decode(fields.encode()) == fields


@settings(max_examples=50, deadline=None)
@given(st.sets(st.integers(0, (1 << 36) - 1), min_size=1, max_size=8),
       st.integers(0, 4095), st.data())
def test_mapped_pages_translate_to_hpa_plus_offset(vpns, offset, data):
    """Every mapped 4 KiB page translates gpa to hpa + offset."""
    ept = _ept()
    frames = {vpn: data.draw(st.integers(0, (1 << 40) - 1)) for vpn in sorted(vpns)}
    for vpn, pfn in frames.items():
        ept.map(vpn << 12, pfn << 12)

    for vpn, pfn in frames.items():
        assert _walk(ept, vpn << 12 | offset).result.hpa == pfn << 12 | offset


def test_walk_accepts_the_encoded_eptp():
    """ept_walk takes the EPTP as the VMCS holds it, an int, as well as a record."""
    ept = _ept()
    ept.map(0x5000, 0x9000)

    walk = ept_walk(ept.memory, ept.eptp.encode(), 0x5004, EPTAccess.READ)

    assert walk.result.hpa == 0x9004


def test_table_beyond_installed_memory_reads_all_ones():
    """A table past installed memory reads all ones: a 1 GiB leaf with reserved bits set."""
    ept = _ept()
    ept.map(0x5000, 0x9000)
    pml4e = ept.entries(0x5000)[0]
    ept.memory.write_u64(pml4e.address, 1 << 40 | 0b111)

    walk = _walk(ept, 0x5000)

    assert walk.references[1].entry == (1 << 64) - 1
    assert walk.result == EPTMisconfiguration(0x5000, "bit réservé")
