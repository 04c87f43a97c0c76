"""The two-dimensional walk: a guest's page tables, each reference itself translated by the EPT.

With EPT on, every guest paging-structure entry lives at a guest-physical
address, so the processor walks the EPT to find it before reading it; the final
guest-physical address needs one more EPT walk. An n-level guest on an m-level
EPT therefore costs up to (n+1)(m+1) - 1 references with cold caches: 24 for
4 + 4, 35 for 5 + 5. Here the walker counts them by doing them.

The guest's tables are the same x86-64 format as on bare metal (``paging.py``):
the guest walk runs unchanged over :class:`GuestPhysicalMemory`, a view of the
host's memory through the EPT that records the EPT walk of each entry read.
Source: Intel SDM Vol. 3C §28.2 (EPT), §28.2.3.3 (violations on guest
paging-structure accesses: qualification bit 8 = 0); Bhargava et al., ASPLOS
2008 (the 2D walk). Taught in course/02_memory/02_two_dimensional_walk.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmkit.core import VmkitError, expect_int
from vmkit.memory.ept import EPT, EPTAccess, EPTMisconfiguration, EPTViolation, EPTWalk, ept_walk
from vmkit.memory.paging import (
    READ, Access, GeneralProtection, PageFault, Reference, Translation, walk,
)
from vmkit.memory.physical import FRAME, PhysicalMemory

GPA = int
HPA = int
LARGE = 2 << 20


class _EPTFault(Exception):
    """Internal: an EPT walk of a guest paging-structure entry failed; the 2D walk stops."""

    def __init__(self, ept: EPTWalk):
        self.ept = ept


class GuestPhysicalMemory:
    """A VM's guest-physical memory: ``size`` bytes whose frames the EPT maps onto host frames.

    It offers what the paging walker and the AddressSpace builder use
    (read_u64/write_u64, read/write, alloc_frame/free_frame, size), so a guest
    page table is built and walked exactly as on bare metal.
    """

    def __init__(self, host: PhysicalMemory, ept: EPT, size: int = 1 << 22, *, ept_page_size: int = FRAME):
        expect_int(size, "size", minimum=FRAME)
        if not isinstance(host, PhysicalMemory) or not isinstance(ept, EPT):
            raise VmkitError("GuestPhysicalMemory(host, ept) takes the host's PhysicalMemory and the VM's EPT")
        if ept_page_size not in (FRAME, LARGE):
            raise VmkitError(f"ept_page_size is 4096 or 2 MiB, not {ept_page_size!r}")
        if size % ept_page_size:
            raise VmkitError(f"size must be a multiple of {ept_page_size:#x}, not {size:#x}")
        self.host, self.ept, self.size = host, ept, size
        self._next = 0
        self._free: list[int] = []
        self._backing: dict[int, HPA] = {}  # gpa frame -> hpa frame, as the VMM set the EPT up
        self.recording: list[tuple[GPA, EPTWalk]] | None = None  # EPT walks of the current 2D walk
        self._known: dict[int, HPA] = {}  # gpa page -> hpa page, for the A/D write-backs
        if ept_page_size == LARGE:  # back everything now, in 2 MiB EPT pages of contiguous host frames
            for chunk in range(0, size, LARGE):
                while host.frames_in_use % (LARGE // FRAME):
                    host.alloc_frame()  # padding up to a 2 MiB boundary
                base = host.alloc_frame() * FRAME
                for _ in range(LARGE // FRAME - 1):
                    host.alloc_frame()
                ept.map(chunk, base, size=LARGE)
                for offset in range(0, LARGE, FRAME):
                    self._backing[(chunk + offset) // FRAME] = base + offset

    def alloc_frame(self) -> int:
        """A guest frame; backed by a fresh host frame mapped in the EPT unless already backed."""
        if self._free:
            gpfn = min(self._free)
            self._free.remove(gpfn)
        elif (self._next + 1) * FRAME <= self.size:
            gpfn = self._next
            self._next += 1
        else:
            raise VmkitError(f"guest-physical memory is full ({self.size:#x} bytes)")
        if gpfn not in self._backing:
            hpa = self.host.alloc_frame() * FRAME
            self.ept.map(gpfn * FRAME, hpa)
            self._backing[gpfn] = hpa
        else:
            self.host.write(self._backing[gpfn], bytes(FRAME))
        return gpfn

    def back(self, gpa: GPA, size: int) -> None:
        """Back a guest-physical range with host frames now (4 KiB EPT pages), as a VMM may at boot."""
        expect_int(gpa, "gpa")
        expect_int(size, "size", minimum=1)
        if gpa % FRAME or gpa + size > self.size:
            raise VmkitError(f"{gpa:#x}+{size:#x} is not a frame-aligned range of guest memory")
        for gpfn in range(gpa // FRAME, (gpa + size + FRAME - 1) // FRAME):
            if gpfn not in self._backing:
                hpa = self.host.alloc_frame() * FRAME
                self.ept.map(gpfn * FRAME, hpa)
                self._backing[gpfn] = hpa

    def __repr__(self) -> str:
        return f"GuestPhysicalMemory(size={self.size:#x}, backed frames={len(self._backing)})"

    def free_frame(self, gpfn: int) -> None:
        expect_int(gpfn, "gpfn")
        if gpfn in self._free or gpfn >= self._next:
            raise VmkitError(f"guest frame {gpfn} is not allocated")
        self._free.append(gpfn)

    def _hpa(self, gpa: GPA) -> HPA:
        """Where the VMM put a guest-physical address (its own bookkeeping: not a reference)."""
        expect_int(gpa, "gpa")
        page = self._backing.get(gpa // FRAME)
        if page is None:
            raise VmkitError(f"gpa {gpa:#x} is not backed by host memory")
        return page + gpa % FRAME

    def read(self, gpa: GPA, length: int) -> bytes:
        return self.host.read(self._hpa(gpa), length)

    def write(self, gpa: GPA, data: bytes) -> None:
        self.host.write(self._hpa(gpa), data)

    def read_u64(self, gpa: GPA) -> int:
        """A guest paging-structure read, as the processor does it: EPT walk, then the read."""
        ad = self.ept.accessed_dirty
        access = EPTAccess(read=True, write=ad)  # with EPT A/D, walk reads count as writes
        nested = ept_walk(self.host, self.ept.eptp, gpa, access, gla_valid=True, final=False)
        if self.recording is not None:
            self.recording.append((gpa, nested))
        if not nested.ok:
            raise _EPTFault(nested)
        hpa = nested.result.hpa
        self._known[gpa >> 12] = hpa & ~(FRAME - 1)
        return self.host.read_u64(hpa)

    def write_u64(self, gpa: GPA, value: int) -> None:
        """An A/D write-back to an entry just read: same translation, no new walk."""
        page = self._known.get(gpa >> 12)
        if page is None:
            raise VmkitError(f"write to gpa {gpa:#x} before it was read in this walk")
        self.host.write_u64(page | gpa & (FRAME - 1), value)


@dataclass(frozen=True)
class Step:
    """One row of the 2D grid: the EPT walk of a gpa, then the guest entry read there (if any)."""

    gpa: GPA
    ept: EPTWalk
    guest: Reference | None  # None for the data row, or when the EPT walk of this row failed
    row: str = "donnée"      # the guest level this row translates ("PML4", ...) or "donnée"


@dataclass(frozen=True)
class Translation2D:
    gva: int
    gpa: GPA
    hpa: HPA
    guest: Translation


@dataclass(frozen=True)
class Walk2D:
    """A nested translation: its grid of references and its outcome."""

    gva: int
    access: Access
    steps: tuple[Step, ...]
    result: Translation2D | PageFault | GeneralProtection | EPTViolation | EPTMisconfiguration

    @property
    def ok(self) -> bool:
        return isinstance(self.result, Translation2D)

    @property
    def memory_references(self) -> int:
        """EPT entries read plus guest entries read: at most (n+1)(m+1) - 1."""
        return sum(len(s.ept.references) + (s.guest is not None) for s in self.steps)

    def grid(self) -> list[list[str]]:
        """Rows (guest levels, then the data access) by columns (EPT levels, then the guest entry)."""
        rows = []
        for step in self.steps:
            cells = [r.name for r in step.ept.references]
            cells.append(step.row)
            rows.append(cells)
        return rows


def walk_2d(guest: GuestPhysicalMemory, cr3: GPA, gva: int, access: Access = READ, *,
            levels: int = 4, **paging) -> Walk2D:
    """Translate ``gva`` through the guest's page tables (at ``cr3``, a gpa) and the EPT.

    ``paging`` passes the guest's paging options (wp, nxe, smep, set_accessed_dirty).
    """
    if not isinstance(guest, GuestPhysicalMemory):
        raise VmkitError("walk_2d needs the guest's GuestPhysicalMemory (its memory seen through the EPT)")
    guest.recording, guest._known = [], {}
    try:
        native = walk(guest, cr3, gva, access, levels=levels, **paging)
        fault = None
    except _EPTFault as stop:
        native, fault = None, stop.ept.result
    finally:
        recorded, guest.recording = guest.recording, None
    references = native.references if native else ()
    if native is None:  # the last recorded EPT walk failed before its guest entry was read
        done = len(recorded) - 1
        guest_refs = _guest_references(guest, cr3, gva, levels, done)
    else:
        guest_refs = list(references)
    from vmkit.memory.paging import LEVEL_NAMES

    steps = [Step(gpa, ept, guest_refs[i] if i < len(guest_refs) else None, LEVEL_NAMES[levels - i])
             for i, (gpa, ept) in enumerate(recorded)]
    if fault is not None:
        return Walk2D(gva, access, tuple(steps), fault)
    if not native.ok:
        return Walk2D(gva, access, tuple(steps), native.result)
    gpa = native.result.pa
    kind = EPTAccess(read=not (access.write or access.fetch), write=access.write, fetch=access.fetch)
    final = ept_walk(guest.host, guest.ept.eptp, gpa, kind, gla_valid=True, final=True)
    steps.append(Step(gpa, final, None))
    if not final.ok:
        return Walk2D(gva, access, tuple(steps), final.result)
    return Walk2D(gva, access, tuple(steps), Translation2D(gva, gpa, final.result.hpa, native.result))


def _guest_references(guest: GuestPhysicalMemory, cr3: GPA, gva: int, levels: int, count: int) -> list[Reference]:
    """The guest entries read before an EPT fault (their values, without counting)."""
    from vmkit.memory.paging import ADDRESS_MASK, LEVEL_NAMES, decompose

    refs = []
    table = cr3 & ADDRESS_MASK
    for level, index in list(zip(range(levels, 0, -1), decompose(gva, levels).indexes))[:count]:
        address = table + 8 * index
        entry = int.from_bytes(guest.read(address, 8), "little")
        refs.append(Reference(level, LEVEL_NAMES[level], table, index, address, entry))
        table = entry & ADDRESS_MASK
    return refs


def nested_setup(host_size: int = 1 << 25, guest_size: int = 1 << 22, *, guest_levels: int = 4,
                 ept_levels: int = 4, ept_page_size: int = FRAME, accessed_dirty: bool = False):
    """A host memory, an EPT, a guest-physical memory and an empty guest address space."""
    from vmkit.memory.paging import AddressSpace

    host = PhysicalMemory(host_size, name="host memory")
    ept = EPT(host, walk_length=ept_levels, accessed_dirty=accessed_dirty)
    guest = GuestPhysicalMemory(host, ept, guest_size, ept_page_size=ept_page_size)
    space = AddressSpace(guest, levels=guest_levels)
    return host, ept, guest, space


__all__ = ["GuestPhysicalMemory", "Step", "Translation2D", "Walk2D", "walk_2d", "nested_setup"]
