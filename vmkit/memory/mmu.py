"""A memory-management unit with its caches: what each access really costs in references.

The walkers (``paging.walk``, ``nested.walk_2d``) always do the whole walk and
record every entry. A processor does less: a TLB hit costs nothing; on a miss,
the page-walk cache (PWC) supplies upper-level entries, and a nested TLB
(NTLB) supplies the guest-physical to host-physical translation of a guest
table, skipping its EPT walk. The MMU replays each walk record through those
caches and counts the references the hardware would still make.

Deliberately simple: one TLB for all page sizes, the PWC keyed by address
prefix per level, LRU everywhere, no prefetch; a reference is a reference,
whatever the cache level that serves it. Source: Intel SDM Vol. 3A §4.10
(TLBs and paging-structure caches); Bhargava et al., "Accelerating
Two-Dimensional Page Walks for Virtualized Systems", ASPLOS 2008 (the 2D PWC
and the nested TLB). Taught in course/02_memory/03_tlb_performance.ipynb.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from vmkit.core import VmkitError, expect_int
from vmkit.memory.nested import Walk2D
from vmkit.memory.paging import READ, Access, AddressSpace, Walk, walk
from vmkit.memory.physical import PhysicalMemory
from vmkit.memory.tlb import NestedTLB, PageWalkCache, TLB, TLBEntry

FRAME = 4096


@dataclass(frozen=True)
class MMUConfig:
    """The caches of one MMU."""

    tlb_entries: int = 64
    tlb_ways: int = 4
    page_walk_cache: bool = False
    nested_tlb: bool = False
    nested_tlb_entries: int = 16


@dataclass
class MMUStats:
    accesses: int = 0
    tlb_hits: int = 0
    walks: int = 0
    references: int = 0        # what the hardware reads, caches considered
    uncached_references: int = 0  # what the walks read in full

    @property
    def tlb_hit_rate(self) -> float:
        return self.tlb_hits / self.accesses if self.accesses else 0.0

    @property
    def references_per_access(self) -> float:
        return self.references / self.accesses if self.accesses else 0.0

    @property
    def references_per_miss(self) -> float:
        return self.references / self.walks if self.walks else 0.0


class MMU:
    """Translate accesses with ``walker`` (a gva -> Walk or Walk2D function) behind a TLB and caches."""

    def __init__(self, walker: Callable[[int, Access], Walk | Walk2D], config: MMUConfig = MMUConfig(),
                 *, vpid: int = 1, levels: int = 4, ept_levels: int = 4, eptp: int = 0):
        if not isinstance(config, MMUConfig):
            raise VmkitError(f"config must be an MMUConfig, not {config!r}")
        self.walker, self.config = walker, config
        self.vpid, self.levels, self.ept_levels, self.eptp = vpid, levels, ept_levels, eptp
        self.tlb = TLB(config.tlb_entries, config.tlb_ways)
        self.pwc = PageWalkCache() if config.page_walk_cache else None
        self.ept_pwc = PageWalkCache() if config.page_walk_cache else None
        self.ntlb = NestedTLB(config.nested_tlb_entries) if config.nested_tlb else None
        self.stats = MMUStats()

    def access(self, gva: int, access: Access = READ) -> int | None:
        """Translate one access; return the physical address, or None when the walk faults."""
        expect_int(gva, "gva")
        self.stats.accesses += 1
        hit = self.tlb.lookup(self.vpid, gva)
        if hit is not None and _allows(hit, access):
            self.stats.tlb_hits += 1
            return hit.pfn_base + gva % hit.page_size
        # a miss, or rights the cached entry does not give: the processor walks again
        walk = self.walker(gva, access)
        self.stats.walks += 1
        self.stats.uncached_references += walk.memory_references
        self.stats.references += (self._cost_2d(walk) if isinstance(walk, Walk2D)
                                  else self._cost_native(walk))
        if not walk.ok:
            return None
        pa, size = self._leaf(walk)
        base = pa - pa % size
        rights = walk.result.guest if isinstance(walk, Walk2D) else walk.result
        self.tlb.insert(TLBEntry(self.vpid, gva // size, size, base, rights.writable, rights.user,
                                 rights.executable, False))
        return pa

    def run(self, accesses: Iterable[int]) -> MMUStats:
        for gva in accesses:
            self.access(gva)
        return self.stats

    @staticmethod
    def _leaf(walk: Walk | Walk2D) -> tuple[int, int]:
        if isinstance(walk, Walk2D):
            ept_size = walk.steps[-1].ept.result.page_size
            return walk.result.hpa, min(walk.result.guest.page_size, ept_size)
        return walk.result.pa, walk.result.page_size

    def _skip_guest(self, gva: int) -> int:
        """How many guest levels the PWC lets the walk skip (0 without a hit)."""
        if self.pwc is None:
            return 0
        hit = self.pwc.lookup(self.vpid, gva, self.levels)
        return 0 if hit is None else self.levels - hit[0] + 1

    def _remember_guest(self, gva: int, references) -> None:
        if self.pwc is None:
            return
        for ref, below in zip(references, references[1:]):
            if ref.level >= 2:
                self.pwc.insert(self.vpid, ref.level, gva, below.table)

    def _cost_native(self, walk: Walk) -> int:
        refs = walk.references
        cost = len(refs) - min(self._skip_guest(walk.gva), max(len(refs) - 1, 0))
        self._remember_guest(walk.gva, refs)
        return cost

    def _cost_ept(self, gpa: int, ept_walk) -> int:
        """References for one EPT walk, given the nested TLB and the EPT side of the PWC."""
        refs = ept_walk.references
        if self.ntlb is not None:
            if self.ntlb.lookup(self.eptp, gpa) is not None:
                return 0
            if ept_walk.ok:
                self.ntlb.insert(self.eptp, gpa, ept_walk.result.hpa)
        cost = len(refs)
        if self.ept_pwc is not None:
            hit = self.ept_pwc.lookup(self.eptp, gpa, self.ept_levels)
            if hit is not None:
                cost = min(cost, hit[0] - 1)
            for ref, below in zip(refs, refs[1:]):
                if ref.level >= 2:
                    self.ept_pwc.insert(self.eptp, ref.level, gpa, below.table)
        return cost

    def _cost_2d(self, walk: Walk2D) -> int:
        skip = self._skip_guest(walk.gva)
        cost = 0
        for i, step in enumerate(walk.steps):
            if step.guest is not None and i < min(skip, len(walk.steps) - 1):
                continue  # the PWC gave this guest entry (already translated): no reference
            cost += self._cost_ept(step.gpa, step.ept) + (step.guest is not None)
        self._remember_guest(walk.gva, [s.guest for s in walk.steps if s.guest is not None])
        return cost


def _allows(entry: TLBEntry, access: Access) -> bool:
    """A cached translation serves an access only within the rights the walk found."""
    return ((not access.write or entry.writable) and (not access.user or entry.user)
            and (not access.fetch or entry.executable))


def random_accesses(seed: int, base: int, pages: int, count: int, page_size: int = FRAME) -> list[int]:
    """``count`` addresses drawn uniformly over ``pages`` pages from ``base`` (seeded)."""
    expect_int(pages, "pages", minimum=1)
    expect_int(count, "count")
    rng = random.Random(seed)
    return [base + rng.randrange(pages * page_size) for _ in range(count)]


BASE = 0x4000_0000          # first gva of the working set (aligned to 2 MiB and 1 GiB)
SMALL, LARGE = 4096, 2 << 20
_MEMORY = 1 << 24           # 16 MiB: page tables at the bottom, data frames above them
_LARGE_DATA = 1 << 23       # 2 MiB data pages start at 8 MiB, clear of the tables


def simulate_tlb(pages: int, page_size_kib: int = 4, tlb_entries: int = 64, *, tlb_ways: int = 4,
                 seed: int = 0, accesses: int = 1000) -> tuple[float, float]:
    """TLB hit rate and references per access for random reads over ``pages`` x 4 KiB.

    The working set is always ``pages * 4 KiB`` at ``BASE``, read at the same
    seeded addresses; ``page_size_kib`` (4 or 2048) only changes how the OS maps
    it: 4 KiB pages, or as many 2 MiB pages as cover it.
    """
    if page_size_kib not in (4, 2048):
        raise VmkitError(f"page_size_kib must be 4 or 2048, not {page_size_kib!r}")
    size = page_size_kib * 1024
    memory = PhysicalMemory(_MEMORY)
    space = AddressSpace(memory)
    for i in range(-(-pages * SMALL // size)):
        data = memory.alloc_frame() * SMALL if size == SMALL else _LARGE_DATA + i * LARGE
        space.map(BASE + i * size, data, size=size)
    mmu = MMU(lambda gva, access: walk(memory, space.cr3, gva, access),
              MMUConfig(tlb_entries=tlb_entries, tlb_ways=tlb_ways))
    stats = mmu.run(random_accesses(seed, BASE, pages, accesses))
    return stats.tlb_hit_rate, stats.references_per_access


def sweep_tlb(simulate: Callable[[int, int, int], tuple[float, float]], working_sets: Iterable[int],
              tlb_sizes: Iterable[int], page_sizes_kib: Iterable[int] = (4,)) -> list[dict]:
    """One record per (page size, TLB size, working set): what ``simulate`` returned, named."""
    rows = []
    for page_size_kib in page_sizes_kib:
        for tlb_entries in tlb_sizes:
            for pages in working_sets:
                hit_rate, references = simulate(pages, page_size_kib, tlb_entries)
                rows.append({"pages": pages, "page_size_kib": page_size_kib,
                             "tlb_entries": tlb_entries, "hit_rate": hit_rate,
                             "references_per_access": references})
    return rows
