"""Shadow paging against nested paging: the same guest, the same workload, two VMMs.

Without EPT, a VMM cannot let the processor walk the guest's page tables: they
produce guest-physical addresses. It keeps instead a *shadow* page table per
guest CR3, in host memory and in the real x86-64 format, mapping gva -> hpa
directly, and loads the shadow's root into the real CR3. A TLB miss then costs
a native walk (4 references). The price is synchronisation: the VMM
write-protects the frames holding guest page tables, so every guest PTE write
traps (#PF, exit 0) and is emulated; every guest MOV to CR3 exits (exit 28,
CR3-load exiting) so that the VMM can switch shadows; a gva the guest maps but
the shadow does not yet map takes a "hidden" page fault (exit, then a shadow
fill); a true guest fault exits too before the VMM injects it. With nested
paging (EPT) none of these exits happen, but a TLB miss is a 2D walk
(24 references for 4 + 4 levels, see ``nested.py``).

``ShadowPager`` and ``NestedPager`` take the same guest operations
(``guest_map``, ``guest_unmap``, ``guest_protect``, ``guest_write_cr3``,
``access``) and count exits and walk references; ``compare`` replays one
workload on both and estimates the time each takes. ``mmu_heavy`` and
``tlb_heavy`` generate the two workloads of the trade-off.

Sources: VMware, "Performance Evaluation of Intel EPT Hardware Assist" (2009):
EPT is up to 48% faster on MMU-intensive benchmarks (up to 600% on
microbenchmarks) than shadow paging; VMware vSphere documentation,
"Hardware-assisted MMU virtualization": hardware assist removes the cost of
keeping shadow tables in sync, but the TLB miss latency is significantly
higher, so workloads with little page-table activity gain little; Intel SDM
Vol. 3C ch. 32 (ch. 31/32 in the 2016 edition), VMM considerations for
"shadow page tables"; Intel SDM Vol. 3C, primary processor-based
VM-execution controls (bit 15, CR3-load exiting).

Deliberately simple: 4 KiB pages only; every guest paging-structure entry
that changes in a shadowed address space traps, one exit each, and the VMM
updates the shadow entry at once (KVM's shadow MMU does the same for PTE
writes it emulates); the guest's INVLPG that follows a change is not counted
as an exit; guest accessed/dirty bits are not emulated under shadow paging;
the shadow cache is never pruned. Taught in
course/02_memory/03_tlb_performance.ipynb.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from vmkit.core import VmkitError, expect_int
from vmkit.cpu.vmx import ExitReason
from vmkit.memory.ept import EPT
from vmkit.memory.nested import GuestPhysicalMemory, walk_2d
from vmkit.memory.paging import (
    ADDRESS_MASK, PTE, READ, WRITE, Access, AddressSpace, GeneralProtection, PageFault, walk,
)
from vmkit.memory.physical import FRAME, PhysicalMemory
from vmkit.memory.tlb import TLB, TLBEntry, TLBStats

GVA = int
GPA = int
HPA = int

EXIT_CYCLES = 1_500       # VM exit + entry round trip with a simple handler: 1,000-2,000 cycles
REFERENCE_CYCLES = 100    # one page-walk reference that misses the caches: an order of magnitude
DATA_FRAMES = 1024        # guest frames the workloads map pages to (gpa 0 .. 4 MiB)
GUEST_VPID = 1            # the guest's VPID in the TLB (0 is the VMM's own)


class Exit(NamedTuple):
    """One VM exit a guest operation caused: the basic reason and what happened."""

    reason: ExitReason
    what: str


@dataclass
class PagerStats:
    """What a pager has done since its counters were last reset."""

    walks: int = 0              # page walks made on TLB misses (hardware walks only)
    walk_references: int = 0    # paging-structure entries those walks read
    guest_pte_writes: int = 0   # guest paging-structure entries the guest changed
    hidden_faults: int = 0      # shadow misses the VMM filled (shadow paging only)
    guest_faults: int = 0       # true guest #PF (or #GP) delivered to the guest


@dataclass(frozen=True)
class AccessRecord:
    """One guest access: the hpa (or the fault the guest gets), and what it cost."""

    gva: GVA
    access: Access
    hpa: HPA | None
    fault: PageFault | GeneralProtection | None
    tlb_hit: bool
    references: int             # walk references this access made
    exits: tuple[Exit, ...]


class Guest:
    """A VM's guest-physical memory and its processes' page tables, as the guest OS built them.

    ``DATA_FRAMES`` data frames are allocated first, so data frame k is at gpa
    ``k * FRAME`` whatever the guest does later; the page tables come after.
    The EPT doubles as the VMM's gpa -> hpa map (its "physical-to-machine"
    table): under shadow paging the processor never walks it.
    """

    def __init__(self, processes: int = 1, *, host_size: int = 1 << 24,
                 guest_size: int = 1 << 23):
        expect_int(processes, "processes", minimum=1)
        self.host = PhysicalMemory(host_size, name="host memory")
        self.ept = EPT(self.host)
        self.memory = GuestPhysicalMemory(self.host, self.ept, guest_size)
        for _ in range(DATA_FRAMES):
            self.memory.alloc_frame()
        self.spaces: dict[int, AddressSpace] = {}
        self.cr3s = [self.new_space() for _ in range(processes)]

    def new_space(self) -> GPA:
        """A new, empty guest address space; returns its CR3 (a gpa)."""
        space = AddressSpace(self.memory)
        self.spaces[space.cr3] = space
        return space.cr3

    def space(self, cr3: GPA) -> AddressSpace:
        """The guest address space whose root is at ``cr3``."""
        if cr3 not in self.spaces:
            raise VmkitError(f"no guest address space has CR3 {cr3:#x}; use Guest.new_space()")
        return self.spaces[cr3]

    def hpa(self, gpa: GPA) -> HPA:
        """The VMM's gpa -> hpa map (its bookkeeping, not a memory reference)."""
        path = self.ept.entries(gpa & ~(FRAME - 1))
        if not path or not path[-1].entry & 0b111:  # R/W/X all clear: not present
            raise VmkitError(f"gpa {gpa:#x} has no host backing: the VMM never allocated it")
        leaf = path[-1]
        return (leaf.entry & ADDRESS_MASK) | (gpa & (FRAME - 1))


class _GuestView:
    """Guest-physical memory as the VMM reads it in software: through its map, uncounted."""

    def __init__(self, guest: Guest):
        self.guest, self.size = guest, guest.memory.size

    def read_u64(self, gpa: GPA) -> int:
        return int.from_bytes(self.guest.memory.read(gpa, 8), "little")

    def write_u64(self, gpa: GPA, value: int) -> None:   # never called: no A/D update
        raise AssertionError("the VMM's software walk does not write guest memory")


class Pager:
    """What both pagers share: the guest operations, the TLB, the exit trace, the counters."""

    def __init__(self, guest: Guest, tlb: TLB | None = None, *, vpid: int = GUEST_VPID):
        if not isinstance(guest, Guest):
            raise VmkitError(f"a pager needs a Guest, not {type(guest).__name__}")
        self.guest, self.tlb, self.vpid = guest, tlb, vpid
        self.cr3: GPA = guest.cr3s[0]    # the guest's CR3, as the guest believes it
        self.exits: list[Exit] = []
        self.stats = PagerStats()

    def reset_counters(self) -> None:
        """Forget the exits and counters so far (after a warm-up), keeping every table."""
        self.exits.clear()
        self.stats = PagerStats()
        if self.tlb is not None:
            self.tlb.stats = TLBStats()

    def exits_by_reason(self) -> dict[ExitReason, int]:
        return dict(sorted(Counter(e.reason for e in self.exits).items()))

    @property
    def tlb_hits(self) -> int:
        return self.tlb.stats.hits if self.tlb is not None else 0

    @property
    def tlb_misses(self) -> int:
        return self.tlb.stats.misses if self.tlb is not None else self.stats.walks

    def _exit(self, reason: ExitReason, what: str) -> None:
        self.exits.append(Exit(reason, what))

    def guest_new_space(self) -> GPA:
        """The guest creates an empty address space (a zeroed PML4): no exit either way."""
        return self.guest.new_space()

    def guest_map(self, gva: GVA, gpa: GPA, *, writable: bool = True, user: bool = True,
                  executable: bool = True, cr3: GPA | None = None) -> list[Exit]:
        """The guest maps the page at ``gva`` to ``gpa`` in ``cr3`` (default: the current one)."""
        return self._guest_edit(gva, cr3, lambda space: space.map(
            gva, gpa, writable=writable, user=user, executable=executable))

    def guest_unmap(self, gva: GVA, *, cr3: GPA | None = None) -> list[Exit]:
        """The guest unmaps the page holding ``gva``."""
        return self._guest_edit(gva, cr3, lambda space: space.unmap(gva))

    def guest_protect(self, gva: GVA, *, writable: bool | None = None, user: bool | None = None,
                      executable: bool | None = None, cr3: GPA | None = None) -> list[Exit]:
        """The guest changes the rights of the page holding ``gva``."""
        return self._guest_edit(gva, cr3, lambda space: space.protect(
            gva, writable=writable, user=user, executable=executable))

    def _guest_edit(self, gva: GVA, cr3: GPA | None, edit: Callable[[AddressSpace], None]) -> list[Exit]:
        cr3 = self.cr3 if cr3 is None else cr3
        space = self.guest.space(cr3)
        before = {ref.address: ref.entry for ref in space.entries(gva)}
        edit(space)
        view = _GuestView(self.guest)
        changed = [address for address, entry in before.items() if view.read_u64(address) != entry]
        changed += [ref.address for ref in space.entries(gva) if ref.address not in before]
        self.stats.guest_pte_writes += len(changed)
        start = len(self.exits)
        self._pte_written(cr3, gva, changed)
        if cr3 == self.cr3 and self.tlb is not None:
            self.tlb.invlpg(self.vpid, gva)   # the guest's INVLPG after changing a mapping
        return self.exits[start:]

    def guest_write_cr3(self, cr3: GPA) -> list[Exit]:
        """The guest loads CR3 (a context switch); non-global TLB entries of its VPID go."""
        self.guest.space(cr3)
        start = len(self.exits)
        self._cr3_written(cr3)
        self.cr3 = cr3
        if self.tlb is not None:
            self.tlb.flush_nonglobal(self.vpid)
        return self.exits[start:]

    def access(self, gva: GVA, access: Access = READ) -> AccessRecord:
        """The guest touches ``gva``: TLB first, a walk on a miss, the fault if there is one."""
        if not isinstance(access, Access):
            raise VmkitError(f"access must be an Access (READ, WRITE, ...), not {access!r}")
        start, references = len(self.exits), self.stats.walk_references
        entry = self.tlb.lookup(self.vpid, gva, eptp=self._eptp()) if self.tlb is not None else None
        if entry is not None and _allows(entry, access):
            return AccessRecord(gva, access, entry.translate(gva), None, True, 0, ())
        outcome = self._translate(gva, access)
        references = self.stats.walk_references - references
        exits = tuple(self.exits[start:])
        if isinstance(outcome, (PageFault, GeneralProtection)):
            self.stats.guest_faults += 1
            return AccessRecord(gva, access, None, outcome, False, references, exits)
        hpa, writable, user, executable = outcome
        if self.tlb is not None:
            self.tlb.insert(TLBEntry(self.vpid, gva >> 12, FRAME, hpa & ~(FRAME - 1), writable,
                                     user, executable, False, self._eptp()))
        return AccessRecord(gva, access, hpa, None, False, references, exits)

    def _eptp(self) -> int | None:
        """The EPTP tagging this pager's TLB entries: None for linear (shadow) translations."""
        return None

    def _count(self, references: int) -> None:
        self.stats.walks += 1
        self.stats.walk_references += references

    def _pte_written(self, cr3: GPA, gva: GVA, addresses: list[GPA]) -> None:
        raise NotImplementedError

    def _cr3_written(self, cr3: GPA) -> None:
        raise NotImplementedError

    def _translate(self, gva: GVA, access: Access):
        raise NotImplementedError


def _allows(entry: TLBEntry, access: Access) -> bool:
    """A TLB hit serves the access only if the cached rights allow it; otherwise re-walk."""
    return ((entry.writable or not access.write) and (entry.user or not access.user)
            and (entry.executable or not access.fetch))


class ShadowPager(Pager):
    """A VMM without EPT: one shadow table (gva -> hpa, in host memory) per guest CR3."""

    def __init__(self, guest: Guest, tlb: TLB | None = None, *, vpid: int = GUEST_VPID):
        super().__init__(guest, tlb, vpid=vpid)
        self._view = _GuestView(guest)
        # Guest CR3 -> its shadow. A guest table is write-protected while its CR3 is here.
        self.shadows: dict[GPA, AddressSpace] = {self.cr3: AddressSpace(guest.host)}

    @property
    def shadow(self) -> AddressSpace:
        """The shadow table the processor walks now (its root is in the real CR3)."""
        return self.shadows[self.cr3]

    def _pte_written(self, cr3: GPA, gva: GVA, addresses: list[GPA]) -> None:
        if cr3 not in self.shadows:
            return    # not shadowed: its frames are not write-protected, the writes are free
        for address in addresses:
            self._exit(ExitReason.EXCEPTION_NMI,
                       f"#PF: write to write-protected guest PTE at gpa {address:#x}, emulated")
        self._sync(cr3, gva)

    def _sync(self, cr3: GPA, gva: GVA) -> None:
        """Make the shadow entry for ``gva`` say what the guest's tables say now."""
        shadow, page = self.shadows[cr3], gva & ~(FRAME - 1)
        if shadow.entries(page)[-1].entry & PTE.P:
            shadow.unmap(page)
        guest = walk(self._view, cr3, page, READ, set_accessed_dirty=False)
        if guest.ok:
            t = guest.result
            shadow.map(page, self.guest.hpa(t.pa), writable=t.writable, user=t.user,
                       executable=t.executable)

    def _cr3_written(self, cr3: GPA) -> None:
        cached = cr3 in self.shadows
        self._exit(ExitReason.CR_ACCESS, f"MOV to CR3 {cr3:#x}: "
                   + ("cached shadow loaded" if cached else "new shadow built"))
        if not cached:
            self.shadows[cr3] = AddressSpace(self.guest.host)   # empty, filled by hidden faults

    def _translate(self, gva: GVA, access: Access):
        hardware = walk(self.guest.host, self.shadow.cr3, gva, access)
        self._count(hardware.memory_references)
        if hardware.ok:
            t = hardware.result
            return t.pa, t.writable, t.user, t.executable
        # The shadow faulted: the VMM intercepts #PF and walks the guest's tables in software.
        guest = walk(self._view, self.cr3, gva, access, set_accessed_dirty=False)
        if not guest.ok:
            self._exit(ExitReason.EXCEPTION_NMI,
                       f"#PF at {gva:#x}: a true guest fault, reflected (injected) to the guest")
            return guest.result
        self._exit(ExitReason.EXCEPTION_NMI, f"#PF at {gva:#x}: hidden fault, shadow filled")
        self.stats.hidden_faults += 1
        self._sync(self.cr3, gva)
        hardware = walk(self.guest.host, self.shadow.cr3, gva, access)
        self._count(hardware.memory_references)
        assert hardware.ok, "a shadow filled from a good guest walk must translate"
        t = hardware.result
        return t.pa, t.writable, t.user, t.executable


class NestedPager(Pager):
    """A VMM with EPT: the guest owns its tables and CR3; a TLB miss is a 2D walk."""

    def _eptp(self) -> int:
        return self.guest.ept.eptp.encode()

    def _pte_written(self, cr3: GPA, gva: GVA, addresses: list[GPA]) -> None:
        pass    # guest tables are ordinary guest memory: writes to them do not exit

    def _cr3_written(self, cr3: GPA) -> None:
        pass    # CR3-load exiting is off under EPT

    def _translate(self, gva: GVA, access: Access):
        nested = walk_2d(self.guest.memory, self.cr3, gva, access)
        self._count(nested.memory_references)
        result = nested.result
        if isinstance(result, (PageFault, GeneralProtection)):
            return result    # delivered through the guest's IDT, no exit
        if not nested.ok:
            self._exit(result.exit_reason, f"EPT fault at gva {gva:#x}")
            raise VmkitError(f"the EPT does not map what the guest uses at {gva:#x}: {result}")
        t = result.guest
        return result.hpa, t.writable, t.user, t.executable


@dataclass(frozen=True)
class Map:
    """The guest maps ``gva`` to ``gpa`` in the current address space."""

    gva: GVA
    gpa: GPA
    writable: bool = True


@dataclass(frozen=True)
class Unmap:
    """The guest unmaps ``gva`` in the current address space."""

    gva: GVA


@dataclass(frozen=True)
class Protect:
    """The guest makes ``gva`` writable or read-only (copy-on-write after a fork)."""

    gva: GVA
    writable: bool


@dataclass(frozen=True)
class Switch:
    """The guest switches to process ``process`` (a MOV to CR3)."""

    process: int


@dataclass(frozen=True)
class Touch:
    """The guest reads (or writes) ``gva``."""

    gva: GVA
    write: bool = False


Op = Map | Unmap | Protect | Switch | Touch


@dataclass(frozen=True)
class Workload:
    """Operations to replay: ``warmup`` (not measured) then ``ops``, over ``processes``."""

    name: str
    processes: int
    warmup: tuple[Op, ...]
    ops: tuple[Op, ...]


def replay(pager: Pager, ops) -> None:
    """Apply each operation to ``pager``, in order."""
    for op in ops:
        if isinstance(op, Map):
            pager.guest_map(op.gva, op.gpa, writable=op.writable)
        elif isinstance(op, Unmap):
            pager.guest_unmap(op.gva)
        elif isinstance(op, Protect):
            pager.guest_protect(op.gva, writable=op.writable)
        elif isinstance(op, Switch):
            pager.guest_write_cr3(pager.guest.cr3s[op.process])
        elif isinstance(op, Touch):
            pager.access(op.gva, WRITE if op.write else READ)
        else:
            raise VmkitError(f"unknown operation {op!r}: use Map, Unmap, Protect, Switch, Touch")


BASE = 0x4000_0000   # the first gva the workloads map


def mmu_heavy(seed: int = 0, processes: int = 8, pages: int = 64, steps: int = 2000) -> Workload:
    """Fork/exec/mmap-like: many page-table updates and context switches, few accesses each."""
    rng = random.Random(seed)
    slots = [BASE + i * FRAME for i in range(2 * pages)]
    mapped: list[dict[GVA, bool]] = [{} for _ in range(processes)]   # gva -> writable
    warmup: list[Op] = []
    for p in range(processes):
        warmup.append(Switch(p))
        for gva in slots[:pages]:
            warmup += [Map(gva, rng.randrange(DATA_FRAMES) * FRAME), Touch(gva)]
            mapped[p][gva] = True
    ops: list[Op] = [Switch(0)]
    current = 0
    while len(ops) < steps:
        roll, pages_now = rng.random(), mapped[current]
        if not pages_now and (roll < 0.5 or roll >= 0.75):
            roll = 0.6                            # nothing mapped: mmap something first
        if roll < 0.2:
            current = rng.randrange(processes)
            ops.append(Switch(current))
        elif roll < 0.5:                           # mprotect / copy-on-write
            gva = rng.choice(sorted(pages_now))
            pages_now[gva] = not pages_now[gva]
            ops.append(Protect(gva, pages_now[gva]))
        elif roll < 0.75:                          # munmap, or mmap of a free slot
            gva = rng.choice(slots)
            if gva in pages_now:
                del pages_now[gva]
                ops.append(Unmap(gva))
            else:
                pages_now[gva] = True
                ops.append(Map(gva, rng.randrange(DATA_FRAMES) * FRAME))
        else:
            gva = rng.choice(sorted(pages_now))
            ops.append(Touch(gva, write=pages_now[gva] and rng.random() < 0.3))
    return Workload("mmu_heavy", processes, tuple(warmup), tuple(ops[:steps]))


def tlb_heavy(seed: int = 0, pages: int = 4096, steps: int = 2000) -> Workload:
    """Static tables, random accesses over a working set far larger than the TLB, rare updates."""
    rng = random.Random(seed)
    gvas = [BASE + i * FRAME for i in range(pages)]
    warmup: list[Op] = [Map(gva, rng.randrange(DATA_FRAMES) * FRAME) for gva in gvas]
    warmup += [Touch(gva) for gva in gvas]
    writable = dict.fromkeys(gvas, True)
    ops: list[Op] = []
    for _ in range(steps):
        gva = rng.choice(gvas)
        if rng.random() < 0.01:
            writable[gva] = not writable[gva]
            ops.append(Protect(gva, writable[gva]))
        else:
            ops.append(Touch(gva, write=writable[gva] and rng.random() < 0.3))
    return Workload("tlb_heavy", 1, tuple(warmup), tuple(ops))


@dataclass(frozen=True)
class PagerResult:
    """What one pager did on the measured part of a workload, and its estimated cost."""

    exits: int
    exits_by_reason: tuple[tuple[ExitReason, int], ...]
    guest_pte_writes: int
    hidden_faults: int
    tlb_hits: int
    tlb_misses: int
    walks: int
    walk_references: int
    cycles: int

    @property
    def references_per_walk(self) -> float:
        return self.walk_references / self.walks if self.walks else 0.0


@dataclass(frozen=True)
class Comparison:
    """Shadow against nested paging on one workload."""

    workload: str
    shadow: PagerResult
    nested: PagerResult
    exit_cycles: int
    reference_cycles: int

    @property
    def winner(self) -> str:
        """"shadow" or "nested": the lower estimated cost (ties go to nested)."""
        return "shadow" if self.shadow.cycles < self.nested.cycles else "nested"


def _measure(pager: Pager, workload: Workload, exit_cycles: int,
             reference_cycles: int) -> PagerResult:
    replay(pager, workload.warmup)
    pager.reset_counters()
    replay(pager, workload.ops)
    s = pager.stats
    # Deliberately simple: the estimate counts exits and walk references only; TLB hits,
    # the guest's own work and the VMM handlers' cache pollution are left out.
    cycles = len(pager.exits) * exit_cycles + s.walk_references * reference_cycles
    return PagerResult(len(pager.exits), tuple(pager.exits_by_reason().items()),
                       s.guest_pte_writes, s.hidden_faults, pager.tlb_hits, pager.tlb_misses,
                       s.walks, s.walk_references, cycles)


def compare(workload: Workload | Callable[[int], Workload], *, tlb_entries: int = 64,
            tlb_ways: int = 4, seed: int = 0, exit_cycles: int = EXIT_CYCLES,
            reference_cycles: int = REFERENCE_CYCLES) -> Comparison:
    """Replay ``workload`` (or ``workload(seed)``) under shadow and nested paging, and compare.

    Each pager gets its own fresh ``Guest`` and TLB. The estimated cost is
    ``exits * exit_cycles + walk references * reference_cycles``:
    ``exit_cycles`` = 1,500, a VM exit and entry round trip with a simple handler
    (1,000-2,000 cycles: SplitX, WIOV 2011, 2,000 on Nehalem; AMD ~1,350 for
    VMRUN to #VMEXIT, LKML 2020); ``reference_cycles`` = 100, a memory reference
    that misses the caches, an order of magnitude, deliberately simple (real
    walks hit the caches and the paging-structure caches often).
    """
    if callable(workload):
        workload = workload(seed)
    if not isinstance(workload, Workload):
        raise VmkitError(f"compare() takes a Workload (or mmu_heavy, tlb_heavy), not {workload!r}")
    expect_int(exit_cycles, "exit_cycles")
    expect_int(reference_cycles, "reference_cycles")
    results = []
    for kind in (ShadowPager, NestedPager):
        pager = kind(Guest(workload.processes), TLB(tlb_entries, tlb_ways))
        results.append(_measure(pager, workload, exit_cycles, reference_cycles))
    return Comparison(workload.name, results[0], results[1], exit_cycles, reference_cycles)


__all__ = [
    "EXIT_CYCLES", "REFERENCE_CYCLES", "DATA_FRAMES", "Exit", "PagerStats", "AccessRecord",
    "Guest", "Pager", "ShadowPager", "NestedPager", "Map", "Unmap", "Protect", "Switch", "Touch", "Op",
    "Workload", "replay", "mmu_heavy", "tlb_heavy", "PagerResult", "Comparison", "compare",
]
