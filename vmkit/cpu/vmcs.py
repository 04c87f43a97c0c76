"""The VMCS: its field encodings, the VM-execution controls, exit qualifications.

The vocabulary a VMM uses to talk to the processor about one guest: the
encodings of the VMCS fields (width and type are encoded in the number), the
pin-based, processor-based, exit and entry control bits, the layouts of the
exit qualifications and of the interruption-information fields, and the VMCS
region itself with its launch state. ``vmx.py`` drives it.

Source: Intel SDM Vol. 3C (2016 numbering), ch. 24 (VMCS: field encodings in
App. B, controls in §24.6-24.8), ch. 27 (exit qualifications, Tables 27-3 and
27-5), §24.8.3 (VM-entry interruption-information field); Linux
arch/x86/include/asm/vmx.h for the names.
Taught in course/01_cpu/02_vtx_lifecycle.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

from vmkit.core import VmkitError

HPA = int  # a host-physical address: VMXON and VMCS regions live there
PAGE = 0x1000
_U64 = (1 << 64) - 1

class VMCSField(IntEnum):
    """VMCS field encodings, with Linux's ``enum vmcs_field`` names (SDM App. B)."""

    VIRTUAL_PROCESSOR_ID = 0x0000
    GUEST_ES_SELECTOR = 0x0800
    GUEST_CS_SELECTOR = 0x0802
    GUEST_SS_SELECTOR = 0x0804
    GUEST_DS_SELECTOR = 0x0806
    GUEST_TR_SELECTOR = 0x080E
    HOST_CS_SELECTOR = 0x0C02
    HOST_SS_SELECTOR = 0x0C04
    HOST_TR_SELECTOR = 0x0C0C
    IO_BITMAP_A = 0x2000
    IO_BITMAP_B = 0x2002
    MSR_BITMAP = 0x2004
    TSC_OFFSET = 0x2010
    EPT_POINTER = 0x201A
    GUEST_PHYSICAL_ADDRESS = 0x2400
    VMCS_LINK_POINTER = 0x2800
    PIN_BASED_VM_EXEC_CONTROL = 0x4000
    CPU_BASED_VM_EXEC_CONTROL = 0x4002
    EXCEPTION_BITMAP = 0x4004
    CR3_TARGET_COUNT = 0x400A
    VM_EXIT_CONTROLS = 0x400C
    VM_ENTRY_CONTROLS = 0x4012
    VM_ENTRY_INTR_INFO_FIELD = 0x4016
    VM_ENTRY_EXCEPTION_ERROR_CODE = 0x4018
    VM_ENTRY_INSTRUCTION_LEN = 0x401A
    SECONDARY_VM_EXEC_CONTROL = 0x401E
    VM_INSTRUCTION_ERROR = 0x4400
    VM_EXIT_REASON = 0x4402
    VM_EXIT_INTR_INFO = 0x4404
    VM_EXIT_INTR_ERROR_CODE = 0x4406
    IDT_VECTORING_INFO_FIELD = 0x4408
    VM_EXIT_INSTRUCTION_LEN = 0x440C
    VMX_INSTRUCTION_INFO = 0x440E
    VM_EXIT_INSTRUCTION_INFO = 0x440E  # the SDM's name for Linux's VMX_INSTRUCTION_INFO
    GUEST_GDTR_LIMIT = 0x4810
    GUEST_IDTR_LIMIT = 0x4812
    GUEST_INTERRUPTIBILITY_INFO = 0x4824
    GUEST_ACTIVITY_STATE = 0x4826
    VMX_PREEMPTION_TIMER_VALUE = 0x482E
    CR0_GUEST_HOST_MASK = 0x6000
    CR4_GUEST_HOST_MASK = 0x6002
    CR0_READ_SHADOW = 0x6004
    CR4_READ_SHADOW = 0x6006
    CR3_TARGET_VALUE0 = 0x6008
    CR3_TARGET_VALUE1 = 0x600A
    CR3_TARGET_VALUE2 = 0x600C
    CR3_TARGET_VALUE3 = 0x600E
    EXIT_QUALIFICATION = 0x6400
    GUEST_LINEAR_ADDRESS = 0x640A
    GUEST_CR0 = 0x6800
    GUEST_CR3 = 0x6802
    GUEST_CR4 = 0x6804
    GUEST_GDTR_BASE = 0x6816
    GUEST_IDTR_BASE = 0x6818
    GUEST_RSP = 0x681C
    GUEST_RIP = 0x681E
    GUEST_RFLAGS = 0x6820
    HOST_CR0 = 0x6C00
    HOST_CR3 = 0x6C02
    HOST_CR4 = 0x6C04
    HOST_GDTR_BASE = 0x6C0C
    HOST_IDTR_BASE = 0x6C0E
    HOST_RSP = 0x6C14
    HOST_RIP = 0x6C16


# The encoding describes the field (SDM 24.11.2, Table 24-17):
#
#   31   15 14  13 12 11  10 9        1 0
#  +-----+-+------+--+------+----------+-+
#  |  0  |0|width |0 | type |  index   |A|   A = access type: 0 full, 1 high 32 bits
#  +-----+-+------+--+------+----------+-+
#   width: 0 16-bit, 1 64-bit, 2 32-bit, 3 natural
#   type:  0 control, 1 VM-exit information (read-only), 2 guest state, 3 host state
_WIDTHS: tuple[int | str, ...] = (16, 64, 32, "natural")
_TYPES = ("control", "exit information", "guest state", "host state")


def field_width(encoding: int) -> int | str:
    """The width of a VMCS field, from bits 14:13 of its encoding: 16, 32, 64 or "natural"."""
    return _WIDTHS[encoding >> 13 & 3]


def field_type(encoding: int) -> str:
    """The area of a VMCS field, from bits 11:10 of its encoding."""
    return _TYPES[encoding >> 10 & 3]


def is_read_only(encoding: int) -> bool:
    """VM-exit information fields are read-only: VMWRITE to them fails with error 13."""
    return encoding >> 10 & 3 == 1


class PinBasedControls(IntFlag):
    """PIN_BASED_VM_EXEC_CONTROL bits (SDM 24.6.1, Table 24-5)."""

    EXTERNAL_INTERRUPT_EXITING = 1 << 0
    NMI_EXITING = 1 << 3
    VIRTUAL_NMIS = 1 << 5
    ACTIVATE_PREEMPTION_TIMER = 1 << 6
    POSTED_INTERRUPTS = 1 << 7


class ProcBasedControls(IntFlag):
    """CPU_BASED_VM_EXEC_CONTROL bits (SDM 24.6.2, Table 24-6)."""

    INTERRUPT_WINDOW_EXITING = 1 << 2
    USE_TSC_OFFSETTING = 1 << 3
    HLT_EXITING = 1 << 7
    INVLPG_EXITING = 1 << 9
    MWAIT_EXITING = 1 << 10
    RDPMC_EXITING = 1 << 11
    RDTSC_EXITING = 1 << 12
    CR3_LOAD_EXITING = 1 << 15
    CR3_STORE_EXITING = 1 << 16
    CR8_LOAD_EXITING = 1 << 19
    CR8_STORE_EXITING = 1 << 20
    USE_TPR_SHADOW = 1 << 21
    NMI_WINDOW_EXITING = 1 << 22
    MOV_DR_EXITING = 1 << 23
    UNCONDITIONAL_IO_EXITING = 1 << 24
    USE_IO_BITMAPS = 1 << 25  # when set, bit 24 is ignored
    MONITOR_TRAP_FLAG = 1 << 27
    USE_MSR_BITMAPS = 1 << 28
    MONITOR_EXITING = 1 << 29
    PAUSE_EXITING = 1 << 30
    ACTIVATE_SECONDARY_CONTROLS = 1 << 31


class SecondaryControls(IntFlag):
    """SECONDARY_VM_EXEC_CONTROL bits (SDM 24.6.2, Table 24-7)."""

    ENABLE_EPT = 1 << 1
    DESCRIPTOR_TABLE_EXITING = 1 << 2
    ENABLE_RDTSCP = 1 << 3
    ENABLE_VPID = 1 << 5
    WBINVD_EXITING = 1 << 6
    UNRESTRICTED_GUEST = 1 << 7  # real mode in the guest; needs EPT


class ExitControls(IntFlag):
    """VM_EXIT_CONTROLS bits (SDM 24.7.1, Table 24-10)."""

    HOST_ADDRESS_SPACE_SIZE = 1 << 9  # the host is 64-bit
    ACK_INTERRUPT_ON_EXIT = 1 << 15
    SAVE_PREEMPTION_TIMER = 1 << 22


class EntryControls(IntFlag):
    """VM_ENTRY_CONTROLS bits (SDM 24.8.1, Table 24-12)."""

    IA32E_MODE_GUEST = 1 << 9


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise VmkitError(what)


@dataclass(frozen=True)
class IOQualification:
    """Exit qualification of an I/O instruction, exit 30 (SDM 27.2.1, Table 27-5).

    63      32 31      16 15    7 6   5   4   3   2    0
    +---------+----------+-------+---+---+---+---+------+
    | reserved|   port   |  rsvd |imm|rep|str|in |size-1|
    +---------+----------+-------+---+---+---+---+------+
    """

    size: int  # bytes: 1, 2 or 4
    direction: str  # 'in' or 'out'
    string: bool  # INS/OUTS
    rep: bool
    immediate: bool  # port was an immediate operand, not DX
    port: int

    def __post_init__(self) -> None:
        _check(self.size in (1, 2, 4), f"I/O size is 1, 2 or 4 bytes, not {self.size}")
        _check(self.direction in ("in", "out"),
               f"direction is 'in' or 'out', not {self.direction!r}")
        _check(0 <= self.port <= 0xFFFF, f"I/O ports are 0..0xFFFF, not {self.port:#x}")

    def encode(self) -> int:
        return ((self.size - 1) | (self.direction == "in") << 3 | self.string << 4
                | self.rep << 5 | self.immediate << 6 | self.port << 16)

    @classmethod
    def decode(cls, value: int) -> IOQualification:
        _check(value & ~0xFFFF_007F == 0, f"{value:#x} sets reserved bits 15:7 or 63:32")
        _check(value & 7 in (0, 1, 3), f"size field {value & 7} is unused: 0, 1 or 3 expected")
        return cls(size=(value & 7) + 1, direction="in" if value & 8 else "out",
                   string=bool(value & 0x10), rep=bool(value & 0x20),
                   immediate=bool(value & 0x40), port=value >> 16)


class CRAccessType(IntEnum):
    MOV_TO_CR = 0
    MOV_FROM_CR = 1
    CLTS = 2
    LMSW = 3


@dataclass(frozen=True)
class CRAccessQualification:
    """Exit qualification of a control-register access, exit 28 (SDM 27.2.1, Table 27-3).

    63    32 31          16 15 12 11    8 7  6   5  4 3    0
    +-------+--------------+-----+-------+-+----+-----+-----+
    |  rsvd | LMSW source  | rsvd|  GPR  |0|mem | type|  CR |
    +-------+--------------+-----+-------+-+----+-----+-----+
    """

    cr: int
    access_type: int  # a CRAccessType
    register: int = 0  # 0 RAX, 1 RCX, 2 RDX, 3 RBX, 4 RSP, 5 RBP, 6 RSI, 7 RDI, 8-15 R8-R15
    lmsw_source: int = 0
    lmsw_memory: bool = False  # LMSW took a memory operand

    def __post_init__(self) -> None:
        _check(0 <= self.cr <= 15, f"control register number is 0..15, not {self.cr}")
        _check(0 <= self.access_type <= 3,
               f"access type is 0..3 (CRAccessType), not {self.access_type}")
        _check(0 <= self.register <= 15, f"general-purpose register is 0..15, not {self.register}")
        _check(0 <= self.lmsw_source <= 0xFFFF,
               f"LMSW source is 16 bits, not {self.lmsw_source:#x}")

    def encode(self) -> int:
        return (self.cr | self.access_type << 4 | self.lmsw_memory << 6
                | self.register << 8 | self.lmsw_source << 16)

    @classmethod
    def decode(cls, value: int) -> CRAccessQualification:
        _check(value & ~0xFFFF_0F7F == 0, f"{value:#x} sets reserved bits 7, 15:12 or 63:32")
        return cls(cr=value & 0xF, access_type=CRAccessType(value >> 4 & 3),
                   register=value >> 8 & 0xF, lmsw_source=value >> 16 & 0xFFFF,
                   lmsw_memory=bool(value & 0x40))


class InterruptionType(IntEnum):
    """Bits 10:8 of the interruption-information fields (type 1 is reserved)."""

    EXTERNAL_INTERRUPT = 0
    NMI = 2
    HARDWARE_EXCEPTION = 3
    SOFTWARE_INTERRUPT = 4
    PRIVILEGED_SOFTWARE_EXCEPTION = 5  # INT1 / ICEBP
    SOFTWARE_EXCEPTION = 6  # INT3, INTO
    OTHER_EVENT = 7  # a pending MTF exit


INTR_INFO_VALID = 1 << 31


@dataclass(frozen=True)
class InterruptionInfo:
    """VM_ENTRY_INTR_INFO_FIELD: the event VM entry injects (SDM 24.8.3, Table 24-13).

    31  30        12 11  10   8 7      0
    +-+------------+---+------+--------+
    |V|  reserved  |err| type | vector |
    +-+------------+---+------+--------+
    """

    vector: int
    type: int  # an InterruptionType
    deliver_error_code: bool = False  # the code goes in VM_ENTRY_EXCEPTION_ERROR_CODE
    valid: bool = True

    def __post_init__(self) -> None:
        _check(0 <= self.vector <= 255, f"vectors are 0..255, not {self.vector}")
        _check(self.type in set(InterruptionType),
               f"interruption type {self.type} is reserved or out of range (InterruptionType)")

    def encode(self) -> int:
        return self.vector | self.type << 8 | self.deliver_error_code << 11 | self.valid << 31

    @classmethod
    def decode(cls, value: int) -> InterruptionInfo:
        _check(value & ~0x8000_0FFF == 0, f"{value:#x} sets reserved bits 30:12 or 63:32")
        _check(value >> 8 & 7 != 1, "interruption type 1 is reserved")
        return cls(vector=value & 0xFF, type=InterruptionType(value >> 8 & 7),
                   deliver_error_code=bool(value & 0x800), valid=bool(value & INTR_INFO_VALID))


@dataclass
class VMCS:
    """A VMCS region: 4 KiB of memory the processor reads and writes through VMREAD/VMWRITE."""

    address: HPA
    revision_id: int | None  # None until software writes it (allocate_vmcs)
    launch_state: str = "clear"  # "clear" or "launched" (SDM 24.1)
    fields: dict[VMCSField | int, int] = field(default_factory=dict)
    # Launched, then VMXOFF ran: VMRESUME now fails with error 6 (SDM Table 30-1).
    vmxoff_since_launch: bool = False

    def read(self, encoding: VMCSField | int) -> int:
        """The value of a field; fields never written read as 0 (deliberately simple)."""
        return self.fields.get(_field(encoding), 0)

    def write(self, encoding: VMCSField | int, value: int) -> None:
        """Store a field as the processor does, ignoring bits beyond its width; no checks."""
        name = _field(encoding)
        self.fields[name] = value & _MASKS[name >> 13 & 3]


# field width, from bits 14:13 of the encoding: 16-bit, 64-bit, 32-bit, natural (64 here)
_MASKS = (0xFFFF, _U64, 0xFFFF_FFFF, _U64)


def _field(encoding: VMCSField | int) -> VMCSField:
    if type(encoding) is VMCSField:  # the common case, and enum lookups are slow
        return encoding
    try:
        return VMCSField(encoding)
    except ValueError:
        raise VmkitError(f"{encoding!r} is not a VMCS field encoding of VMCSField") from None


# Values a 64-bit VMM writes before its first VMLAUNCH so that the model's host-state
# checks pass, like KVM on x86-64 (__KERNEL_CS 0x10, __KERNEL_DS 0x18, TSS 0x40).
HOST_STATE_64: dict[VMCSField, int] = {
    VMCSField.HOST_CR0: 0x8005_0033,  # PG AM WP NE ET MP PE
    VMCSField.HOST_CR3: 0x0010_0000,
    VMCSField.HOST_CR4: 0x0000_22A0,  # VMXE OSFXSR PGE PAE
    VMCSField.HOST_CS_SELECTOR: 0x10,
    VMCSField.HOST_SS_SELECTOR: 0x18,
    VMCSField.HOST_TR_SELECTOR: 0x40,
    VMCSField.HOST_RSP: 0xFFFF_C900_0000_8000,
    VMCSField.HOST_RIP: 0xFFFF_FFFF_8100_0000,  # the VMM's VM-exit handler
    VMCSField.VM_EXIT_CONTROLS: ExitControls.HOST_ADDRESS_SPACE_SIZE,
}
