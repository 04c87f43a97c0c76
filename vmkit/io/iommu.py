"""Intel VT-d DMA remapping (legacy mode) and SR-IOV: how a device assigned to a VM is fenced in.

A device's DMA carries a requester id (bus:device.function) and an address, the IOVA. The
IOMMU walks root entry -> context entry -> second-level page table and either produces the
host-physical address or blocks the request with a DMA remapping fault, which it records in
its fault log. Sources: Intel Virtualization Technology for Directed I/O, Architecture
Specification rev 3.x, §3 (DMA remapping, second-level translation), §9.1-9.3 (root and
context entry formats) and §7 (fault reasons, Table "Non-recoverable fault reason
encodings", also listed in Linux ``drivers/iommu/intel/dmar.c`` ``dma_remap_fault_reasons``).
SR-IOV routing ids follow the PCI-SIG SR-IOV specification (First VF Offset, VF Stride);
the 82599 limit comes from Linux ``drivers/net/ethernet/intel/ixgbe/ixgbe_sriov.c``.

The root table is one frame of 256 root entries, one per bus; each context table is one frame
of 256 context entries, one per devfn. Both are 128-bit entries written into a
``PhysicalMemory`` in the real format. The second-level tables are deliberately not a new
walker: VT-d second-level entries are close to EPT entries (bit 0 read, bit 1 write, bit 7
page size, address in bits 51:12), so this module reuses ``vmkit.memory.ept``: a domain's
second-level table is an ``EPT`` built with that builder, and the walk is ``ept_walk``. That
is also what Xen does when it shares the EPT with VT-d.

Deliberately simple: legacy (not scalable) mode, no IOTLB or context cache (so no
invalidation), no interrupt remapping, no ATS/PRI, no fault registers or fault interrupt
(the fault log is a plain list), execute requests not modelled, an EPT misconfiguration is
reported as a reserved-field fault. Taught in course/03_io/03_direct_access.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from vmkit.core import VmkitError, expect_int
from vmkit.memory.ept import (
    EPT,
    EPTAccess,
    EPTMisconfiguration,
    EPTP,
    EPTTranslation,
    ept_walk,
)
from vmkit.memory.physical import FRAME, MAXPHYADDR, PhysicalMemory

IOVA = int   # an I/O virtual address, what the device emits (a gpa for an assigned device)
HPA = int    # a host-physical address
RID = int    # a requester id, the 16-bit bus:device.function of PCI Express

ROOT_ENTRIES = 256      # one per bus number
CONTEXT_ENTRIES = 256   # one per devfn: device (5 bits) and function (3 bits)
ENTRY_BYTES = 16        # root and context entries are 128 bits: 256 x 16 = one 4 KiB frame
_POINTER = ((1 << MAXPHYADDR) - 1) & ~(FRAME - 1)   # bits 51:12 (63:HAW are reserved)

# Context entry, translation type (TT, bits 3:2), legacy mode (VT-d §9.3).
TT_UNTRANSLATED = 0   # untranslated requests go through the second-level table
TT_DEVICE_TLB = 1     # the same, and the device may also cache translations (ATS)
TT_PASS_THROUGH = 2   # untranslated requests pass with hpa = iova
# Address width (AW, bits 66:64, i.e. bits 2:0 of the upper half): adjusted guest address width.
AGAW_39, AGAW_48, AGAW_57 = 1, 2, 3          # 3-, 4- and 5-level second-level tables
AGAW_BITS = {AGAW_39: 39, AGAW_48: 48, AGAW_57: 57}
_AGAW_OF_WALK = {4: AGAW_48, 5: AGAW_57}     # an EPT's walk_length -> the context entry's AW
SL_LEVEL_NAMES = {5: "SL-PML5E", 4: "SL-PML4E", 3: "SL-PDPE", 2: "SL-PDE", 1: "SL-PTE"}

# SR-IOV. The 82599 (ixgbe) "supports up to 64 VFs per physical function" (TotalVFs); the
# Linux driver enables at most 63 so the PF keeps some queues for itself.
MAX_VFS_82599 = 64

DDIO_NOTE = (
    "DDIO (Intel Data Direct I/O, depuis les Xeon E5) : la carte réseau écrit ses données "
    "directement dans le cache de dernier niveau (LLC) plutôt qu'en mémoire, dans quelques "
    "voies du LLC seulement (MSR 0xC8B ; Farshin et al., USENIX ATC 2020). Cela change où la "
    "donnée arrive, pas la traduction : l'IOMMU traduit et filtre le DMA exactement de la même "
    "façon. Ce modèle n'a pas de cache, il écrit en mémoire.")


class FaultReason(IntEnum):
    """The VT-d non-recoverable fault reasons this model produces (VT-d §7, fault reason table)."""

    ROOT_ENTRY_NOT_PRESENT = 0x1      # P clear in the root entry of the requester's bus
    CONTEXT_ENTRY_NOT_PRESENT = 0x2   # P clear in the context entry of the requester's devfn
    INVALID_CONTEXT_ENTRY = 0x3       # a context entry programmed wrongly (TT 3, bad AW)
    ADDRESS_BEYOND_AGAW = 0x4         # the iova is wider than the context entry's address width
    WRITE_NOT_PERMITTED = 0x5         # a write, and W clear in some second-level entry
    READ_NOT_PERMITTED = 0x6          # a read, and R clear in some second-level entry
    SECOND_LEVEL_RESERVED = 0xC       # a reserved field set in a present second-level entry


_EXPLANATIONS = {
    FaultReason.ROOT_ENTRY_NOT_PRESENT: "entrée racine non présente pour le bus {bus}",
    FaultReason.CONTEXT_ENTRY_NOT_PRESENT:
        "entrée de contexte non présente : périphérique non attaché",
    FaultReason.INVALID_CONTEXT_ENTRY: "entrée de contexte mal programmée",
    FaultReason.ADDRESS_BEYOND_AGAW: "adresse au-delà de la largeur d'adresse du domaine",
    FaultReason.WRITE_NOT_PERMITTED:
        "écriture DMA vers une page sans droit d'écriture (ou non mappée)",
    FaultReason.READ_NOT_PERMITTED: "lecture DMA d'une page sans droit de lecture (ou non mappée)",
    FaultReason.SECOND_LEVEL_RESERVED: "champ réservé dans une entrée de table de second niveau",
}


def requester_id(bus: int, device: int, function: int) -> RID:
    """The 16-bit requester id: bus in bits 15:8, device in 7:3, function in 2:0."""
    expect_int(bus, "bus", maximum=0xFF)
    expect_int(device, "device", maximum=0x1F)
    expect_int(function, "function", maximum=0x7)
    return bus << 8 | device << 3 | function


def split_requester_id(rid: RID) -> tuple[int, int, int]:
    """(bus, device, function) of a requester id."""
    expect_int(rid, "requester id", maximum=0xFFFF)
    return rid >> 8, rid >> 3 & 0x1F, rid & 0x7


def _bdf(rid: RID) -> str:
    bus, device, function = split_requester_id(rid)
    return f"{bus:02x}:{device:02x}.{function}"


@dataclass(frozen=True)
class RootEntry:
    """A legacy-mode root entry (VT-d §9.1).

    127:64 reserved | 63:12 CTP, context-table pointer | 11:1 reserved | 0 P, present
    """

    present: bool = False
    context_table: HPA = 0

    def __post_init__(self):
        expect_int(self.context_table, "context_table", maximum=(1 << MAXPHYADDR) - 1)
        if self.context_table % FRAME:
            raise VmkitError(f"context_table must be 4 KiB aligned, not {self.context_table:#x}")

    def encode(self) -> int:
        """The 128-bit value as the root table holds it."""
        return int(self.present) | self.context_table

    @classmethod
    def decode(cls, value: int) -> RootEntry:
        expect_int(value, "root entry", maximum=(1 << 128) - 1)
        return cls(bool(value & 1), value & _POINTER)


@dataclass(frozen=True)
class ContextEntry:
    """A legacy-mode context entry (VT-d §9.3).

    lower 64:  63:12 SLPTPTR, second-level page-table pointer | 11:4 reserved |
               3:2 TT, translation type | 1 FPD, fault processing disable | 0 P, present
    upper 64:  63:24 reserved | 23:8 DID, domain id | 7 reserved | 6:3 available | 2:0 AW
    """

    present: bool = False
    translation_type: int = TT_UNTRANSLATED
    second_level: HPA = 0
    address_width: int = AGAW_48
    domain_id: int = 0
    fault_processing_disable: bool = False

    def __post_init__(self):
        expect_int(self.translation_type, "translation_type", maximum=0b11)
        expect_int(self.second_level, "second_level", maximum=(1 << MAXPHYADDR) - 1)
        if self.second_level % FRAME:
            raise VmkitError(f"second_level must be 4 KiB aligned, not {self.second_level:#x}")
        expect_int(self.address_width, "address_width", maximum=0b111)
        expect_int(self.domain_id, "domain_id", maximum=0xFFFF)

    def encode(self) -> int:
        """The 128-bit value as the context table holds it."""
        low = (int(self.present) | int(self.fault_processing_disable) << 1
               | self.translation_type << 2 | self.second_level)
        high = self.address_width | self.domain_id << 8
        return high << 64 | low

    @classmethod
    def decode(cls, value: int) -> ContextEntry:
        expect_int(value, "context entry", maximum=(1 << 128) - 1)
        low, high = value & ((1 << 64) - 1), value >> 64
        return cls(present=bool(low & 1), translation_type=low >> 2 & 0b11,
                   second_level=low & _POINTER, address_width=high & 0b111,
                   domain_id=high >> 8 & 0xFFFF, fault_processing_disable=bool(low & 2))


@dataclass(frozen=True)
class RemappingReference:
    """One entry the IOMMU read: which table, which slot, what it held."""

    name: str       # "root entry", "context entry", "SL-PML4E", ... "SL-PTE"
    table: HPA
    index: int
    address: HPA    # table + entry size * index
    entry: int      # 128 bits for root and context entries, 64 for second-level ones


@dataclass(frozen=True)
class Translation:
    """A DMA request the IOMMU let through: where it lands in host memory."""

    source_id: RID
    iova: IOVA
    write: bool
    hpa: HPA
    page_size: int
    domain_id: int
    references: tuple[RemappingReference, ...]

    @property
    def memory_references(self) -> int:
        """Entries read by the IOMMU (a 128-bit entry counts once), the DMA itself not counted."""
        return len(self.references)


@dataclass(frozen=True)
class RemappingFault:
    """A DMA request the IOMMU blocked, as its fault recording registers would report it."""

    source_id: RID       # SID: the requester id of the faulting device
    iova: IOVA           # the spec records the page (FI); this keeps the whole address
    write: bool          # the fault record's request type: write or read
    reason: FaultReason
    domain_id: int | None
    references: tuple[RemappingReference, ...]

    @property
    def memory_references(self) -> int:
        return len(self.references)

    def explain(self) -> str:
        """A French sentence saying why the request was blocked."""
        bus = self.source_id >> 8
        what = _EXPLANATIONS[self.reason].format(bus=f"{bus:#04x}")
        kind = "écriture" if self.write else "lecture"
        return f"{kind} DMA de {_bdf(self.source_id)} à {self.iova:#x} bloquée : {what}"

    def __str__(self) -> str:
        return f"DMAR fault {int(self.reason):#x} ({self.reason.name}): {self.explain()}"


class _Table:
    """A frame of 256 entries of 128 bits in ``memory``; the builder side does not count reads."""

    def __init__(self, memory: PhysicalMemory):
        self.memory = memory
        self.base: HPA = memory.alloc_frame() * FRAME

    def peek(self, index: int) -> int:
        raw = self.memory.read(self.base + ENTRY_BYTES * index, ENTRY_BYTES)
        return int.from_bytes(raw, "little")

    def poke(self, index: int, value: int) -> None:
        self.memory.write(self.base + ENTRY_BYTES * index, value.to_bytes(ENTRY_BYTES, "little"))


class RootTable(_Table):
    """The root table: 256 root entries, one per bus, in one frame (VT-d §3.4.2)."""

    def __repr__(self) -> str:
        return f"RootTable(base={self.base:#x})"

    def __getitem__(self, bus: int) -> RootEntry:
        return RootEntry.decode(self.peek(expect_int(bus, "bus", maximum=ROOT_ENTRIES - 1)))

    def __setitem__(self, bus: int, entry: RootEntry) -> None:
        self.poke(expect_int(bus, "bus", maximum=ROOT_ENTRIES - 1), entry.encode())


class ContextTable(_Table):
    """A context table: 256 context entries, one per devfn of one bus, in one frame."""

    def __repr__(self) -> str:
        return f"ContextTable(base={self.base:#x})"

    def __getitem__(self, devfn: int) -> ContextEntry:
        return ContextEntry.decode(self.peek(expect_int(devfn, "devfn", maximum=0xFF)))

    def __setitem__(self, devfn: int, entry: ContextEntry) -> None:
        self.poke(expect_int(devfn, "devfn", maximum=0xFF), entry.encode())


def _read_entry(memory: PhysicalMemory, table: HPA, index: int, name: str) -> RemappingReference:
    """Read a 128-bit entry as the IOMMU does (two 64-bit reads for PhysicalMemory's counters)."""
    address = table + ENTRY_BYTES * index
    value = memory.read_u64(address) | memory.read_u64(address + 8) << 64
    return RemappingReference(name, table, index, address, value)


class IOMMU:
    """One DMA-remapping hardware unit in legacy mode, with its root table and fault log."""

    def __init__(self, memory: PhysicalMemory):
        if not isinstance(memory, PhysicalMemory):
            raise VmkitError(f"memory must be a PhysicalMemory, not {memory!r}")
        self.memory = memory
        self.root_table = RootTable(memory)   # RTADDR_REG points here
        self.context_tables: dict[int, ContextTable] = {}
        self.domains: dict[int, EPT] = {}
        self.fault_log: list[RemappingFault] = []

    def __repr__(self) -> str:
        return (f"IOMMU(root_table={self.root_table.base:#x}, domains={sorted(self.domains)}, "
                f"faults={len(self.fault_log)})")

    def attach(self, bus: int, device: int, function: int, domain_id: int,
               second_level: EPT) -> ContextEntry:
        """Put a device in a domain: write its root entry (if needed) and its context entry."""
        rid = requester_id(bus, device, function)
        expect_int(domain_id, "domain_id", maximum=0xFFFF)
        if not isinstance(second_level, EPT) or second_level.memory is not self.memory:
            raise VmkitError("second_level must be an EPT built in the IOMMU's memory")
        known = self.domains.get(domain_id)
        if known is not None and known is not second_level:
            # VT-d: context entries with the same DID must point to the same tables, because
            # the IOTLB and context cache are tagged by domain id.
            raise VmkitError(f"domain {domain_id} already uses {known!r}; pick another domain id")
        self.domains[domain_id] = second_level
        if bus not in self.context_tables:
            self.context_tables[bus] = ContextTable(self.memory)
            self.root_table[bus] = RootEntry(True, self.context_tables[bus].base)
        entry = ContextEntry(present=True, translation_type=TT_UNTRANSLATED,
                             second_level=second_level.root,
                             address_width=_AGAW_OF_WALK[second_level.walk_length],
                             domain_id=domain_id)
        self.context_tables[bus][rid & 0xFF] = entry
        return entry

    def detach(self, bus: int, device: int, function: int) -> None:
        """Clear the device's context entry: from now on its DMA faults.

        The domain id is released with its last device, so it may name new tables.
        """
        rid = requester_id(bus, device, function)
        if bus not in self.context_tables:
            return
        old = self.context_tables[bus][rid & 0xFF]
        self.context_tables[bus][rid & 0xFF] = ContextEntry()
        if old.present and not any(
                table[devfn].present and table[devfn].domain_id == old.domain_id
                for table in self.context_tables.values() for devfn in range(256)):
            del self.domains[old.domain_id]

    def translate(self, bus: int, device: int, function: int, iova: IOVA,
                  write: bool) -> Translation | RemappingFault:
        """Translate one DMA request as the hardware does; a fault is logged and returned."""
        rid = requester_id(bus, device, function)
        expect_int(iova, "iova", maximum=(1 << 64) - 1)
        if not isinstance(write, bool):
            raise VmkitError(f"write must be a bool, not {write!r}")
        result = self._translate(rid, iova, write)
        if isinstance(result, RemappingFault):
            self._record(result)
        return result

    def _record(self, fault: RemappingFault) -> None:
        context = next((r for r in fault.references if r.name == "context entry"), None)
        if context is not None and ContextEntry.decode(context.entry).fault_processing_disable:
            return   # FPD: faults past the context entry are not recorded (VT-d §9.3)
        self.fault_log.append(fault)

    def _translate(self, rid: RID, iova: IOVA, write: bool) -> Translation | RemappingFault:
        refs = [_read_entry(self.memory, self.root_table.base, rid >> 8, "root entry")]
        root = RootEntry.decode(refs[-1].entry)
        if not root.present:
            return RemappingFault(rid, iova, write, FaultReason.ROOT_ENTRY_NOT_PRESENT, None,
                                  tuple(refs))
        refs.append(_read_entry(self.memory, root.context_table, rid & 0xFF, "context entry"))
        context = ContextEntry.decode(refs[-1].entry)

        def fault(reason: FaultReason, domain: int | None = context.domain_id) -> RemappingFault:
            return RemappingFault(rid, iova, write, reason, domain, tuple(refs))

        if not context.present:
            return fault(FaultReason.CONTEXT_ENTRY_NOT_PRESENT, None)
        if context.translation_type == TT_PASS_THROUGH:
            return Translation(rid, iova, write, iova, FRAME, context.domain_id, tuple(refs))
        walk_length = {AGAW_48: 4, AGAW_57: 5}.get(context.address_width)
        if context.translation_type not in (TT_UNTRANSLATED, TT_DEVICE_TLB) or walk_length is None:
            return fault(FaultReason.INVALID_CONTEXT_ENTRY)
        if iova >> AGAW_BITS[context.address_width]:
            return fault(FaultReason.ADDRESS_BEYOND_AGAW)
        # The second-level walk is an EPT walk (same entry format, see the module docstring).
        access = EPTAccess.WRITE if write else EPTAccess.READ
        walk = ept_walk(self.memory, EPTP(context.second_level, walk_length), iova, access,
                        gla_valid=False)
        refs += [RemappingReference(SL_LEVEL_NAMES[r.level], r.table, r.index, r.address, r.entry)
                 for r in walk.references]
        if isinstance(walk.result, EPTTranslation):
            return Translation(rid, iova, write, walk.result.hpa, walk.result.page_size,
                               context.domain_id, tuple(refs))
        if isinstance(walk.result, EPTMisconfiguration):
            return fault(FaultReason.SECOND_LEVEL_RESERVED)
        # Second-level entries have no present bit of their own: R = W = 0 is "not present",
        # and VT-d reports it as a missing read or write permission (fault reasons 5 and 6).
        return fault(FaultReason.WRITE_NOT_PERMITTED if write else FaultReason.READ_NOT_PERMITTED)


class Device:
    """A PCI Express function doing DMA through the IOMMU, e.g. a NIC's receive engine."""

    def __init__(self, name: str, iommu: IOMMU, bus: int = 0, device: int = 0,
                 function: int = 0):
        if not isinstance(iommu, IOMMU):
            raise VmkitError(f"iommu must be an IOMMU, not {iommu!r}")
        self.name = name
        self.iommu = iommu
        self.rid = requester_id(bus, device, function)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.bdf})"

    @property
    def bus(self) -> int:
        return self.rid >> 8

    @property
    def device(self) -> int:
        return self.rid >> 3 & 0x1F

    @property
    def function(self) -> int:
        return self.rid & 0x7

    @property
    def bdf(self) -> str:
        """bus:device.function as lspci prints it."""
        return _bdf(self.rid)

    def attach(self, domain_id: int, second_level: EPT) -> ContextEntry:
        """Assign this function to a domain (shorthand for ``IOMMU.attach``)."""
        return self.iommu.attach(self.bus, self.device, self.function, domain_id, second_level)

    def _translate_range(self, iova: IOVA, length: int,
                         write: bool) -> list[tuple[Translation, int]] | RemappingFault:
        """Translate every page the transfer touches; the first fault stops it."""
        expect_int(iova, "iova")
        expect_int(length, "length", minimum=1)
        pieces: list[tuple[Translation, int]] = []
        at, end = iova, iova + length
        while at < end:
            result = self.iommu.translate(self.bus, self.device, self.function, at, write)
            if isinstance(result, RemappingFault):
                return result
            size = min(end, (at // result.page_size + 1) * result.page_size) - at
            pieces.append((result, size))
            at += size
        return pieces

    def dma_write(self, iova: IOVA, data: bytes) -> tuple[Translation, ...] | RemappingFault:
        """Write ``data`` at ``iova``; blocked whole, host memory untouched, if any page faults.

        Deliberately simple: real hardware checks each transaction; this model translates the
        whole transfer before moving a byte.
        """
        if not isinstance(data, (bytes, bytearray)):
            raise VmkitError(f"data must be bytes, not {type(data).__name__}")
        pieces = self._translate_range(iova, len(data), write=True)
        if isinstance(pieces, RemappingFault):
            return pieces
        offset = 0
        for translation, size in pieces:
            if translation.hpa + size <= self.iommu.memory.size:   # else lost, as on a real bus
                self.iommu.memory.write(translation.hpa, bytes(data[offset:offset + size]))
            offset += size
        return tuple(translation for translation, _ in pieces)

    def dma_read(self, iova: IOVA, length: int) -> bytes | RemappingFault:
        """Read ``length`` bytes at ``iova`` from host memory, or the fault that blocked it."""
        pieces = self._translate_range(iova, length, write=False)
        if isinstance(pieces, RemappingFault):
            return pieces
        memory = self.iommu.memory
        # beyond installed memory a read returns all ones, as PhysicalMemory.read_u64 does
        return b"".join(memory.read(t.hpa, size) if t.hpa + size <= memory.size
                        else b"\xff" * size for t, size in pieces)


class VirtualFunction(Device):
    """An SR-IOV virtual function: moves data only, has its own requester id, goes to one VM."""

    def __init__(self, pf: PhysicalFunction, number: int, rid: RID):
        self.pf = pf
        self.number = number   # 1-based, as in the SR-IOV specification's VF RID formula
        super().__init__(f"{pf.name}-vf{number - 1}", pf.iommu, *split_requester_id(rid))


class PhysicalFunction(Device):
    """An SR-IOV physical function: a full PCIe function that can create virtual functions.

    VF n (1-based) gets routing id PF RID + First VF Offset + (n - 1) * VF Stride (PCI-SIG
    SR-IOV specification). Real devices advertise their own offset and stride in the SR-IOV
    extended capability; this model defaults to 1 and 1 so VFs take the next function numbers
    (carrying into device and bus numbers, as ARI routing ids do).
    """

    def __init__(self, name: str, iommu: IOMMU, bus: int = 0, device: int = 0,
                 function: int = 0, *, max_vfs: int = MAX_VFS_82599, first_vf_offset: int = 1,
                 vf_stride: int = 1):
        super().__init__(name, iommu, bus, device, function)
        self.max_vfs = expect_int(max_vfs, "max_vfs", maximum=0xFFFF)   # TotalVFs
        self.first_vf_offset = expect_int(first_vf_offset, "first_vf_offset", minimum=1)
        self.vf_stride = expect_int(vf_stride, "vf_stride", minimum=1)
        self.vfs: tuple[VirtualFunction, ...] = ()

    def vf_rid(self, number: int) -> RID:
        """The routing id of VF ``number`` (1-based)."""
        expect_int(number, "VF number", minimum=1, maximum=self.max_vfs)
        rid = self.rid + self.first_vf_offset + (number - 1) * self.vf_stride
        if rid > 0xFFFF:
            raise VmkitError(f"VF {number} would need routing id {rid:#x}, beyond 16 bits; "
                             "use a smaller offset or stride")
        return rid

    def enable_vfs(self, n: int) -> tuple[VirtualFunction, ...]:
        """Create ``n`` VFs (writing NumVFs and setting VF Enable), at most ``max_vfs``."""
        expect_int(n, "n")
        if n > self.max_vfs:
            raise VmkitError(f"{self.name} supports at most {self.max_vfs} VFs (TotalVFs), "
                             f"not {n}")
        if self.vfs:
            raise VmkitError(f"{self.name} already has {len(self.vfs)} VFs; call disable_vfs() "
                             "first, as Linux wants 0 written to sriov_numvfs")
        self.vfs = tuple(VirtualFunction(self, k, self.vf_rid(k)) for k in range(1, n + 1))
        return self.vfs

    def disable_vfs(self) -> None:
        """Remove every VF, detaching each from its domain."""
        for vf in self.vfs:
            self.iommu.detach(vf.bus, vf.device, vf.function)
        self.vfs = ()

