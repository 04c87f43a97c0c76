"""Translation caches as a CPU has them: the TLB, the page-walk cache, the nested TLB.

Pure data structures: nothing here walks a page table. A walker (or a notebook
cell) looks a translation up, walks on a miss, and inserts what the walk found.
Every structure is deterministic (LRU replacement, no randomness) and counts
hits, misses, flushes and evictions in a ``TLBStats``.

Sources:

- Intel SDM Vol. 3A §4.10 "Caching translation information": the TLB (§4.10.2),
  the paging-structure caches (§4.10.3: PML4, PDPTE and PDE caches, which let a
  walk skip its upper references), and invalidation (§4.10.4: MOV to CR3
  without PCID flushes every non-global entry; INVLPG flushes one page, global
  or not).
- Intel SDM Vol. 3C §28.3 "Caching translation information" under VMX: entries
  tagged with a VPID (so VM entry and VM exit need no flush; VPID 0 is the
  VMM's own) and, for guests under EPT, with the EPTP. INVEPT types 1
  single-context and 2 global; INVVPID types 0 individual-address, 1
  single-context, 2 all-context, 3 single-context-retaining-globals.
- Bhargava, Serebrin, Spadini, Manne, "Accelerating Two-Dimensional Page Walks
  for Virtualized Systems", ASPLOS 2008: the page-walk cache extended to the
  nested dimension, and the nested TLB (NTLB) caching gpa -> hpa pages.

Taught in course/02_memory/03_tlb_performance.ipynb.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from vmkit.core import VmkitError, expect_int

PAGE_4K = 1 << 12
PAGE_2M = 1 << 21
PAGE_1G = 1 << 30
PAGE_SIZES = (PAGE_4K, PAGE_2M, PAGE_1G)   # the order lookup() tries them in
_SHIFT = {PAGE_4K: 12, PAGE_2M: 21, PAGE_1G: 30}

VPID_MAX = 0xFFFF   # the VPID is a 16-bit VMCS field (encoding 0x0000)
HOST_VPID = 0       # VPID 0 tags the VMM's own translations

INVVPID_INDIVIDUAL_ADDRESS = 0
INVVPID_SINGLE_CONTEXT = 1
INVVPID_ALL_CONTEXT = 2
INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS = 3
INVEPT_SINGLE_CONTEXT = 1
INVEPT_GLOBAL = 2


def _expect_vpid(vpid) -> int:
    return expect_int(vpid, "vpid", maximum=VPID_MAX)


@dataclass(frozen=True)
class TLBEntry:
    """One cached translation: a ``page_size`` page at ``pfn_base``, tagged by VPID and EPTP."""

    vpid: int
    vpn: int            # gva >> 12 for 4 KiB, >> 21 for 2 MiB, >> 30 for 1 GiB
    page_size: int
    pfn_base: int       # the physical base address of the page (hpa under EPT)
    writable: bool
    user: bool
    executable: bool
    global_: bool       # the G bit: survives MOV to CR3 (SDM Vol. 3A §4.10.2.4)
    eptp: int | None = None   # None for linear mappings (host, or a guest without EPT)

    def __post_init__(self):
        _expect_vpid(self.vpid)
        expect_int(self.vpn, "vpn")
        if self.page_size not in PAGE_SIZES:
            raise VmkitError(f"page_size must be one of {PAGE_SIZES}, not {self.page_size!r}")
        expect_int(self.pfn_base, "pfn_base")
        if self.pfn_base % self.page_size:
            raise VmkitError(
                f"pfn_base {self.pfn_base:#x} must be aligned to the page size {self.page_size:#x}"
            )

    def translate(self, gva: int) -> int:
        """The physical address of ``gva`` through this entry: page base plus offset."""
        return self.pfn_base | (gva & (self.page_size - 1))


@dataclass
class TLBStats:
    """What a cache has seen: lookups that hit or missed, invalidations, capacity evictions."""

    hits: int = 0
    misses: int = 0
    flushes: int = 0      # invalidation operations, however many entries each dropped
    evictions: int = 0    # entries pushed out by LRU to make room

    @property
    def hit_rate(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class TLB:
    """A set-associative, VPID- and EPTP-tagged TLB with LRU replacement in each set.

    Deliberately simple: a real core has one array per page size (and split
    instruction/data TLBs). Here ONE array holds all sizes; a 2 MiB or 1 GiB
    entry is indexed by its own vpn (gva >> 21, gva >> 30), so set index =
    vpn % sets for every size, and a large page competes with 4 KiB ones for
    the ways of its set.
    """

    def __init__(self, entries: int = 64, ways: int = 4):
        expect_int(entries, "entries", minimum=1)
        expect_int(ways, "ways", minimum=1)
        if entries % ways:
            raise VmkitError(f"entries ({entries}) must be a multiple of ways ({ways})")
        sets = entries // ways
        if sets & (sets - 1):
            raise VmkitError(f"entries // ways must be a power of two, not {sets}")
        self.sets = sets
        self.ways = ways
        self.stats = TLBStats()
        # _slots[set][way] is an entry or None; _used[set][way] its last-use tick (LRU).
        self._slots: list[list[TLBEntry | None]] = [[None] * ways for _ in range(sets)]
        self._used: list[list[int]] = [[0] * ways for _ in range(sets)]
        self._tick = 0

    def __len__(self) -> int:
        return sum(entry is not None for row in self._slots for entry in row)

    def entries(self) -> list[TLBEntry]:
        """Every valid entry, set by set and way by way (set = entry.vpn % sets)."""
        return [entry for row in self._slots for entry in row if entry is not None]

    def _touch(self, s: int, way: int) -> None:
        self._tick += 1
        self._used[s][way] = self._tick

    def lookup(self, vpid: int, gva: int, *, eptp: int | None = None) -> TLBEntry | None:
        """The entry translating ``gva`` for this VPID (and EPTP), trying 4 KiB, 2 MiB, 1 GiB."""
        _expect_vpid(vpid)
        expect_int(gva, "gva")
        for size in PAGE_SIZES:
            vpn = gva >> _SHIFT[size]
            s = vpn % self.sets
            for way, entry in enumerate(self._slots[s]):
                if (entry is not None and entry.vpn == vpn and entry.page_size == size
                        and entry.vpid == vpid and entry.eptp == eptp):
                    self._touch(s, way)
                    self.stats.hits += 1
                    return entry
        self.stats.misses += 1
        return None

    def insert(self, entry: TLBEntry) -> None:
        """Cache ``entry``: replace the same page, else fill a free way, else evict the LRU way."""
        if not isinstance(entry, TLBEntry):
            raise VmkitError(f"insert() takes a TLBEntry, not {type(entry).__name__}")
        s = entry.vpn % self.sets
        row = self._slots[s]
        same = [w for w, e in enumerate(row) if e is not None and
                (e.vpid, e.eptp, e.page_size, e.vpn) ==
                (entry.vpid, entry.eptp, entry.page_size, entry.vpn)]
        free = [w for w, e in enumerate(row) if e is None]
        if same:
            way = same[0]
        elif free:
            way = free[0]
        else:
            way = min(range(self.ways), key=lambda w: self._used[s][w])
            self.stats.evictions += 1
        row[way] = entry
        self._touch(s, way)

    def _drop(self, doomed: Callable[[TLBEntry], bool]) -> int:
        """Invalidate every entry ``doomed`` accepts; one flush in the stats."""
        self.stats.flushes += 1
        dropped = 0
        for row in self._slots:
            for way, entry in enumerate(row):
                if entry is not None and doomed(entry):
                    row[way] = None
                    dropped += 1
        return dropped

    def flush_all(self) -> int:
        """Invalidate every entry, of every VPID; returns how many were dropped."""
        return self._drop(lambda e: True)

    def flush_nonglobal(self, vpid: int) -> int:
        """MOV to CR3 without PCID: drop this VPID's non-global entries (SDM 3A §4.10.4.1)."""
        _expect_vpid(vpid)
        return self._drop(lambda e: e.vpid == vpid and not e.global_)

    def invlpg(self, vpid: int, gva: int) -> int:
        """INVLPG: drop this VPID's entries (global or not, any size) for the page of ``gva``."""
        _expect_vpid(vpid)
        expect_int(gva, "gva")
        return self._drop(lambda e: e.vpid == vpid and e.vpn == gva >> _SHIFT[e.page_size])

    def invvpid(self, type: int, vpid: int | None = None, gva: int | None = None) -> int:
        """INVVPID of ``type`` 0-3 (SDM 3C §28.3.3.3); returns how many entries were dropped."""
        if type == INVVPID_ALL_CONTEXT:
            # "all mappings tagged with all VPIDs except VPID 0000H"
            return self._drop(lambda e: e.vpid != HOST_VPID)
        if type not in (INVVPID_INDIVIDUAL_ADDRESS, INVVPID_SINGLE_CONTEXT,
                        INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS):
            raise VmkitError(f"INVVPID type must be 0, 1, 2 or 3, not {type!r}")
        if vpid is None:
            raise VmkitError(f"INVVPID type {type} needs a vpid")
        _expect_vpid(vpid)
        if vpid == HOST_VPID:
            # The instruction fails (VMfailValid) for VPID 0 in types 0, 1 and 3.
            raise VmkitError(f"INVVPID type {type} cannot target VPID 0, the VMM's own")
        if type == INVVPID_INDIVIDUAL_ADDRESS:
            if gva is None:
                raise VmkitError("INVVPID type 0 (individual-address) needs a gva")
            expect_int(gva, "gva")
            return self._drop(lambda e: e.vpid == vpid and e.vpn == gva >> _SHIFT[e.page_size])
        if type == INVVPID_SINGLE_CONTEXT:
            return self._drop(lambda e: e.vpid == vpid)
        return self._drop(lambda e: e.vpid == vpid and not e.global_)

    def invept(self, type: int, eptp: int | None = None) -> int:
        """INVEPT type 1 (entries of one EPTP) or 2 (entries of every EPTP); linear ones stay."""
        if type == INVEPT_GLOBAL:
            return self._drop(lambda e: e.eptp is not None)
        if type != INVEPT_SINGLE_CONTEXT:
            raise VmkitError(f"INVEPT takes type 1 (single-context) or 2 (global), not {type!r}")
        if eptp is None:
            raise VmkitError("INVEPT type 1 (single-context) needs an eptp")
        expect_int(eptp, "eptp")
        return self._drop(lambda e: e.eptp == eptp)


# Illustrative sizes for the paging-structure caches (SDM 3A §4.10.3 leaves them
# to the implementation); a level missing from the dict is not cached.
PWC_CAPACITY = {5: 2, 4: 2, 3: 4, 2: 32}


def _level_shift(level: int) -> int:
    """The lowest gva bit a level-``level`` table's index covers: 12 + 9 * (level - 1)."""
    return 12 + 9 * (level - 1)


class PageWalkCache:
    """Upper-level paging-structure entries: (context, level, gva bits above it) -> next table.

    An entry at level L (L = 4 is the PML4, 3 the PDPT, 2 the PD) caches the
    entry read from the level-L table, keyed by gva >> (12 + 9 * (L - 1)), and
    gives the physical address of the level L-1 table. A hit at level L lets
    the walk start at that table: with an n-level walk it saves the n - L + 1
    references to levels n..L (a PDE-cache hit on 4-level paging leaves one
    reference, the PTE). Level 1 entries are the TLB's job, so L runs from 2.
    ``context`` is any hashable tag: a (vpid, eptp) pair for the guest
    dimension, or an eptp for the nested dimension (Bhargava et al.), where the
    address is a gpa.
    """

    def __init__(self, capacity: dict[int, int] | None = None):
        capacity = dict(PWC_CAPACITY if capacity is None else capacity)
        for level, size in capacity.items():
            expect_int(level, "level", minimum=2, maximum=5)
            expect_int(size, f"capacity of level {level}")
        self.capacity = capacity
        self.stats = TLBStats()
        self._levels: dict[int, OrderedDict[tuple, int]] = {
            level: OrderedDict() for level in sorted(capacity)
        }

    def __len__(self) -> int:
        return sum(len(cache) for cache in self._levels.values())

    def lookup(self, context: Hashable, gva: int, levels: int = 4) -> tuple[int, int] | None:
        """The deepest cached level for ``gva`` as (level, table_pa of level - 1), or None."""
        expect_int(gva, "gva")
        if levels not in (4, 5):
            raise VmkitError(f"levels must be 4 or 5 (paging modes), not {levels!r}")
        for level in range(2, levels + 1):
            cache = self._levels.get(level)
            key = (context, gva >> _level_shift(level))
            if cache is not None and key in cache:
                cache.move_to_end(key)
                self.stats.hits += 1
                return level, cache[key]
        self.stats.misses += 1
        return None

    def insert(self, context: Hashable, level: int, gva: int, table_pa: int) -> None:
        """Remember that at ``level`` the walk for ``gva`` leads to the table at ``table_pa``."""
        expect_int(level, "level", minimum=2, maximum=5)
        expect_int(gva, "gva")
        expect_int(table_pa, "table_pa")
        cache = self._levels.get(level)
        if cache is None or self.capacity[level] == 0:
            return
        key = (context, gva >> _level_shift(level))
        cache[key] = table_pa
        cache.move_to_end(key)
        if len(cache) > self.capacity[level]:
            cache.popitem(last=False)
            self.stats.evictions += 1

    def flush(self, context: Hashable | None = None) -> int:
        """Drop every entry, or only those of ``context``; returns how many were dropped."""
        self.stats.flushes += 1
        dropped = 0
        for cache in self._levels.values():
            doomed = [key for key in cache if context is None or key[0] == context]
            for key in doomed:
                del cache[key]
            dropped += len(doomed)
        return dropped


class NestedTLB:
    """Bhargava et al.'s nested TLB: (eptp, gpa >> 12) -> hpa page, sparing 2D walks EPT walks."""

    def __init__(self, capacity: int = 16):
        self.capacity = expect_int(capacity, "capacity", minimum=1)
        self.stats = TLBStats()
        self._cache: OrderedDict[tuple[int, int], int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    def lookup(self, eptp: int, gpa: int) -> int | None:
        """The hpa ``gpa`` maps to under ``eptp`` (page base plus offset), or None on a miss."""
        expect_int(gpa, "gpa")
        key = (eptp, gpa >> 12)
        if key not in self._cache:
            self.stats.misses += 1
            return None
        self._cache.move_to_end(key)
        self.stats.hits += 1
        return self._cache[key] | (gpa & (PAGE_4K - 1))

    def insert(self, eptp: int, gpa: int, hpa: int) -> None:
        """Remember that under ``eptp`` the 4 KiB page of ``gpa`` is the page of ``hpa``."""
        expect_int(eptp, "eptp")
        expect_int(gpa, "gpa")
        expect_int(hpa, "hpa")
        key = (eptp, gpa >> 12)
        self._cache[key] = hpa & ~(PAGE_4K - 1)
        self._cache.move_to_end(key)
        if len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
            self.stats.evictions += 1

    def flush(self, eptp: int | None = None) -> int:
        """Drop every entry, or only those of ``eptp`` (as INVEPT would); returns how many."""
        self.stats.flushes += 1
        doomed = [key for key in self._cache if eptp is None or key[0] == eptp]
        for key in doomed:
            del self._cache[key]
        return len(doomed)


def references_per_miss(guest_levels: int, ept_levels: int | None) -> int:
    """Memory references a TLB miss can cost: native n, or (n+1)(m+1) - 1 under EPT.

    Counted over the 2D grid rather than by the formula, so a notebook can show
    the two agree: the guest's CR3, each guest entry's next-table pointer and
    the final gpa are guest-physical, each needs an m-step EPT walk, and the n
    guest entries are read themselves. The data access is not counted.
    """
    if type(guest_levels) is not int or guest_levels not in (4, 5):
        raise VmkitError(f"guest_levels must be 4 or 5, not {guest_levels!r}")
    if ept_levels is not None and (type(ept_levels) is not int or ept_levels not in (4, 5)):
        raise VmkitError(f"ept_levels must be 4, 5 or None (native), not {ept_levels!r}")
    references = 0
    for step in range(guest_levels + 1):      # n guest tables, then the final gpa
        if ept_levels is not None:
            references += ept_levels          # EPT walk for this gpa
        if step < guest_levels:
            references += 1                   # read the guest entry itself
    return references
