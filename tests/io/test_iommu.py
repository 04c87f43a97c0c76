"""Tests for vmkit.io.iommu: VT-d DMA remapping (legacy mode) and SR-IOV functions."""

import pytest

from vmkit.core import VmkitError
from vmkit.io.iommu import (
    AGAW_48,
    DDIO_NOTE,
    IOMMU,
    TT_PASS_THROUGH,
    ContextEntry,
    Device,
    FaultReason,
    PhysicalFunction,
    RemappingFault,
    RootEntry,
    Translation,
    requester_id,
)
from vmkit.memory.ept import EPT
from vmkit.memory.physical import FRAME, PhysicalMemory

GUEST_RAM = 0x40_0000   # hpa of the first frame given to domain 1
BUFFER = 0x1000         # iova (a gpa of the VM) of the NIC's receive buffer


def _machine(writable=True):
    memory = PhysicalMemory(1 << 24)
    iommu = IOMMU(memory)
    ept = EPT(memory)
    ept.map(BUFFER, GUEST_RAM, write=writable)
    nic = Device("nic", iommu, bus=3, device=0, function=0)
    nic.attach(1, ept)
    return memory, iommu, nic


def test_root_entry_encoding():
    """A root entry is P in bit 0 and the context-table pointer in bits 63:12, high half zero."""
    entry = RootEntry(present=True, context_table=0x12_3000)
    assert entry.encode() == 0x12_3001
    assert RootEntry.decode(0x12_3001) == entry


def test_context_entry_encoding():
    """A context entry puts P, TT and SLPTPTR in its low half, AW and DID in its high half."""
    entry = ContextEntry(present=True, translation_type=TT_PASS_THROUGH, second_level=0x5000,
                         address_width=AGAW_48, domain_id=0x1234)
    assert entry.encode() == (0x1234 << 8 | 2) << 64 | 0x5000 | 2 << 2 | 1
    assert ContextEntry.decode(entry.encode()) == entry


def test_attach_writes_root_and_context_entries_in_memory():
    """attach() sets the bus's root entry and the devfn's 128-bit context entry in memory."""
    memory, iommu, nic = _machine()
    root = iommu.root_table[3]
    raw = int.from_bytes(memory.read(root.context_table + 16 * 0, 16), "little")
    assert root.present
    assert ContextEntry.decode(raw) == ContextEntry(True, 0, iommu.domains[1].root, AGAW_48, 1)


def test_dma_inside_mapping_lands_at_hpa():
    """A DMA write inside the domain's mapping lands at the hpa the second-level table gives."""
    memory, iommu, nic = _machine()
    result = nic.dma_write(BUFFER + 0x10, b"packet")
    assert isinstance(result, tuple) and result[0].hpa == GUEST_RAM + 0x10
    assert memory.read(GUEST_RAM + 0x10, 6) == b"packet"
    assert nic.dma_read(BUFFER + 0x10, 6) == b"packet"


def test_dma_outside_mapping_is_blocked_and_logged():
    """A rogue DMA outside the domain's mapping is blocked, logged, and changes no host byte."""
    memory, iommu, nic = _machine()
    before = memory.read(0, memory.size)
    fault = nic.dma_write(0x20_0000, b"rogue")
    assert isinstance(fault, RemappingFault)
    assert fault.reason == FaultReason.WRITE_NOT_PERMITTED
    assert iommu.fault_log == [fault]
    assert memory.read(0, memory.size) == before


def test_dma_crossing_out_of_mapping_writes_nothing():
    """A write that starts mapped but runs into an unmapped page is blocked whole."""
    memory, iommu, nic = _machine()
    fault = nic.dma_write(BUFFER + FRAME - 2, b"spill")
    assert isinstance(fault, RemappingFault) and fault.iova == BUFFER + FRAME
    assert memory.read(GUEST_RAM + FRAME - 2, 2) == bytes(2)


def test_read_outside_mapping_faults_with_reason_6():
    """A DMA read of an unmapped iova faults with reason 6, read not permitted."""
    _, _, nic = _machine()
    assert nic.dma_read(0x9000, 4).reason == FaultReason.READ_NOT_PERMITTED == 6


def test_write_to_read_only_mapping_is_blocked():
    """A DMA write to a page mapped read-only faults with reason 5 and leaves memory alone."""
    memory, iommu, nic = _machine(writable=False)
    fault = nic.dma_write(BUFFER, b"x")
    assert fault.reason == FaultReason.WRITE_NOT_PERMITTED == 5
    assert memory.read(GUEST_RAM, 1) == b"\0"


def test_unattached_device_faults_context_not_present():
    """A device on an attached bus but without its own context entry faults with reason 2."""
    _, iommu, _ = _machine()
    stray = Device("stray", iommu, bus=3, device=1, function=0)
    fault = stray.dma_read(BUFFER, 4)
    assert fault.reason == FaultReason.CONTEXT_ENTRY_NOT_PRESENT == 2
    assert fault.source_id == requester_id(3, 1, 0)


def test_device_on_unknown_bus_faults_root_not_present():
    """A device on a bus with no root entry faults with reason 1 after one reference."""
    _, iommu, _ = _machine()
    fault = iommu.translate(7, 0, 0, BUFFER, False)
    assert fault.reason == FaultReason.ROOT_ENTRY_NOT_PRESENT == 1
    assert fault.memory_references == 1


def test_iova_beyond_address_width_faults_reason_4():
    """An iova wider than the 48-bit address width faults with reason 4."""
    _, iommu, _ = _machine()
    assert iommu.translate(3, 0, 0, 1 << 48, False).reason == FaultReason.ADDRESS_BEYOND_AGAW


def test_translation_records_memory_references():
    """A translation reads the root entry, the context entry, then four second-level entries."""
    memory, iommu, _ = _machine()
    reads = memory.reads
    result = iommu.translate(3, 0, 0, BUFFER, False)
    assert isinstance(result, Translation)
    assert [r.name for r in result.references] == [
        "root entry", "context entry", "SL-PML4E", "SL-PDPE", "SL-PDE", "SL-PTE"]
    assert result.references[0].address == iommu.root_table.base + 16 * 3
    assert memory.reads - reads == 2 + 2 + 4   # 128-bit entries are two 64-bit reads here


def test_two_vfs_in_two_domains_cannot_reach_each_other():
    """Two VFs attached to two domains each reach their own memory and fault on the other's."""
    memory = PhysicalMemory(1 << 24)
    iommu = IOMMU(memory)
    pf = PhysicalFunction("eth0", iommu, bus=2)
    vf_a, vf_b = pf.enable_vfs(2)
    ept_a, ept_b = EPT(memory), EPT(memory)
    ept_a.map(BUFFER, 0x40_0000)
    ept_b.map(BUFFER + FRAME, 0x50_0000)
    vf_a.attach(1, ept_a)
    vf_b.attach(2, ept_b)
    assert vf_a.dma_write(BUFFER, b"A")[0].hpa == 0x40_0000
    assert vf_b.dma_write(BUFFER + FRAME, b"B")[0].hpa == 0x50_0000
    assert isinstance(vf_a.dma_read(BUFFER + FRAME, 1), RemappingFault)
    assert isinstance(vf_b.dma_read(BUFFER, 1), RemappingFault)


def test_vf_requester_ids_follow_offset_and_stride():
    """VF n gets routing id PF RID + First VF Offset + (n - 1) * VF Stride."""
    iommu = IOMMU(PhysicalMemory())
    pf = PhysicalFunction("eth0", iommu, bus=2, first_vf_offset=0x80, vf_stride=2)
    assert [vf.rid for vf in pf.enable_vfs(3)] == [0x280, 0x282, 0x284]


def test_enable_vfs_beyond_max_is_refused():
    """Asking for more VFs than TotalVFs (64 by default, as on the 82599) raises."""
    pf = PhysicalFunction("eth0", IOMMU(PhysicalMemory()))
    with pytest.raises(VmkitError, match="at most 64"):
        pf.enable_vfs(65)
    assert pf.vfs == ()


def test_domain_id_reused_with_other_tables_is_refused():
    """One domain id cannot name two different second-level tables."""
    memory, iommu, nic = _machine()
    with pytest.raises(VmkitError, match="domain 1"):
        iommu.attach(3, 1, 0, 1, EPT(memory))


def test_fault_explanation_is_french():
    """A fault explains itself in French, naming the device and the reason."""
    _, _, nic = _machine()
    assert "03:00.0" in nic.dma_read(0x9000, 1).explain()
    assert "lecture" in nic.dma_read(0x9000, 1).explain()


def test_ddio_note_says_translation_is_unchanged():
    """The DDIO note says DDIO changes where data lands, not the IOMMU's translation."""
    assert "LLC" in DDIO_NOTE and "traduction" in DDIO_NOTE


def test_detached_device_dma_faults():
    """After detach, the device's DMA finds no present context entry and faults."""
    _, iommu, nic = _machine()
    iommu.detach(3, 0, 0)
    assert isinstance(nic.dma_read(BUFFER, 1), RemappingFault)


def test_detaching_the_last_device_releases_the_domain_id():
    """Domain 1 with no device left may be reused with new second-level tables."""
    memory, iommu, nic = _machine()
    iommu.detach(3, 0, 0)
    assert 1 not in iommu.domains
    nic.attach(1, EPT(memory))          # would be refused while domain 1 kept its old EPT


def test_domain_id_stays_while_another_device_uses_it():
    """Detaching one of two devices of a domain keeps the domain id bound to its tables."""
    memory, iommu, nic = _machine()
    disk = Device("disk", iommu, bus=3, device=1, function=0)
    disk.attach(1, iommu.domains[1])
    iommu.detach(3, 0, 0)
    with pytest.raises(VmkitError):
        nic.attach(1, EPT(memory))
