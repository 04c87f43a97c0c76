"""x86-64 paging: the 4-level (and 5-level, LA57) walk from a linear address to a physical one.

Models the hardware page walk of Intel SDM Vol. 3A ch. 4: the entry formats and
the walk (§4.5), the access-rights checks (§4.6), the page-fault error code
(§4.7) and the accessed/dirty flags (§4.8); bit names follow Linux
arch/x86/include/asm/pgtable_types.h. Every entry the walker reads is one
memory reference, recorded in the returned ``Walk``; faults are returned, never
raised. ``AddressSpace`` is the operating system's side: it builds the tables.
Taught in course/02_memory/01_native_walk.ipynb.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from enum import IntFlag
from typing import ClassVar, NamedTuple

from vmkit.core import VmkitError, expect_int
from vmkit.memory.physical import FRAME, MAXPHYADDR, PA, PhysicalMemory

GVA = int  # a guest-virtual (linear) address

_ONES = (1 << 64) - 1
ENTRIES = 512                      # 4 KiB table / 8-byte entries: 9 index bits per level
LEVEL_NAMES = {5: "PML5", 4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}
PAGE_SIZES = {1: 4096, 2: 2 << 20, 3: 1 << 30}   # leaf level -> bytes mapped


class PTE(IntFlag):
    """Flags of a paging-structure entry (SDM Vol. 3A Tables 4-15 to 4-20)."""

    P = 1 << 0     # present
    RW = 1 << 1    # writable
    US = 1 << 2    # user-mode accesses allowed
    PWT = 1 << 3   # page write-through
    PCD = 1 << 4   # page cache disable
    A = 1 << 5     # accessed: set by the walker
    D = 1 << 6     # dirty: set by the walker on a write, leaf only
    PS = 1 << 7    # page size in a PDPTE (1 GiB) or PDE (2 MiB); PAT in a 4 KiB PTE
    G = 1 << 8     # global: kept in the TLB across CR3 writes
    NX = 1 << 63   # execute-disable (XD), needs EFER.NXE


#  63  62:59  58:52      51:12              11:9   8  7  6  5   4   3   2  1  0
# +--+------+--------+--------------------+------+--+--+--+--+---+---+--+--+--+
# |NX| PKey |reserved| physical address   | avail| G|PS| D| A|PCD|PWT|US|RW| P|
# +--+------+--------+--------------------+------+--+--+--+--+---+---+--+--+--+
ADDRESS_MASK = 0x000F_FFFF_FFFF_F000   # bits 51:12, MAXPHYADDR = 52
# Deliberately simple: with MAXPHYADDR = 52 no address bit is reserved, so this
# model reserves bits 58:52 (the SDM reserves them unless a feature uses them)
# and ignores 62:59 (protection keys, not modelled).
RESERVED_HIGH = 0x07F0_0000_0000_0000  # bits 58:52
RESERVED_2M = 0x0000_0000_001F_E000    # bits 20:13 of a 2 MiB PDE (bit 12 is PAT)
RESERVED_1G = 0x0000_0000_3FFF_E000    # bits 29:13 of a 1 GiB PDPTE (bit 12 is PAT)


class PFError(IntFlag):
    """Bits of the page-fault error code (SDM Vol. 3A §4.7, Figure 4-12)."""

    P = 1      # 0: the page was not present; 1: a protection or reserved-bit violation
    W = 2      # the access was a write
    U = 4      # the access was made in user mode
    RSVD = 8   # a reserved bit was set in some paging-structure entry
    ID = 16    # the access was an instruction fetch (only with EFER.NXE or CR4.SMEP)


@dataclass(frozen=True)
class Access:
    """One access to a linear address: read, write or fetch, by user or supervisor code."""

    write: bool = False
    user: bool = False
    fetch: bool = False

    def __post_init__(self):
        if self.write and self.fetch:
            raise VmkitError("an access is a read, a write or a fetch: not both write and fetch")

    def __str__(self) -> str:
        kind = "write" if self.write else "fetch" if self.fetch else "read"
        return f"{'user' if self.user else 'supervisor'} {kind}"


READ, WRITE, FETCH = Access(), Access(write=True), Access(fetch=True)
USER_READ, USER_WRITE, USER_FETCH = (
    Access(user=True), Access(write=True, user=True), Access(fetch=True, user=True))


@dataclass(frozen=True)
class Reference:
    """One paging-structure entry read by the walker: one memory reference."""

    level: int      # 5 = PML5, 4 = PML4, 3 = PDPT, 2 = PD, 1 = PT
    name: str
    table: PA       # base of the table
    index: int      # which of its 512 entries
    address: PA     # table + 8 * index
    entry: int      # the value read, before any accessed/dirty update


@dataclass(frozen=True)
class Translation:
    """A successful walk: the physical address and the effective permissions (SDM §4.6)."""

    gva: GVA
    pa: PA
    page_size: int
    writable: bool    # RW set at every level
    user: bool        # US set at every level
    executable: bool  # NX clear at every level (or EFER.NXE = 0)

    def __str__(self) -> str:
        rights = ("rw" if self.writable else "ro", "user" if self.user else "supervisor",
                  "x" if self.executable else "nx")
        return f"{self.gva:#x} -> {self.pa:#x} ({_size_name(self.page_size)} page, {', '.join(rights)})"


class Cause(enum.Enum):
    """Why a page fault happened; the error code alone does not always say."""

    NOT_PRESENT = "page non présente au niveau {name}"
    RESERVED = "bit réservé positionné dans l'entrée {name}"
    WRITE = "écriture sur une page en lecture seule (RW = 0 au niveau {name})"
    USER = "accès utilisateur à une page superviseur (US = 0 au niveau {name})"
    NX = "exécution d'une page non exécutable (NX = 1 au niveau {name})"
    SMEP = "exécution en mode superviseur d'une page utilisateur (SMEP, niveau {name})"


@dataclass(frozen=True)
class PageFault:
    """A page fault (#PF, vector 14): the faulting address, the error code, where and why."""

    vector: ClassVar[int] = 14
    gva: GVA
    error_code: int
    level: int      # the level whose entry caused the fault
    cause: Cause

    def explain(self) -> str:
        """A French sentence saying why the walk faulted."""
        return self.cause.value.format(name=LEVEL_NAMES[self.level])

    def __str__(self) -> str:
        bits = "|".join(f.name for f in PFError if self.error_code & f) or "0"
        return f"#PF at {self.gva:#x}, error code {self.error_code:#x} ({bits}): {self.explain()}"


@dataclass(frozen=True)
class GeneralProtection:
    """A general-protection fault (#GP, vector 13): here, a non-canonical address."""

    vector: ClassVar[int] = 13
    gva: GVA
    reason: str = "non-canonical"

    def explain(self) -> str:
        """A French sentence saying why the access faulted."""
        return "adresse non canonique : les bits de poids fort ne recopient pas le bit de signe"

    def __str__(self) -> str:
        return f"#GP at {self.gva:#x}: {self.explain()}"


@dataclass(frozen=True)
class Walk:
    """The record of one page walk: every entry read and the outcome."""

    gva: GVA
    access: Access
    levels: int
    references: tuple[Reference, ...]
    result: Translation | PageFault | GeneralProtection

    @property
    def ok(self) -> bool:
        return isinstance(self.result, Translation)

    @property
    def memory_references(self) -> int:
        """Page-table reads made by the walk (the data access itself not counted)."""
        return len(self.references)

    def __str__(self) -> str:
        lines = [f"walk of {self.gva:#x} ({self.access}, {self.levels} levels, "
                 f"{self.memory_references} memory references)",
                 f"{'level':<6}{'table':>16}{'index':>7}{'entry address':>16}{'entry':>20}"]
        lines += [f"{r.name:<6}{r.table:>#16x}{r.index:>7}{r.address:>#16x}{r.entry:>#20x}"
                  for r in self.references]
        lines.append(f"-> {self.result}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Decomposition:
    """A linear address cut into table indexes (root first) and the page offset."""

    indexes: tuple[int, ...]
    offset: int
    page_offset_bits: int = 12


def _check_levels(levels) -> int:
    if levels not in (4, 5) or isinstance(levels, bool):
        raise VmkitError(f"levels must be 4 (4-level paging) or 5 (LA57), not {levels!r}")
    return levels


def _check_gva(gva) -> GVA:
    return expect_int(gva, "gva", maximum=_ONES)


def _size_name(size: int) -> str:
    return {4096: "4 KiB", 2 << 20: "2 MiB", 1 << 30: "1 GiB"}.get(size, f"{size:#x}-byte")


def _shift(level: int) -> int:
    """Lowest linear-address bit indexing a table of this level: 12, 21, 30, 39, 48."""
    return 12 + 9 * (level - 1)


def decompose(gva: GVA, levels: int = 4) -> Decomposition:
    """Cut ``gva`` into one 9-bit index per level and a 12-bit offset."""
    # 4-level:  63:48 sign | 47:39 PML4 | 38:30 PDPT | 29:21 PD | 20:12 PT | 11:0 offset
    # 5-level:  63:57 sign | 56:48 PML5 | then as above
    _check_gva(gva)
    _check_levels(levels)
    indexes = tuple((gva >> _shift(level)) & (ENTRIES - 1) for level in range(levels, 0, -1))
    return Decomposition(indexes, gva & (FRAME - 1))


def is_canonical(gva: GVA, levels: int = 4) -> bool:
    """True when bits 63:47 (63:56 with 5 levels) are all equal (SDM Vol. 1 §3.3.7.1)."""
    _check_gva(gva)
    _check_levels(levels)
    top = gva >> (_shift(levels) + 8)   # bits 63:47, or 63:56
    return top in (0, (1 << (64 - _shift(levels) - 8)) - 1)


def _sign_extend(gva: GVA, levels: int) -> GVA:
    """The canonical form of an address whose bits above the top index are zero."""
    sign = 1 << (_shift(levels) + 8)
    return gva | (_ONES ^ (sign - 1)) if gva & sign else gva


def _is_leaf(entry: int, level: int) -> bool:
    """A PT entry always maps a page; a PDPTE or PDE does when PS is set (§4.5.4)."""
    return level == 1 or (level in (2, 3) and bool(entry & PTE.PS))


def _reserved(entry: int, level: int, nxe: bool) -> bool:
    """True when a present entry sets a bit this model reserves (SDM §4.5.4, Table 4-14)."""
    if entry & RESERVED_HIGH:
        return True
    if not nxe and entry & PTE.NX:   # XD is reserved when EFER.NXE = 0
        return True
    if level in (4, 5) and entry & PTE.PS:
        return True
    if level == 3 and entry & PTE.PS and entry & RESERVED_1G:
        return True
    return level == 2 and bool(entry & PTE.PS) and bool(entry & RESERVED_2M)


def _access_bits(access: Access, nxe: bool, smep: bool) -> int:
    """The W, U and I/D bits of the error code, which describe the access (§4.7)."""
    code = PFError.W if access.write else 0
    code |= PFError.U if access.user else 0
    return code | (PFError.ID if access.fetch and (nxe or smep) else 0)


def walk(memory: PhysicalMemory, cr3: int, gva: GVA, access: Access = READ, *,
         levels: int = 4, wp: bool = True, nxe: bool = True, smep: bool = False,
         set_accessed_dirty: bool = True) -> Walk:
    """Translate ``gva`` as the processor does, recording every entry it reads."""
    if not hasattr(memory, "read_u64"):
        raise VmkitError(f"walk() needs the memory holding the tables (a PhysicalMemory), not {memory!r}")
    _check_gva(gva)
    _check_levels(levels)
    expect_int(cr3, "cr3", maximum=_ONES)
    if not isinstance(access, Access):
        raise VmkitError(f"access must be an Access (READ, WRITE, FETCH, ...), not {access!r}")
    if not is_canonical(gva, levels):
        return Walk(gva, access, levels, (), GeneralProtection(gva))
    access_bits = _access_bits(access, nxe, smep)
    table = cr3 & ADDRESS_MASK          # CR3 bits 51:12: the root table (11:0 are PWT/PCD/PCID)
    references: list[Reference] = []
    for level, index in zip(range(levels, 0, -1), decompose(gva, levels).indexes):
        address = table + 8 * index
        entry = memory.read_u64(address)
        references.append(Reference(level, LEVEL_NAMES[level], table, index, address, entry))
        if not entry & PTE.P:
            fault = PageFault(gva, access_bits, level, Cause.NOT_PRESENT)
            return Walk(gva, access, levels, tuple(references), fault)
        if _reserved(entry, level, nxe):
            fault = PageFault(gva, PFError.P | PFError.RSVD | access_bits, level, Cause.RESERVED)
            return Walk(gva, access, levels, tuple(references), fault)
        if _is_leaf(entry, level):
            break
        table = entry & ADDRESS_MASK
    result = _check_access(gva, references, access, access_bits, wp=wp, nxe=nxe, smep=smep)
    if isinstance(result, Translation) and set_accessed_dirty:
        _set_accessed_dirty(memory, references, access.write)
    return Walk(gva, access, levels, tuple(references), result)


def _check_access(gva: GVA, refs: list[Reference], access: Access, access_bits: int, *,
                  wp: bool, nxe: bool, smep: bool) -> Translation | PageFault:
    """Apply the access rights of SDM §4.6 to a completed walk."""
    def first(flag: PTE, is_set: bool) -> int:
        return next(r.level for r in refs if bool(r.entry & flag) == is_set)

    writable = all(r.entry & PTE.RW for r in refs)
    user = all(r.entry & PTE.US for r in refs)
    executable = not (nxe and any(r.entry & PTE.NX for r in refs))
    fault: tuple[int, Cause] | None = None
    if access.user and not user:
        fault = (first(PTE.US, False), Cause.USER)
    elif access.write and not writable and (access.user or wp):   # CR0.WP guards supervisor writes
        fault = (first(PTE.RW, False), Cause.WRITE)
    elif access.fetch and not executable:
        fault = (first(PTE.NX, True), Cause.NX)
    elif access.fetch and smep and user and not access.user:
        fault = (refs[-1].level, Cause.SMEP)
    if fault:
        return PageFault(gva, PFError.P | access_bits, *fault)
    leaf = refs[-1]
    size = PAGE_SIZES[leaf.level]
    pa = (leaf.entry & ADDRESS_MASK & ~(size - 1)) | (gva & (size - 1))
    return Translation(gva, pa, size, writable, user, executable)


def _set_accessed_dirty(memory: PhysicalMemory, refs: list[Reference], write: bool) -> None:
    """Set A in every entry used and D in the leaf on a write, writing back only changes (§4.8)."""
    # Deliberately simple: the SDM lets a processor set A in entries it used
    # before a fault; this model updates nothing unless the translation succeeds.
    for ref in refs:
        new = ref.entry | PTE.A
        if write and ref is refs[-1]:
            new |= PTE.D
        if new != ref.entry:
            memory.write_u64(ref.address, new)


class Mapping(NamedTuple):
    """One page mapped in an address space."""

    gva: GVA
    pa: PA
    size: int
    flags: PTE


class AddressSpace:
    """The operating system's side: builds the page tables a ``walk`` reads, from ``cr3`` down."""

    def __repr__(self) -> str:
        return f"AddressSpace(cr3={self.cr3:#x}, levels={self.levels}, mappings={len(self.mappings())})"

    def __init__(self, memory: PhysicalMemory, levels: int = 4):
        self.memory = memory
        self.levels = _check_levels(levels)
        self._root: PA = memory.alloc_frame() * FRAME

    @property
    def cr3(self) -> int:
        return self._root

    # The builder reads and writes with memory.read/write, not read_u64/write_u64,
    # so that memory.reads and memory.writes count the walker's references only.
    def _peek(self, pa: PA) -> int:
        if pa + 8 > self.memory.size:
            return _ONES
        return struct.unpack("<Q", self.memory.read(pa, 8))[0]

    def _poke(self, pa: PA, value: int) -> None:
        self.memory.write(pa, struct.pack("<Q", value))

    def _table(self, pa: PA) -> tuple[int, ...]:
        return struct.unpack(f"<{ENTRIES}Q", self.memory.read(pa, FRAME))

    def entries(self, gva: GVA) -> list[Reference]:
        """The entries a walk of ``gva`` would read, down to a leaf or a non-present entry."""
        _check_gva(gva)
        if not is_canonical(gva, self.levels):
            raise VmkitError(f"{gva:#x} is not canonical: no page table maps it")
        table, path = self._root, []
        for level, index in zip(range(self.levels, 0, -1), decompose(gva, self.levels).indexes):
            entry = self._peek(table + 8 * index)
            path.append(Reference(level, LEVEL_NAMES[level], table, index, table + 8 * index, entry))
            if not entry & PTE.P or _is_leaf(entry, level):
                break
            table = entry & ADDRESS_MASK
        return path

    def map(self, gva: GVA, pa: PA, *, size: int = 4096, writable: bool = True,
            user: bool = True, executable: bool = True, global_: bool = False) -> None:
        """Map ``size`` bytes at ``gva`` to ``pa``, creating intermediate tables as needed."""
        leaf_level = {v: k for k, v in PAGE_SIZES.items()}.get(size)
        if leaf_level is None:
            raise VmkitError(f"size must be 4096, 2 << 20 or 1 << 30, not {size!r}")
        self._check_mappable(gva)
        expect_int(pa, "pa", maximum=(1 << MAXPHYADDR) - 1)
        if gva % size or pa % size:
            raise VmkitError(f"a {_size_name(size)} page needs gva and pa aligned to {size:#x}: "
                             f"got gva {gva:#x}, pa {pa:#x}")
        table = self._root
        for level, index in zip(range(self.levels, 0, -1), decompose(gva, self.levels).indexes):
            address, entry = table + 8 * index, self._peek(table + 8 * index)
            if entry & PTE.P and (level == leaf_level or _is_leaf(entry, level)):
                raise VmkitError(f"{gva:#x} overlaps an existing mapping (entry {LEVEL_NAMES[level]}"
                                 f"[{index}] = {entry:#x}); unmap it first")
            if level == leaf_level:
                break
            if not entry & PTE.P:
                # Intermediate entries allow everything, so the leaf alone decides.
                entry = self.memory.alloc_frame() * FRAME | PTE.P | PTE.RW | PTE.US
                self._poke(address, entry)
            table = entry & ADDRESS_MASK
        leaf = pa | PTE.P | (PTE.PS if leaf_level > 1 else 0) | (PTE.RW if writable else 0)
        leaf |= (PTE.US if user else 0) | (PTE.G if global_ else 0) | (0 if executable else PTE.NX)
        self._poke(address, leaf)

    def _check_mappable(self, gva: GVA) -> None:
        _check_gva(gva)
        if not is_canonical(gva, self.levels):
            raise VmkitError(f"{gva:#x} is not canonical with {self.levels} levels: "
                             f"sign-extend bit {_shift(self.levels) + 8}")

    def _leaf(self, gva: GVA) -> list[Reference]:
        path = self.entries(gva)
        if not path[-1].entry & PTE.P:
            raise VmkitError(f"{gva:#x} is not mapped")
        return path

    def unmap(self, gva: GVA) -> None:
        """Remove the mapping that contains ``gva``, and free the tables it leaves empty."""
        path = self._leaf(gva)
        self._poke(path[-1].address, 0)
        for child, parent in zip(reversed(path), reversed(path[:-1])):
            if any(self._table(child.table)):
                break
            self.memory.free_frame(child.table // FRAME)
            self._poke(parent.address, 0)

    def protect(self, gva: GVA, *, writable: bool | None = None, user: bool | None = None,
                executable: bool | None = None) -> None:
        """Change the rights of the page containing ``gva``; None leaves a right as it is."""
        leaf = self._leaf(gva)[-1]
        entry = leaf.entry
        for flag, allowed in ((PTE.RW, writable), (PTE.US, user)):
            if allowed is not None:
                entry = entry | flag if allowed else entry & ~int(flag)
        if executable is not None:
            entry = entry & ~int(PTE.NX) if executable else entry | PTE.NX
        self._poke(leaf.address, entry)

    def mappings(self) -> list[Mapping]:
        """Every mapped page, sorted by gva, with its leaf flags."""
        found: list[Mapping] = []
        self._collect(self._root, self.levels, 0, found)
        return sorted(found)

    def _collect(self, table: PA, level: int, base: GVA, found: list[Mapping]) -> None:
        for index, entry in enumerate(self._table(table)):
            if not entry & PTE.P:
                continue
            gva = base | index << _shift(level)
            if _is_leaf(entry, level):
                size = PAGE_SIZES[level]
                found.append(Mapping(_sign_extend(gva, self.levels), entry & ADDRESS_MASK & ~(size - 1),
                                     size, PTE(entry & ~ADDRESS_MASK)))
            else:
                self._collect(entry & ADDRESS_MASK, level - 1, gva, found)


__all__ = [
    "GVA", "PA", "PTE", "ADDRESS_MASK", "PFError", "Access", "READ", "WRITE", "FETCH",
    "USER_READ", "USER_WRITE", "USER_FETCH", "Reference", "Translation", "Cause", "PageFault",
    "GeneralProtection", "Walk", "Decomposition", "decompose", "is_canonical", "walk",
    "Mapping", "AddressSpace",
]
