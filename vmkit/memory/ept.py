"""Intel EPT: the second dimension of the walk (gpa -> hpa), its violations and misconfigurations.

Extended Page Tables as the Intel SDM Vol. 3C §28.2 defines them (2016 edition, chapter 28
"VMX support for address translation"): the entry formats of §28.2.2, the EPT violations and
misconfigurations of §28.2.3 and their priority (§28.2.3.3), the accessed and dirty flags of
§28.2.4, the exit qualification for EPT violations of §27.2.1 (Table 27-7) and the EPTP of
§24.6.11. Constant names follow Linux ``arch/x86/include/asm/vmx.h`` (``VMX_EPT_*``).

``ept_walk`` is what the processor does for one guest-physical access and returns a record of
every entry it read, ending in a translation, an EPT violation (exit 48) or an EPT
misconfiguration (exit 49); both are returned, never raised. ``EPT`` is a small builder that
lays out the tables in a ``PhysicalMemory``, as a hypervisor does.

Deliberately simple: no mode-based execute control, no sub-page permissions, no #VE, no
paging-structure caches (invept belongs to the TLB model), MAXPHYADDR is 52.
Taught in course/02_memory/02_two_dimensional_walk.ipynb.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import ClassVar

from vmkit.core import VmkitError, expect_int
from vmkit.cpu.vmx import ExitReason
from vmkit.memory.physical import FRAME, MAXPHYADDR, PhysicalMemory

GPA = int  # a guest-physical address: what the guest's page tables produce
HPA = int  # a host-physical address: what EPT produces

_ONES = (1 << 64) - 1
_ADDRESS = ((1 << MAXPHYADDR) - 1) & ~(FRAME - 1)  # bits 51:12 of an entry or of the EPTP
_RWX = 0b111
_MEMORY_TYPE = 0b111 << 3                          # bits 5:3
PAGE_SIZES = {1: FRAME, 2: 1 << 21, 3: 1 << 30}    # a leaf at level 1, 2 or 3 maps this much
LEVEL_NAMES = {5: "EPT PML5", 4: "EPT PML4", 3: "EPT PDPT", 2: "EPT PD", 1: "EPT PT"}


class EPTE(IntFlag):
    """Flags of an EPT paging-structure entry (SDM Vol. 3C §28.2.2, Tables 28-1 to 28-6).

    63  62:52   51:12          11:10  9  8  7     6    5:3    2 1 0
    SVE ignored address(frame) ign.   D  A  LARGE IPAT memtype X W R
    Memory type, IPAT and D mean something in a leaf only; A/D only when the EPTP enables them.
    """

    READ = 1 << 0        # VMX_EPT_READABLE_MASK
    WRITE = 1 << 1       # VMX_EPT_WRITABLE_MASK
    EXECUTE = 1 << 2     # VMX_EPT_EXECUTABLE_MASK
    IGNORE_PAT = 1 << 6  # VMX_EPT_IPAT_BIT
    LARGE = 1 << 7       # in a PDPTE: 1 GiB page; in a PDE: 2 MiB page
    ACCESSED = 1 << 8    # VMX_EPT_ACCESS_BIT
    DIRTY = 1 << 9       # VMX_EPT_DIRTY_BIT
    SUPPRESS_VE = 1 << 63


class MemoryType(IntEnum):
    """EPT memory types, bits 5:3 of a leaf (SDM Vol. 3C §28.2.6); 2, 3 and 7 are reserved."""

    UC = 0
    WC = 1
    WT = 4
    WP = 5
    WB = 6


def memory_type(entry: int) -> int:
    """The memory type in bits 5:3 of an entry (an int: reserved values 2, 3, 7 included)."""
    return (entry & _MEMORY_TYPE) >> 3


@dataclass(frozen=True)
class EPTP:
    """The EPT pointer, VMCS field 0x201A (SDM Vol. 3C §24.6.11, Table 24-8).

    63:52 reserved | 51:12 PML4 (or PML5) | 11:7 reserved | 6 A/D | 5:3 walk length - 1 | 2:0 type
    """

    pml4: HPA                  # the root table, a PML5 when walk_length is 5
    walk_length: int = 4
    memory_type: int = 6       # MemoryType.WB; UC (0) is the only other choice
    accessed_dirty: bool = False

    def __post_init__(self):
        expect_int(self.pml4, "pml4", maximum=(1 << MAXPHYADDR) - 1)
        if self.pml4 % FRAME:
            raise VmkitError(f"pml4 must be 4 KiB aligned, not {self.pml4:#x}")
        if type(self.walk_length) is not int or self.walk_length not in (4, 5):
            raise VmkitError(f"walk_length must be 4 or 5, not {self.walk_length!r}")
        if self.memory_type not in (MemoryType.UC, MemoryType.WB):
            raise VmkitError(f"EPTP memory type must be UC (0) or WB (6), not {self.memory_type!r}")
        if not isinstance(self.accessed_dirty, bool):
            raise VmkitError(f"accessed_dirty must be a bool, not {self.accessed_dirty!r}")

    def encode(self) -> int:
        """The 64-bit value a hypervisor writes into the VMCS."""
        return (int(self.memory_type) | (self.walk_length - 1) << 3
                | int(self.accessed_dirty) << 6 | self.pml4)

    @classmethod
    def decode(cls, value: int) -> EPTP:
        """Read an EPTP value; a value VM entry would refuse raises VmkitError."""
        expect_int(value, "EPTP", maximum=_ONES)
        if value & ~(_ADDRESS | 0x7F):
            raise VmkitError(f"EPTP {value:#x} sets reserved bits (11:7 or 63:52); clear them")
        return cls(pml4=value & _ADDRESS, walk_length=(value >> 3 & 0b111) + 1,
                   memory_type=value & 0b111, accessed_dirty=bool(value & 1 << 6))


@dataclass(frozen=True)
class EPTAccess:
    """What a guest-physical access wants: read, write and/or instruction fetch.

    Reads of guest paging-structure entries during the guest's own walk are data reads; when
    the EPTP enables accessed and dirty flags they count as writes as well, because the
    processor may set the guest's A/D bits (SDM Vol. 3C §28.2.3.2 and §28.2.4).
    """

    read: bool = False
    write: bool = False
    fetch: bool = False

    READ: ClassVar[EPTAccess]
    WRITE: ClassVar[EPTAccess]
    FETCH: ClassVar[EPTAccess]

    def __post_init__(self):
        if not all(isinstance(flag, bool) for flag in (self.read, self.write, self.fetch)):
            raise VmkitError("read, write and fetch must be bools")
        if not (self.read or self.write or self.fetch):
            raise VmkitError("an access must read, write or fetch; set at least one")


EPTAccess.READ = EPTAccess(read=True)
EPTAccess.WRITE = EPTAccess(write=True)
EPTAccess.FETCH = EPTAccess(fetch=True)


@dataclass(frozen=True)
class EPTReference:
    """One EPT entry read during a walk: which table, which slot, what it held."""

    level: int      # 5 (PML5), 4 (PML4) down to 1 (PT)
    name: str       # "EPT PML4", "EPT PDPT", ...
    table: HPA
    index: int      # 0..511, nine bits of the gpa
    address: HPA    # table + 8 * index
    entry: int      # as read, before any A/D update


@dataclass(frozen=True)
class EPTTranslation:
    """A successful walk: the hpa, the page size, and the permissions ANDed over the walk."""

    gpa: GPA
    hpa: HPA
    page_size: int
    readable: bool
    writable: bool
    executable: bool


@dataclass(frozen=True)
class EPTViolationQualification:
    """The exit qualification of an EPT violation, SDM Vol. 3C §27.2.1, Table 27-7.

    8 final | 7 gla valid | 6 reserved | 5:3 X W R, ANDed over the walk | 2 fetch | 1 write | 0 read
    """

    read: bool = False
    write: bool = False
    fetch: bool = False
    readable: bool = False
    writable: bool = False
    executable: bool = False
    gla_valid: bool = False
    final: bool = False   # meaningful only when gla_valid: final translation vs guest paging entry

    def __post_init__(self):
        if self.final and not self.gla_valid:
            raise VmkitError("final (bit 8) is defined only when gla_valid (bit 7) is set")

    _BITS: ClassVar[dict[str, int]] = {
        "read": 0, "write": 1, "fetch": 2, "readable": 3, "writable": 4, "executable": 5,
        "gla_valid": 7, "final": 8}

    def encode(self) -> int:
        """The qualification as the VMCS holds it."""
        return sum(1 << bit for name, bit in self._BITS.items() if getattr(self, name))

    @classmethod
    def decode(cls, qualification: int) -> EPTViolationQualification:
        """Split a qualification into its fields; bits this model does not define raise."""
        expect_int(qualification, "qualification", maximum=_ONES)
        known = sum(1 << bit for bit in cls._BITS.values())
        if qualification & ~known:
            raise VmkitError(f"qualification {qualification:#x} sets bits outside 5:0, 7 and 8, "
                             "which this model does not define")
        return cls(**{name: bool(qualification >> bit & 1) for name, bit in cls._BITS.items()})


@dataclass(frozen=True)
class EPTViolation:
    """Exit 48: the entry was not present, or it forbids the access (SDM Vol. 3C §28.2.3.2)."""

    gpa: GPA
    qualification: int
    gla_valid: bool
    exit_reason: ClassVar[ExitReason] = ExitReason.EPT_VIOLATION

    @property
    def decoded(self) -> EPTViolationQualification:
        return EPTViolationQualification.decode(self.qualification)


@dataclass(frozen=True)
class EPTMisconfiguration:
    """Exit 49: an entry the processor cannot use (SDM Vol. 3C §28.2.3.1); ``reason`` in French."""

    gpa: GPA
    reason: str
    exit_reason: ClassVar[ExitReason] = ExitReason.EPT_MISCONFIG


@dataclass(frozen=True)
class EPTWalk:
    """The record of one EPT walk: every entry read, then what came of it."""

    gpa: GPA
    access: EPTAccess   # as the processor treats it (guest-entry reads become writes with A/D)
    references: tuple[EPTReference, ...]
    result: EPTTranslation | EPTViolation | EPTMisconfiguration

    @property
    def ok(self) -> bool:
        return isinstance(self.result, EPTTranslation)

    @property
    def memory_references(self) -> int:
        """EPT entries read, one memory reference each (A/D write-backs not counted)."""
        return len(self.references)


def _index(gpa: GPA, level: int) -> int:
    return gpa >> (12 + 9 * (level - 1)) & 0x1FF


def _is_leaf(entry: int, level: int) -> bool:
    return level == 1 or (level in (2, 3) and bool(entry & EPTE.LARGE))


def misconfiguration(entry: int, level: int, *, execute_only: bool = False) -> str | None:
    """Why a present entry at ``level`` is an EPT misconfiguration, in French; None if it is fine.

    SDM Vol. 3C §28.2.3.1: write without read, execute-only without the capability
    (IA32_VMX_EPT_VPID_CAP bit 0), a reserved bit set, a reserved memory type in a leaf.
    """
    rwx = entry & _RWX
    if rwx == 0b010:
        return "entrée en écriture seule"
    if rwx == 0b110:
        return "écriture et exécution sans lecture"
    if rwx == 0b100 and not execute_only:
        return "exécution seule sans la capacité execute-only"
    if not _is_leaf(entry, level):
        # Non-leaf: bits 7:3 of a PML5E/PML4E are reserved; bits 6:3 of a PDPTE or PDE that
        # points to a table (bit 7 is then the page-size bit, clear).
        if entry & (0b11111 << 3 if level >= 4 else 0b1111 << 3):
            return "bit réservé"
        return None
    if level > 1 and entry & _ADDRESS & (PAGE_SIZES[level] - 1):
        return "bit réservé"    # bits 20:12 of a 2 MiB PDE, 29:12 of a 1 GiB PDPTE
    if memory_type(entry) in (2, 3, 7):
        return f"type mémoire réservé {memory_type(entry)}"
    return None


def _qualification(access: EPTAccess, r: bool, w: bool, x: bool, gla_valid: bool,
                   final: bool) -> int:
    return EPTViolationQualification(
        access.read, access.write, access.fetch, r, w, x, gla_valid, gla_valid and final).encode()


def ept_walk(memory: PhysicalMemory, eptp: EPTP | int, gpa: GPA, access: EPTAccess, *,
             gla_valid: bool = True, final: bool = True, execute_only: bool = False) -> EPTWalk:
    """Translate ``gpa`` through the EPT rooted at ``eptp``, as the processor does for one access.

    ``gla_valid`` and ``final`` fill bits 7 and 8 of a violation's qualification (``final``
    False: the access reads a guest paging-structure entry). ``execute_only`` is the CPU's
    capability to accept execute-only entries. Priority per SDM Vol. 3C §28.2.3.3: for each
    entry, not present -> violation; misconfigured -> misconfiguration; at the leaf, a
    permission clear in any entry of the walk -> violation.
    """
    if isinstance(eptp, int):
        eptp = EPTP.decode(eptp)
    if not isinstance(eptp, EPTP):
        raise VmkitError(f"eptp must be an EPTP or an int, not {eptp!r}")
    if not hasattr(memory, "read_u64"):
        raise VmkitError(f"ept_walk() needs the host memory holding the EPT, not {memory!r}")
    if not isinstance(access, EPTAccess):
        raise VmkitError(f"access must be an EPTAccess (EPTAccess.READ, ...), not {access!r}")
    width = 12 + 9 * eptp.walk_length
    expect_int(gpa, "gpa")
    if eptp.accessed_dirty and not final and not access.write:
        access = EPTAccess(read=access.read, write=True, fetch=access.fetch)
    if gpa >> min(width, MAXPHYADDR):
        # beyond what the EPT translates: the processor reports an EPT violation (a guest's
        # tables may hold any address; that is not the caller's mistake)
        qualification = _qualification(access, False, False, False, gla_valid, final)
        return EPTWalk(gpa, access, (), EPTViolation(gpa, qualification, gla_valid))

    references: list[EPTReference] = []
    r = w = x = True
    table = eptp.pml4
    for level in range(eptp.walk_length, 0, -1):
        index = _index(gpa, level)
        entry = memory.read_u64(table + 8 * index)
        references.append(EPTReference(level, LEVEL_NAMES[level], table, index,
                                       table + 8 * index, entry))
        r, w, x = r and bool(entry & EPTE.READ), w and bool(entry & EPTE.WRITE), \
            x and bool(entry & EPTE.EXECUTE)
        if not entry & _RWX:
            qualification = _qualification(access, r, w, x, gla_valid, final)
            violation = EPTViolation(gpa, qualification, gla_valid)
            return EPTWalk(gpa, access, tuple(references), violation)
        reason = misconfiguration(entry, level, execute_only=execute_only)
        if reason is not None:
            return EPTWalk(gpa, access, tuple(references), EPTMisconfiguration(gpa, reason))
        if _is_leaf(entry, level):
            break
        table = entry & _ADDRESS

    if (access.read and not r) or (access.write and not w) or (access.fetch and not x):
        qualification = _qualification(access, r, w, x, gla_valid, final)
        return EPTWalk(gpa, access, tuple(references), EPTViolation(gpa, qualification, gla_valid))
    if eptp.accessed_dirty:
        _set_accessed_dirty(memory, references, dirty=access.write)
    size = PAGE_SIZES[references[-1].level]
    hpa = (references[-1].entry & _ADDRESS & ~(size - 1)) | (gpa & (size - 1))
    return EPTWalk(gpa, access, tuple(references), EPTTranslation(gpa, hpa, size, r, w, x))


def _set_accessed_dirty(memory: PhysicalMemory, references: list[EPTReference], *,
                        dirty: bool) -> None:
    """Set A in every entry used and D in the leaf on a write (SDM Vol. 3C §28.2.4)."""
    for ref in references:
        flags = EPTE.ACCESSED | (EPTE.DIRTY if dirty and ref is references[-1] else 0)
        if ref.entry & flags != flags:   # the processor writes only a flag that was clear
            memory.write_u64(ref.address, ref.entry | flags)


class EPT:
    """A hypervisor's EPT for one guest: allocates tables in ``memory`` and fills their entries.

    The builder reads and writes entries without touching ``memory.reads``/``writes``, so
    those counters keep measuring what the walks do.
    """

    def __init__(self, memory: PhysicalMemory, walk_length: int = 4,
                 accessed_dirty: bool = False):
        if not isinstance(memory, PhysicalMemory):
            raise VmkitError(f"memory must be a PhysicalMemory, not {memory!r}")
        EPTP(0, walk_length, MemoryType.WB, accessed_dirty)  # refuses bad values before allocating
        self.memory = memory
        self.walk_length = walk_length
        self.accessed_dirty = accessed_dirty
        self.root: HPA = memory.alloc_frame() * FRAME

    def __repr__(self) -> str:
        return (f"EPT(root={self.root:#x}, walk_length={self.walk_length}, "
                f"accessed_dirty={self.accessed_dirty})")

    @property
    def eptp(self) -> EPTP:
        return EPTP(self.root, self.walk_length, MemoryType.WB, self.accessed_dirty)

    def _peek(self, pa: HPA) -> int:
        if pa + 8 > self.memory.size:
            return _ONES
        return struct.unpack("<Q", self.memory.read(pa, 8))[0]

    def _poke(self, pa: HPA, value: int) -> None:
        self.memory.write(pa, struct.pack("<Q", value))

    def _slot(self, table: HPA, gpa: GPA, level: int) -> HPA:
        return table + 8 * _index(gpa, level)

    def _check_gpa(self, gpa: GPA) -> None:
        expect_int(gpa, "gpa", maximum=(1 << (12 + 9 * self.walk_length)) - 1)

    def entries(self, gpa: GPA) -> tuple[EPTReference, ...]:
        """The entries a walk for ``gpa`` reads, down to the leaf or the first not-present one.

        No access check, no A/D update, no memory reference counted.
        """
        self._check_gpa(gpa)
        path: list[EPTReference] = []
        table = self.root
        for level in range(self.walk_length, 0, -1):
            slot = self._slot(table, gpa, level)
            entry = self._peek(slot)
            path.append(EPTReference(level, LEVEL_NAMES[level], table, _index(gpa, level),
                                     slot, entry))
            if not entry & _RWX or _is_leaf(entry, level):
                break
            table = entry & _ADDRESS
        return tuple(path)

    def map(self, gpa: GPA, hpa: HPA, *, size: int = FRAME, read: bool = True,
            write: bool = True, execute: bool = True, memory_type: int = MemoryType.WB,
            allow_misconfig: bool = False) -> None:
        """Map ``size`` bytes (4 KiB, 2 MiB or 1 GiB) at ``gpa`` to ``hpa``.

        Intermediate entries get R|W|X, so the leaf alone decides. ``allow_misconfig`` lets a
        test build entries the processor refuses (write-only, execute-only, a reserved memory
        type, a misaligned large page).
        """
        level = {v: k for k, v in PAGE_SIZES.items()}.get(size)
        if level is None:
            raise VmkitError(f"size must be 4096, 2 MiB or 1 GiB, not {size!r}")
        self._check_gpa(gpa)
        expect_int(hpa, "hpa", maximum=(1 << MAXPHYADDR) - 1)
        if gpa % size or (hpa % size and not allow_misconfig) or hpa % FRAME:
            raise VmkitError(f"gpa {gpa:#x} and hpa {hpa:#x} must be aligned to {size:#x}")
        leaf = self._leaf_bits(read, write, execute, memory_type, allow_misconfig)
        table = self.root
        for at in range(self.walk_length, level, -1):
            slot = self._slot(table, gpa, at)
            entry = self._peek(slot)
            if entry & _RWX and _is_leaf(entry, at):
                raise VmkitError(f"gpa {gpa:#x} overlaps a {PAGE_SIZES[at]:#x}-byte mapping; "
                                 "unmap it first")
            if not entry & _RWX:
                entry = self.memory.alloc_frame() * FRAME | _RWX
                self._poke(slot, entry)
            table = entry & _ADDRESS
        slot = self._slot(table, gpa, level)
        if self._peek(slot) & _RWX:
            raise VmkitError(f"gpa {gpa:#x} is already mapped (or holds smaller mappings); "
                             "unmap it first")
        self._poke(slot, hpa | leaf | (EPTE.LARGE if level > 1 else 0))

    @staticmethod
    def _leaf_bits(read: bool, write: bool, execute: bool, memory_type: int,
                   allow_misconfig: bool) -> int:
        rwx = int(read) | int(write) << 1 | int(execute) << 2
        expect_int(memory_type, "memory_type", maximum=7)
        if rwx == 0:
            raise VmkitError("a mapping with no permission is not present; use unmap")
        if not allow_misconfig:
            if write and not read:
                raise VmkitError("write without read is an EPT misconfiguration; "
                                 "pass allow_misconfig=True to build one on purpose")
            if rwx == 0b100:
                raise VmkitError("execute-only needs the CPU's execute-only capability; "
                                 "pass allow_misconfig=True to build one")
            if memory_type in (2, 3, 7):
                raise VmkitError(f"memory type {memory_type} is reserved; use a MemoryType, "
                                 "or allow_misconfig=True")
        return rwx | memory_type << 3

    def _leaf_slot(self, gpa: GPA) -> tuple[HPA, int, list[EPTReference]]:
        path = list(self.entries(gpa))
        last = path[-1]
        if not last.entry & _RWX or not _is_leaf(last.entry, last.level):
            raise VmkitError(f"gpa {gpa:#x} is not mapped")
        return last.address, last.level, path

    def unmap(self, gpa: GPA) -> None:
        """Remove the mapping that starts at ``gpa``, freeing tables left empty."""
        slot, level, path = self._leaf_slot(gpa)
        if gpa % PAGE_SIZES[level]:
            raise VmkitError(f"gpa {gpa:#x} is inside a {PAGE_SIZES[level]:#x}-byte mapping; "
                             f"unmap it at {gpa & ~(PAGE_SIZES[level] - 1):#x}")
        self._poke(slot, 0)
        for ref in reversed(path[:-1]):
            child = ref.entry & _ADDRESS
            if any(self._peek(child + 8 * i) for i in range(512)):
                break
            self.memory.free_frame(child // FRAME)
            self._poke(ref.address, 0)

    def protect(self, gpa: GPA, *, read: bool | None = None, write: bool | None = None,
                execute: bool | None = None, allow_misconfig: bool = False) -> None:
        """Change the leaf permissions of the mapping holding ``gpa``; None keeps a bit as is."""
        slot, _, path = self._leaf_slot(gpa)
        entry = path[-1].entry
        bits = [bool(entry & flag) if new is None else new
                for flag, new in ((EPTE.READ, read), (EPTE.WRITE, write), (EPTE.EXECUTE, execute))]
        leaf = self._leaf_bits(*bits, memory_type(entry), allow_misconfig)
        self._poke(slot, entry & ~(_RWX | _MEMORY_TYPE) | leaf)

    def mappings(self) -> list[EPTTranslation]:
        """Every mapping, by gpa, with its leaf permissions (intermediate entries are R|W|X)."""
        found: list[EPTTranslation] = []
        self._collect(self.root, self.walk_length, 0, found)
        return found

    def _collect(self, table: HPA, level: int, base: GPA, found: list[EPTTranslation]) -> None:
        for i in range(512):
            entry = self._peek(table + 8 * i)
            if not entry & _RWX:
                continue
            gpa = base | i << (12 + 9 * (level - 1))
            if _is_leaf(entry, level):
                size = PAGE_SIZES[level]
                found.append(EPTTranslation(gpa, entry & _ADDRESS & ~(size - 1), size,
                                            bool(entry & EPTE.READ), bool(entry & EPTE.WRITE),
                                            bool(entry & EPTE.EXECUTE)))
            else:
                self._collect(entry & _ADDRESS, level - 1, gpa, found)
