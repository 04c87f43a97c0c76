"""vmkit.memory.tlb: the TLB, its invalidations, the page-walk cache, the nested TLB."""

import pytest

from vmkit.core import VmkitError
from vmkit.memory.tlb import (
    PAGE_2M,
    PAGE_4K,
    NestedTLB,
    PageWalkCache,
    TLB,
    TLBEntry,
    TLBStats,
    references_per_miss,
)


def entry(gva, *, vpid=1, size=PAGE_4K, pa=None, global_=False, eptp=None):
    """A read-write user entry mapping the page of ``gva`` (to ``pa``, else to gva's page)."""
    base = (gva if pa is None else pa) & ~(size - 1)
    return TLBEntry(vpid=vpid, vpn=gva >> (size.bit_length() - 1), page_size=size, pfn_base=base,
                    writable=True, user=True, executable=False, global_=global_, eptp=eptp)


def test_miss_then_hit_after_insert():
    """A lookup misses on an empty TLB and hits once the walk's result is inserted."""
    tlb = TLB()
    first = tlb.lookup(1, 0x1234)
    e = entry(0x1234, pa=0x9000)

    tlb.insert(e)

    assert first is None and tlb.lookup(1, 0x1234) == e
    assert e.translate(0x1234) == 0x9234


def test_lru_evicts_the_least_recently_used_way_of_a_full_set():
    """In a full set the victim is the way used longest ago, not the oldest inserted."""
    tlb = TLB(entries=4, ways=2)           # 2 sets: even vpns share set 0
    a, b, c = entry(0x0000), entry(0x2000), entry(0x4000)
    tlb.insert(a)
    tlb.insert(b)
    tlb.lookup(1, 0x0000)                  # a is now the most recent

    tlb.insert(c)

    assert tlb.entries() == [a, c] and tlb.stats.evictions == 1
    assert tlb.lookup(1, 0x2000) is None


def test_vpid_tags_keep_guests_apart_without_a_flush():
    """An entry of VPID 1 is not a hit for VPID 2, so a VM switch needs no flush."""
    tlb = TLB()
    tlb.insert(entry(0x5000, vpid=1))

    assert tlb.lookup(2, 0x5000) is None
    assert tlb.lookup(1, 0x5000) is not None and tlb.stats.flushes == 0


def test_flush_nonglobal_keeps_global_entries_and_other_vpids():
    """MOV to CR3 drops this VPID's non-global entries only."""
    tlb = TLB()
    kernel, user, other = entry(0x1000, global_=True), entry(0x2000), entry(0x2000, vpid=2)
    for e in (kernel, user, other):
        tlb.insert(e)

    dropped = tlb.flush_nonglobal(1)

    assert dropped == 1 and set(tlb.entries()) == {kernel, other}


def test_invlpg_removes_one_page():
    """INVLPG drops the page holding the address, even a global one, and nothing else."""
    tlb = TLB()
    tlb.insert(entry(0x1000, global_=True))
    tlb.insert(entry(0x2000))

    tlb.invlpg(1, 0x1fff)

    assert tlb.lookup(1, 0x1000) is None and tlb.lookup(1, 0x2000) is not None


def loaded_tlb():
    """VPID 0 (host), VPID 1 (one global, two not), VPID 2 (one)."""
    tlb = TLB()
    for e in (entry(0x1000, vpid=0), entry(0x1000, global_=True), entry(0x2000),
              entry(0x3000), entry(0x2000, vpid=2)):
        tlb.insert(e)
    return tlb


def test_invvpid_type_0_drops_one_address_of_one_vpid():
    """INVVPID individual-address drops one page of one VPID."""
    tlb = loaded_tlb()

    assert tlb.invvpid(0, vpid=1, gva=0x2000) == 1
    assert tlb.lookup(1, 0x2000) is None and tlb.lookup(2, 0x2000) is not None


def test_invvpid_type_1_drops_every_entry_of_one_vpid():
    """INVVPID single-context drops all of one VPID's entries, global ones too."""
    tlb = loaded_tlb()

    assert tlb.invvpid(1, vpid=1) == 3
    assert sorted(e.vpid for e in tlb.entries()) == [0, 2]


def test_invvpid_type_2_drops_every_vpid_but_the_host():
    """INVVPID all-context drops every VPID except 0, the VMM's."""
    tlb = loaded_tlb()

    assert tlb.invvpid(2) == 4
    assert [e.vpid for e in tlb.entries()] == [0]


def test_invvpid_type_3_keeps_globals():
    """INVVPID single-context-retaining-globals keeps that VPID's global entries."""
    tlb = loaded_tlb()

    assert tlb.invvpid(3, vpid=1) == 2
    assert [e for e in tlb.entries() if e.vpid == 1] == [entry(0x1000, global_=True)]


@pytest.mark.parametrize("args", [(4, 1), (0, 1), (0, None, 0x1000), (1, None), (1, 0)])
def test_invvpid_refuses_bad_types_and_missing_operands(args):
    """A bad type, a missing vpid or gva, or VPID 0 are caller mistakes."""
    with pytest.raises(VmkitError):
        TLB().invvpid(*args)


def test_invept_type_1_drops_one_eptp_only():
    """INVEPT single-context drops the entries of that EPTP and nothing else."""
    tlb = TLB()
    a, b = entry(0x1000, eptp=0xA000), entry(0x1000, vpid=2, eptp=0xB000)
    host = entry(0x1000, vpid=0)
    for e in (a, b, host):
        tlb.insert(e)

    assert tlb.invept(1, eptp=0xA000) == 1 and set(tlb.entries()) == {b, host}


def test_invept_type_2_drops_every_eptp_but_keeps_linear_mappings():
    """INVEPT global drops every EPT-derived entry; linear (host) mappings stay."""
    tlb = TLB()
    host = entry(0x1000, vpid=0)
    for e in (entry(0x1000, eptp=0xA000), entry(0x1000, vpid=2, eptp=0xB000), host):
        tlb.insert(e)

    assert tlb.invept(2) == 2 and tlb.entries() == [host]


@pytest.mark.parametrize("args", [(0,), (3,), (1,)])
def test_invept_refuses_bad_types_and_a_missing_eptp(args):
    """INVEPT takes types 1 and 2 only, and type 1 needs an eptp."""
    with pytest.raises(VmkitError):
        TLB().invept(*args)


def test_lookup_matches_the_eptp_tag():
    """A guest entry tagged with one EPTP is not a hit under another."""
    tlb = TLB()
    tlb.insert(entry(0x1000, eptp=0xA000))

    assert tlb.lookup(1, 0x1000, eptp=0xB000) is None
    assert tlb.lookup(1, 0x1000, eptp=0xA000) is not None


def test_a_2mib_entry_hits_for_any_gva_inside_it():
    """One 2 MiB entry serves every 4 KiB page of its range, and only those."""
    tlb = TLB()
    big = entry(0x40_0000, size=PAGE_2M, pa=0x8000_0000)
    tlb.insert(big)

    hits = [tlb.lookup(1, gva) for gva in (0x40_0000, 0x4a_b123, 0x5f_ffff)]

    assert hits == [big] * 3 and tlb.lookup(1, 0x60_0000) is None
    assert big.translate(0x4a_b123) == 0x800a_b123


def test_stats_count_hits_misses_and_the_hit_rate():
    """hit_rate is hits over lookups, and 0.0 before any lookup."""
    tlb = TLB()
    empty_rate = tlb.stats.hit_rate
    tlb.insert(entry(0x1000))
    for gva in (0x1000, 0x1008, 0x2000, 0x1010):
        tlb.lookup(1, gva)

    assert empty_rate == 0.0
    assert tlb.stats == TLBStats(hits=3, misses=1) and tlb.stats.hit_rate == 0.75


def test_page_walk_cache_returns_the_deepest_cached_level():
    """With PML4 and PDE entries cached, a lookup returns the PDE level and its page table."""
    pwc = PageWalkCache()
    gva = 0x7f12_3456_7000
    pwc.insert((1, None), 4, gva, 0x10_000)       # PML4 entry -> PDPT at 0x10000
    pwc.insert((1, None), 2, gva, 0x30_000)       # PDE -> page table at 0x30000

    assert pwc.lookup((1, None), gva) == (2, 0x30_000)
    assert pwc.lookup((1, None), gva ^ (1 << 30)) == (4, 0x10_000)   # other PDPT entry
    assert pwc.lookup((2, None), gva) is None and pwc.stats.hits == 2


def test_page_walk_cache_flush_drops_one_context_or_all():
    """flush(context) forgets that context only; flush() forgets everything."""
    pwc = PageWalkCache()
    pwc.insert("a", 3, 0x1000, 0x20_000)
    pwc.insert("b", 3, 0x1000, 0x40_000)

    assert pwc.flush("a") == 1 and pwc.lookup("a", 0x1000) is None
    assert pwc.lookup("b", 0x1000) == (3, 0x40_000)
    assert pwc.flush() == 1 and len(pwc) == 0


def test_page_walk_cache_evicts_lru_per_level():
    """Each level keeps at most its capacity, dropping the least recently used entry."""
    pwc = PageWalkCache({2: 2})
    for i in range(3):
        pwc.insert("ctx", 2, i << 21, 0x1000 * (i + 1))

    assert pwc.lookup("ctx", 0) is None and pwc.lookup("ctx", 2 << 21) == (2, 0x3000)
    assert pwc.stats.evictions == 1


def test_nested_tlb_caches_gpa_pages_per_eptp():
    """The nested TLB maps a gpa page to its hpa page under one EPTP, with LRU."""
    ntlb = NestedTLB(capacity=2)
    ntlb.insert(0xA000, 0x5000, 0x9_9000)
    ntlb.insert(0xA000, 0x6000, 0x8_8000)
    ntlb.lookup(0xA000, 0x5000)
    ntlb.insert(0xA000, 0x7000, 0x7_7000)          # evicts 0x6000, the LRU

    assert ntlb.lookup(0xA000, 0x5123) == 0x9_9123 and ntlb.lookup(0xB000, 0x5000) is None
    assert ntlb.lookup(0xA000, 0x6000) is None and ntlb.stats.evictions == 1
    assert ntlb.flush(0xA000) == 2 and len(ntlb) == 0


@pytest.mark.parametrize("n, m, expected", [(4, 4, 24), (5, 5, 35), (4, 5, 29),
                                            (5, 4, 29), (4, None, 4), (5, None, 5)])
def test_references_per_miss(n, m, expected):
    """The counted 2D walk gives (n+1)(m+1) - 1 references, and n natively."""
    assert references_per_miss(n, m) == expected


@pytest.mark.parametrize("n, m", [(3, 4), (4, 3), (2, None)])
def test_references_per_miss_refuses_other_paging_depths(n, m):
    """Only 4- and 5-level tables exist."""
    with pytest.raises(VmkitError):
        references_per_miss(n, m)


@pytest.mark.parametrize("entries, ways", [(0, 4), (10, 4), (48, 4), (64, 0)])
def test_constructor_validation(entries, ways):
    """entries must be a positive multiple of ways giving a power-of-two number of sets."""
    with pytest.raises(VmkitError):
        TLB(entries, ways)


def test_entries_must_be_aligned_and_sized():
    """A TLBEntry with an odd page size or a misaligned base is refused."""
    with pytest.raises(VmkitError):
        TLBEntry(1, 0, 8192, 0, True, True, True, False)
    with pytest.raises(VmkitError):
        TLBEntry(1, 0, PAGE_2M, 0x1000, True, True, True, False)


def run_workload():
    """A fixed mix of inserts, lookups and flushes on a small TLB."""
    tlb = TLB(entries=8, ways=2)
    for i in range(40):
        gva = (i * 7 % 13) << 12
        if tlb.lookup(1 + i % 2, gva) is None:
            tlb.insert(entry(gva, vpid=1 + i % 2))
        if i % 17 == 16:
            tlb.flush_nonglobal(1)
    return tlb


def test_same_operations_give_the_same_stats_and_contents():
    """Two runs of the same operations end in identical stats and entries (no randomness)."""
    a, b = run_workload(), run_workload()

    assert a.stats == b.stats and a.entries() == b.entries() and len(a) == len(b)
