"""Intel VMX operation: VMXON, the VMCS, VM entries and VM exits, as a state machine.

Models one logical processor's VMX machinery the way the Intel SDM defines it:
the three states (off, root, non-root), the VMX instructions that move between
them with their VMfailInvalid / VMfailValid conventions and VM-instruction error
numbers, the checks VM entry makes, exit reasons, and the AMD-V names for the
same ideas. The VMCS itself (field encodings, controls, qualifications) is in
``vmcs.py``, whose names this module re-exports. No guest code runs here: a VM exit is declared by the
caller (``vm_exit``), which is what a CPU emulator's hook would report.

Source: Intel SDM Vol. 3C, ch. 23-27 and 30 (2016 numbering: VMX operation, the
VMCS, non-root operation, VM entries, VM exits, the VMX instruction reference)
and Vol. 3D App. C (exit reasons); Linux arch/x86/include/asm/vmx.h and
uapi/asm/vmx.h for the names; Linux arch/x86/include/uapi/asm/svm.h for AMD.
Taught in course/01_cpu/02_vtx_lifecycle.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import NoReturn

from vmkit.core import VmkitError
from vmkit.cpu.vmcs import (  # re-exported: the VMCS vocabulary is part of the VMX model
    HOST_STATE_64, HPA, INTR_INFO_VALID, PAGE, VMCS, CRAccessQualification, CRAccessType,
    EntryControls, ExitControls, InterruptionInfo, InterruptionType, IOQualification,
    PinBasedControls, ProcBasedControls, SecondaryControls, VMCSField, field_type,
    field_width, is_read_only,
)

__all__ = [
    "HOST_STATE_64", "HPA", "INTR_INFO_VALID", "PAGE", "VMCS", "CRAccessQualification", "CRAccessType",
    "EntryControls", "ExitControls", "InterruptionInfo", "InterruptionType", "IOQualification",
    "PinBasedControls", "ProcBasedControls", "SecondaryControls", "VMCSField", "field_type",
    "field_width", "is_read_only",
    "MAXPHYADDR", "INVALID_VMCS_POINTER", "ExitReason", "VMX_EXIT_REASONS_FAILED_VMENTRY",
    "ENTRY_FAILURES", "VMX_INSTRUCTION_EXITS", "VMInstructionError", "VM_INSTRUCTION_ERROR_TEXT",
    "VMXError", "VMXState", "Transition", "VMXSnapshot", "VMX", "Equivalent", "AMD_V_EQUIVALENTS",
    "AMDExit", "AMD_EXIT_CODES",
]

MAXPHYADDR = 52  # deliberately fixed; a real CPU reports it in CPUID.80000008H
INVALID_VMCS_POINTER = 0xFFFF_FFFF_FFFF_FFFF  # what VMPTRST stores when none is current
_U64 = (1 << 64) - 1


class ExitReason(IntEnum):
    """Basic exit reasons, bits 15:0 of VM_EXIT_REASON (SDM Vol. 3D, Table C-1)."""

    EXCEPTION_NMI = 0
    EXTERNAL_INTERRUPT = 1
    TRIPLE_FAULT = 2
    INIT_SIGNAL = 3
    SIPI_SIGNAL = 4
    IO_SMI = 5  # Xen's name; Linux has none
    OTHER_SMI = 6
    PENDING_INTERRUPT = 7  # the interrupt window
    NMI_WINDOW = 8
    TASK_SWITCH = 9
    CPUID = 10  # unconditional: no control turns it off
    GETSEC = 11  # Xen's name
    HLT = 12
    INVD = 13
    INVLPG = 14
    RDPMC = 15
    RDTSC = 16
    RSM = 17  # Xen's name
    VMCALL = 18
    VMCLEAR = 19  # 19-27: a guest executed a VMX instruction
    VMLAUNCH = 20
    VMPTRLD = 21
    VMPTRST = 22
    VMREAD = 23
    VMRESUME = 24
    VMWRITE = 25
    VMOFF = 26
    VMON = 27
    CR_ACCESS = 28
    DR_ACCESS = 29
    IO_INSTRUCTION = 30
    MSR_READ = 31
    MSR_WRITE = 32
    INVALID_STATE = 33  # 33, 34, 41: VM-entry failures, bit 31 set
    MSR_LOAD_FAIL = 34
    MWAIT_INSTRUCTION = 36
    MONITOR_TRAP_FLAG = 37
    MONITOR_INSTRUCTION = 39
    PAUSE_INSTRUCTION = 40
    MCE_DURING_VMENTRY = 41
    TPR_BELOW_THRESHOLD = 43
    APIC_ACCESS = 44
    EOI_INDUCED = 45
    GDTR_IDTR = 46
    LDTR_TR = 47
    EPT_VIOLATION = 48
    EPT_MISCONFIG = 49
    INVEPT = 50
    RDTSCP = 51
    PREEMPTION_TIMER = 52
    INVVPID = 53
    WBINVD = 54
    XSETBV = 55
    APIC_WRITE = 56
    RDRAND = 57
    INVPCID = 58
    VMFUNC = 59
    ENCLS = 60
    RDSEED = 61
    PML_FULL = 62
    XSAVES = 63
    XRSTORS = 64
    UMWAIT = 67
    TPAUSE = 68
    BUS_LOCK = 74
    NOTIFY = 75


#: Bit 31 of VM_EXIT_REASON: the "exit" is a failed VM entry (SDM 26.7).
VMX_EXIT_REASONS_FAILED_VMENTRY = 1 << 31
ENTRY_FAILURES = frozenset(
    {ExitReason.INVALID_STATE, ExitReason.MSR_LOAD_FAIL, ExitReason.MCE_DURING_VMENTRY}
)

#: The exit a guest causes by executing each VMX instruction (SDM 25.1.3).
VMX_INSTRUCTION_EXITS = {
    "vmclear": ExitReason.VMCLEAR,
    "vmlaunch": ExitReason.VMLAUNCH,
    "vmptrld": ExitReason.VMPTRLD,
    "vmptrst": ExitReason.VMPTRST,
    "vmread": ExitReason.VMREAD,
    "vmresume": ExitReason.VMRESUME,
    "vmwrite": ExitReason.VMWRITE,
    "vmxoff": ExitReason.VMOFF,
    "vmxon": ExitReason.VMON,
    "invept": ExitReason.INVEPT,
    "invvpid": ExitReason.INVVPID,
}


class VMInstructionError(IntEnum):
    """VM-instruction error numbers, stored in VM_INSTRUCTION_ERROR (SDM 30.4, Table 30-1)."""

    VMCALL_IN_VMX_ROOT = 1
    VMCLEAR_INVALID_ADDRESS = 2
    VMCLEAR_VMXON_POINTER = 3
    VMLAUNCH_NONCLEAR_VMCS = 4
    VMRESUME_NONLAUNCHED_VMCS = 5
    VMRESUME_AFTER_VMXOFF = 6
    ENTRY_INVALID_CONTROL_FIELD = 7
    ENTRY_INVALID_HOST_STATE_FIELD = 8
    VMPTRLD_INVALID_ADDRESS = 9
    VMPTRLD_VMXON_POINTER = 10
    VMPTRLD_INCORRECT_VMCS_REVISION_ID = 11
    UNSUPPORTED_VMCS_COMPONENT = 12
    VMWRITE_READ_ONLY_VMCS_COMPONENT = 13
    VMXON_IN_VMX_ROOT_OPERATION = 15
    ENTRY_EVENTS_BLOCKED_BY_MOV_SS = 26
    INVALID_OPERAND_TO_INVEPT_INVVPID = 28


#: Table 30-1 in French, for the notebook.
VM_INSTRUCTION_ERROR_TEXT = {
    1: "VMCALL exécuté en mode VMX root",
    2: "VMCLEAR avec une adresse physique invalide",
    3: "VMCLEAR avec le pointeur VMXON",
    4: "VMLAUNCH avec un VMCS qui n'est pas « clear »",
    5: "VMRESUME avec un VMCS qui n'est pas « launched »",
    6: "VMRESUME après VMXOFF (VMXOFF puis VMXON entre VMLAUNCH et VMRESUME)",
    7: "entrée en VM avec des champs de contrôle invalides",
    8: "entrée en VM avec des champs de l'état hôte invalides",
    9: "VMPTRLD avec une adresse physique invalide",
    10: "VMPTRLD avec le pointeur VMXON",
    11: "VMPTRLD avec un identifiant de révision VMCS incorrect",
    12: "VMREAD/VMWRITE d'un champ VMCS non pris en charge",
    13: "VMWRITE dans un champ VMCS en lecture seule",
    15: "VMXON exécuté en mode VMX root",
    26: "entrée en VM avec des événements bloqués par MOV SS",
    28: "opérande invalide pour INVEPT/INVVPID",
}

# Intel's wording (Table 30-1) and how to get past each error.
_ERRORS = {
    1: ("VMCALL executed in VMX root operation",
        "VMCALL is the guest's hypercall; the hypervisor calls its handler directly"),
    2: ("VMCLEAR with invalid physical address",
        "give VMCLEAR a 4 KiB-aligned physical address (a multiple of 0x1000)"),
    3: ("VMCLEAR with VMXON pointer",
        "the VMXON region is not a VMCS: VMCLEAR a region of its own"),
    4: ("VMLAUNCH with non-clear VMCS",
        "this VMCS was already launched: VMRESUME it, or VMCLEAR and VMPTRLD it again"),
    5: ("VMRESUME with non-launched VMCS",
        "a VMCS must be entered once with VMLAUNCH before VMRESUME"),
    6: ("VMRESUME after VMXOFF",
        "VMXOFF ran since this VMCS was launched: VMCLEAR it, VMPTRLD it, then VMLAUNCH"),
    7: ("VM entry with invalid control field(s)",
        "correct the control field named above (SDM 26.2.1)"),
    8: ("VM entry with invalid host-state field(s)",
        "VMWRITE the host state a 64-bit VMM needs, e.g. every field of HOST_STATE_64 "
        "(SDM 26.2.2-26.2.4)"),
    9: ("VMPTRLD with invalid physical address",
        "give VMPTRLD a 4 KiB-aligned physical address (a multiple of 0x1000)"),
    10: ("VMPTRLD with VMXON pointer",
         "the VMXON region is not a VMCS: allocate a region of its own"),
    11: ("VMPTRLD with incorrect VMCS revision identifier",
         "write the processor's revision identifier into the region first: "
         "allocate_vmcs(address)"),
    12: ("VMREAD/VMWRITE from/to unsupported VMCS component",
         "use an encoding from VMCSField"),
    13: ("VMWRITE to read-only VMCS component",
         "VM-exit information fields (encoding bits 11:10 = 1) are written by the "
         "processor; VMREAD them only"),
    15: ("VMXON executed in VMX root operation",
         "the processor is already in VMX operation: do not repeat VMXON"),
    26: ("VM entry with events blocked by MOV SS",
         "put another instruction between MOV SS and VMLAUNCH/VMRESUME"),
    28: ("invalid operand to INVEPT/INVVPID",
         "use INVEPT type 1 or 2, INVVPID type 0-3 with a non-zero VPID unless type 2"),
}


class VMXError(VmkitError):
    """A VMX instruction failed: VMfailInvalid, VMfailValid, #UD or #GP.

    ``number`` is the error VMfail(n) names in the SDM's pseudocode, even when no
    current VMCS exists to store it (then ``kind`` is "VMfailInvalid"); it is 0
    when the SDM says VMfailInvalid outright, and for #UD and #GP.
    """

    def __init__(self, instruction: str, kind: str, number: int = 0, detail: str = ""):
        self.instruction, self.kind, self.number = instruction, kind, number
        head = f"{instruction.upper()} failed with {kind}"
        if number:
            meaning, fix = _ERRORS[number]
            stored = ("stored in VM_INSTRUCTION_ERROR" if kind == "VMfailValid"
                      else "not stored: there is no current VMCS")
            text = f"{head}, VM-instruction error {number} ({meaning}; {stored})."
            super().__init__(" ".join(filter(None, [text, detail, f"Fix: {fix}."])))
        else:
            super().__init__(f"{head}. {detail}")

    @property
    def summary(self) -> str:
        """The kind and, if any, the error number and Intel's meaning."""
        return f"{self.kind} {self.number}: {_ERRORS[self.number][0]}" if self.number else self.kind


_ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17})  # #DF #TS #NP #SS #GP #PF #AC


def _check_controls(vmcs: VMCS) -> str | None:
    """The first VM-execution, exit or entry control that VM entry rejects (SDM 26.2.1)."""
    pin = vmcs.read(VMCSField.PIN_BASED_VM_EXEC_CONTROL)
    proc = vmcs.read(VMCSField.CPU_BASED_VM_EXEC_CONTROL)
    # Secondary controls count only when the primary controls activate them.
    sec = (vmcs.read(VMCSField.SECONDARY_VM_EXEC_CONTROL)
           if proc & ProcBasedControls.ACTIVATE_SECONDARY_CONTROLS else 0)

    def aligned(encoding: VMCSField) -> bool:
        return vmcs.read(encoding) % PAGE == 0

    problems = [
        (vmcs.read(VMCSField.CR3_TARGET_COUNT) > 4, "CR3_TARGET_COUNT is above 4"),
        (proc & ProcBasedControls.USE_IO_BITMAPS
         and not (aligned(VMCSField.IO_BITMAP_A) and aligned(VMCSField.IO_BITMAP_B)),
         "USE_IO_BITMAPS is set and IO_BITMAP_A/B are not 4 KiB-aligned"),
        (proc & ProcBasedControls.USE_MSR_BITMAPS and not aligned(VMCSField.MSR_BITMAP),
         "USE_MSR_BITMAPS is set and MSR_BITMAP is not 4 KiB-aligned"),
        (pin & PinBasedControls.VIRTUAL_NMIS and not pin & PinBasedControls.NMI_EXITING,
         "VIRTUAL_NMIS needs NMI_EXITING"),
        (proc & ProcBasedControls.NMI_WINDOW_EXITING and not pin & PinBasedControls.VIRTUAL_NMIS,
         "NMI_WINDOW_EXITING needs VIRTUAL_NMIS"),
        (sec & SecondaryControls.UNRESTRICTED_GUEST and not sec & SecondaryControls.ENABLE_EPT,
         "UNRESTRICTED_GUEST needs ENABLE_EPT"),
        (sec & SecondaryControls.ENABLE_VPID and vmcs.read(VMCSField.VIRTUAL_PROCESSOR_ID) == 0,
         "ENABLE_VPID needs a non-zero VIRTUAL_PROCESSOR_ID (VPID 0 is the host's)"),
        (vmcs.read(VMCSField.VM_EXIT_CONTROLS) & ExitControls.SAVE_PREEMPTION_TIMER
         and not pin & PinBasedControls.ACTIVATE_PREEMPTION_TIMER,
         "SAVE_PREEMPTION_TIMER needs ACTIVATE_PREEMPTION_TIMER"),
    ]
    return next((why for bad, why in problems if bad), None) or _check_injection(vmcs)


def _check_injection(vmcs: VMCS) -> str | None:
    """What is wrong with the event to inject, if anything (SDM 26.2.1.3)."""
    info = vmcs.read(VMCSField.VM_ENTRY_INTR_INFO_FIELD)
    if not info & INTR_INFO_VALID:
        return None
    vector, kind, error_code = info & 0xFF, info >> 8 & 7, bool(info & 0x800)
    length = vmcs.read(VMCSField.VM_ENTRY_INSTRUCTION_LEN)
    software = kind in (InterruptionType.SOFTWARE_INTERRUPT, InterruptionType.SOFTWARE_EXCEPTION,
                        InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION)
    # Deliberately assumes a protected-mode guest, where these vectors push an error code.
    wants_code = kind == InterruptionType.HARDWARE_EXCEPTION and vector in _ERROR_CODE_VECTORS
    problems = [
        (info & 0x7FFF_F000, "VM_ENTRY_INTR_INFO_FIELD sets reserved bits 30:12"),
        (kind == 1, "interruption type 1 is reserved"),
        (kind == InterruptionType.NMI and vector != 2, "an NMI has vector 2"),
        (kind == InterruptionType.HARDWARE_EXCEPTION and vector > 31,
         "a hardware exception has a vector 0..31"),
        (kind == InterruptionType.OTHER_EVENT and vector != 0, "type 'other event' needs vector 0"),
        (error_code != wants_code, f"deliver-error-code must be {int(wants_code)} for this event"),
        (software and not 1 <= length <= 15, "software events need VM_ENTRY_INSTRUCTION_LEN 1..15"),
    ]
    return next((why for bad, why in problems if bad), None)


def _canonical(address: int) -> bool:
    top = address >> 47  # bits 63:47 are all 0 or all 1 with 48-bit linear addresses
    return top in (0, (1 << 17) - 1)


def _check_host_state(vmcs: VMCS) -> str | None:
    """The first host-state field VM entry rejects, for a 64-bit VMM (SDM 26.2.2-26.2.4)."""
    cr0, cr4 = vmcs.read(VMCSField.HOST_CR0), vmcs.read(VMCSField.HOST_CR4)
    selectors = (VMCSField.HOST_CS_SELECTOR, VMCSField.HOST_SS_SELECTOR, VMCSField.HOST_TR_SELECTOR)
    problems = [
        # Bits that IA32_VMX_CR0_FIXED0 / CR4_FIXED0 force to 1 in VMX operation.
        (cr0 & 0x8000_0021 != 0x8000_0021, "HOST_CR0 must set PE, NE and PG"),
        (not cr4 & 1 << 13, "HOST_CR4 must set VMXE (bit 13)"),
        (not vmcs.read(VMCSField.VM_EXIT_CONTROLS) & ExitControls.HOST_ADDRESS_SPACE_SIZE,
         "the VMM runs in 64-bit mode, so VM_EXIT_CONTROLS needs HOST_ADDRESS_SPACE_SIZE"),
        (not cr4 & 1 << 5, "a 64-bit host needs HOST_CR4.PAE (bit 5)"),
        (any(vmcs.read(s) & 7 for s in selectors), "host selectors need RPL = 0 and TI = 0"),
        (vmcs.read(VMCSField.HOST_CS_SELECTOR) == 0, "HOST_CS_SELECTOR must not be 0"),
        (vmcs.read(VMCSField.HOST_TR_SELECTOR) == 0, "HOST_TR_SELECTOR must not be 0"),
        (not _canonical(vmcs.read(VMCSField.HOST_RIP)), "HOST_RIP must be canonical"),
    ]
    return next((why for bad, why in problems if bad), None)


class VMXState(Enum):
    OFF = "VMX off"
    ROOT = "VMX root operation"
    NON_ROOT = "VMX non-root operation"


@dataclass(frozen=True)
class Transition:
    """One instruction (or VM exit) and what it did to the VMX state."""

    instruction: str
    before: VMXState
    after: VMXState
    ok: bool
    error: int | None = None  # the VMXError number when ok is False
    note: str = ""


@dataclass(frozen=True)
class VMXSnapshot:
    """What a drawing of the VMX state needs."""

    state: VMXState
    current_vmcs: HPA | None
    launch_state: str | None
    last: Transition | None


# The order in which available_instructions() lists what can run.
_INSTRUCTIONS = ("vmxon", "vmclear", "vmptrld", "vmptrst", "vmread", "vmwrite", "vmlaunch",
                 "vmresume", "invept", "invvpid", "vmxoff", "vm_exit")


class VMX:
    """One logical processor's VMX machinery, driven by the VMM's instructions.

    Invariants: ``current_vmcs`` and ``vmxon_region`` are None exactly when the
    state is OFF, or (for current_vmcs) when no VMCS is current; every VMCS
    in ``vmcs_regions`` is keyed by its own address.
    """

    def __init__(self, revision_id: int = 0x12):
        # What IA32_VMX_BASIC bits 30:0 report; VMXON and VMPTRLD compare regions to it.
        self.revision_id = revision_id
        self.state = VMXState.OFF
        self.cr4_vmxe = False
        self.vmxon_region: HPA | None = None
        self.current_vmcs: VMCS | None = None
        self.vmcs_regions: dict[HPA, VMCS] = {}
        self.history: list[Transition] = []
        self.blocked_by_mov_ss = False  # until the instruction after MOV SS completes
        self._entry_launch_state = "clear"  # restored when a VM entry fails (SDM 26.7)

    def allocate_vmcs(self, address: HPA, revision_id: int | None = None) -> VMCS:
        """Write a revision identifier (ours by default) at the start of a 4 KiB region."""
        if address % PAGE or not 0 <= address < 1 << MAXPHYADDR:
            raise VmkitError(f"a VMCS region is 4 KiB-aligned below 2**52: {address:#x} is not "
                             "a multiple of 0x1000")
        vmcs = self.vmcs_regions.setdefault(address, VMCS(address, None))
        vmcs.revision_id = self.revision_id if revision_id is None else revision_id
        return vmcs

    def set_cr4_vmxe(self, value: bool) -> Transition:
        """MOV to CR4 changing VMXE (bit 13), which VMX operation pins to 1 (SDM 23.8)."""
        before = self._begin("mov cr4", allowed_off=True)
        if before is VMXState.ROOT and not value:
            self._raise("mov cr4", "#GP", detail="CR4.VMXE cannot be cleared in VMX operation: "
                        "run VMXOFF first.")
        self.cr4_vmxe = value
        return self._record("mov cr4", before, note=f"CR4.VMXE = {int(value)}")

    def mov_ss(self) -> Transition:
        """MOV SS in the VMM: events stay blocked until the next instruction completes."""
        before = self._begin("mov ss", allowed_off=True)
        transition = self._record("mov ss", before, note="events blocked by MOV SS")
        self.blocked_by_mov_ss = True
        return transition

    def vmxon(self, address: HPA) -> Transition:
        """Enter VMX root operation with a VMXON region (SDM 30.3, VMXON)."""
        before = self._begin("vmxon", allowed_off=True)
        if not self.cr4_vmxe:
            self._raise("vmxon", "#UD", detail="CR4.VMXE is 0: call set_cr4_vmxe(True) first.")
        if before is VMXState.ROOT:
            self._fail("vmxon", VMInstructionError.VMXON_IN_VMX_ROOT_OPERATION)
        if not _valid_address(address):
            self._raise("vmxon", "VMfailInvalid", detail=f"The VMXON region address {address:#x} "
                        "is not 4 KiB-aligned below 2**52: use a multiple of 0x1000.")
        # Deliberately simple: the VMXON region is assumed to hold our revision identifier.
        self.state, self.vmxon_region, self.current_vmcs = VMXState.ROOT, address, None
        return self._record("vmxon", before, note=f"VMXON region at {address:#x}")

    def vmxoff(self) -> Transition:
        """Leave VMX operation (SDM 30.3, VMXOFF)."""
        before = self._begin("vmxoff")
        for vmcs in self.vmcs_regions.values():
            vmcs.vmxoff_since_launch |= vmcs.launch_state == "launched"
        self.state, self.vmxon_region, self.current_vmcs = VMXState.OFF, None, None
        return self._record("vmxoff", before, note="VMX off (VMCLEAR launched VMCSs before it)")

    def vmclear(self, address: HPA) -> Transition:
        """Flush a VMCS to memory, set its launch state to clear, un-current it (SDM 30.3)."""
        before = self._begin("vmclear")
        if not _valid_address(address):
            self._fail("vmclear", VMInstructionError.VMCLEAR_INVALID_ADDRESS, f"{address:#x}.")
        if address == self.vmxon_region:
            self._fail("vmclear", VMInstructionError.VMCLEAR_VMXON_POINTER)
        vmcs = self.vmcs_regions.setdefault(address, VMCS(address, None))
        vmcs.launch_state, vmcs.vmxoff_since_launch = "clear", False
        if self.current_vmcs is vmcs:
            self.current_vmcs = None
        return self._record("vmclear", before, note=f"VMCS {address:#x} is clear")

    def vmptrld(self, address: HPA) -> Transition:
        """Make the VMCS at ``address`` the current VMCS (SDM 30.3, VMPTRLD)."""
        before = self._begin("vmptrld")
        if not _valid_address(address):
            self._fail("vmptrld", VMInstructionError.VMPTRLD_INVALID_ADDRESS, f"{address:#x}.")
        if address == self.vmxon_region:
            self._fail("vmptrld", VMInstructionError.VMPTRLD_VMXON_POINTER)
        vmcs = self.vmcs_regions.setdefault(address, VMCS(address, None))
        if vmcs.revision_id != self.revision_id:
            found = "nothing" if vmcs.revision_id is None else f"{vmcs.revision_id:#x}"
            self._fail("vmptrld", VMInstructionError.VMPTRLD_INCORRECT_VMCS_REVISION_ID,
                       f"The region holds {found}, the processor expects {self.revision_id:#x}.")
        self.current_vmcs = vmcs
        return self._record("vmptrld", before, note=f"VMCS {address:#x} is current")

    def vmptrst(self) -> HPA:
        """The current-VMCS pointer, FFFFFFFF_FFFFFFFFH if none (SDM 30.3, VMPTRST)."""
        before = self._begin("vmptrst")
        pointer = self.current_vmcs.address if self.current_vmcs else INVALID_VMCS_POINTER
        self._record("vmptrst", before, note=f"current-VMCS pointer {pointer:#x}")
        return pointer

    def vmread(self, encoding: VMCSField | int) -> int:
        """Read a field of the current VMCS (SDM 30.3, VMREAD)."""
        before = self._begin("vmread")
        name = self._supported("vmread", encoding)
        value = self.current_vmcs.read(name)  # type: ignore[union-attr]  # _supported checked
        self._record("vmread", before, note=f"{name.name} -> {value:#x}")
        return value

    def vmwrite(self, encoding: VMCSField | int, value: int) -> Transition:
        """Write a field of the current VMCS; bits beyond its width are ignored (SDM 30.3)."""
        if not isinstance(value, int) or isinstance(value, bool):
            raise VmkitError(f"VMWRITE takes an integer operand, not {value!r}")
        if not 0 <= value <= _U64:
            raise VmkitError(f"VMWRITE takes a 64-bit operand: {value:#x} does not fit")
        before = self._begin("vmwrite")
        name = self._supported("vmwrite", encoding)
        if is_read_only(name):
            self._fail("vmwrite", VMInstructionError.VMWRITE_READ_ONLY_VMCS_COMPONENT,
                       f"{name.name}.")
        self.current_vmcs.write(name, value)  # type: ignore[union-attr]  # _supported checked
        return self._record("vmwrite", before, note=f"{name.name} <- {value:#x}")

    def vmlaunch(self) -> Transition:
        """Enter the guest for the first time with the current VMCS, which must be clear."""
        return self._vm_entry("vmlaunch")

    def vmresume(self) -> Transition:
        """Enter the guest again with the current VMCS, which must be launched."""
        return self._vm_entry("vmresume")

    def vmcall(self) -> NoReturn:
        """VMCALL from the VMM itself: always VMfail(1) in this model (no SMM monitor)."""
        self._begin("vmcall")
        self._fail("vmcall", VMInstructionError.VMCALL_IN_VMX_ROOT)

    def invept(self, inv_type: int) -> Transition:
        """Invalidate EPT-derived TLB entries: type 1 single-context, 2 all-context (SDM 30.3).

        Only the operand check is modelled: this model keeps no TLB.
        """
        before = self._begin("invept")
        if inv_type not in (1, 2):
            self._fail("invept", VMInstructionError.INVALID_OPERAND_TO_INVEPT_INVVPID,
                       f"INVEPT type {inv_type}.")
        return self._record("invept", before, note=f"INVEPT type {inv_type}")

    def invvpid(self, inv_type: int, vpid: int = 1) -> Transition:
        """Invalidate TLB entries by VPID: type 0 address, 1 single, 2 all, 3 single but globals."""
        before = self._begin("invvpid")
        if inv_type not in range(4) or (vpid == 0 and inv_type != 2):
            self._fail("invvpid", VMInstructionError.INVALID_OPERAND_TO_INVEPT_INVVPID,
                       f"INVVPID type {inv_type} with VPID {vpid}.")
        return self._record("invvpid", before, note=f"INVVPID type {inv_type}, VPID {vpid}")

    def vm_exit(self, reason: ExitReason | int, qualification: int = 0, **info: int) -> Transition:
        """The guest caused a VM exit: save exit information, go back to root (SDM 27).

        ``info`` names other exit-information or guest-state fields the processor
        saves, e.g. ``guest_physical_address=0x1000`` or ``guest_rip=0x7C00``.
        """
        if self.state is not VMXState.NON_ROOT or self.current_vmcs is None:
            raise VmkitError(f"a VM exit leaves VMX non-root operation, but the processor is in "
                             f"{self.state.value}: enter the guest with vmlaunch() first")
        try:
            reason = ExitReason(reason)
        except ValueError:
            raise VmkitError(f"{reason!r} is not a basic exit reason of ExitReason") from None
        if not 0 <= qualification <= _U64:
            raise VmkitError(f"the exit qualification is 64 bits: {qualification:#x} does not fit")
        saved = {_saved_field(name): value for name, value in info.items()}
        vmcs = self.current_vmcs
        failed = reason in ENTRY_FAILURES
        vmcs.write(VMCSField.VM_EXIT_REASON,
                   reason | (VMX_EXIT_REASONS_FAILED_VMENTRY if failed else 0))
        vmcs.write(VMCSField.EXIT_QUALIFICATION, qualification)
        for name, value in saved.items():
            vmcs.write(name, value)
        # Every VM exit clears the valid bit, so an injected event is delivered once (SDM 27.2.4).
        intr = VMCSField.VM_ENTRY_INTR_INFO_FIELD
        vmcs.write(intr, vmcs.read(intr) & ~INTR_INFO_VALID)
        if failed:  # the entry never completed, so the VMCS keeps its old launch state
            vmcs.launch_state = self._entry_launch_state
        self.state = VMXState.ROOT
        return self._record("vm exit", VMXState.NON_ROOT,
                            note=f"exit reason {int(reason)} ({reason.name})")

    def available_instructions(self) -> list[str]:
        """The instructions (and ``vm_exit``) that would succeed now, for enabling buttons."""
        if self.state is VMXState.OFF:
            return ["vmxon"] if self.cr4_vmxe else []
        if self.state is VMXState.NON_ROOT:
            return ["vm_exit"]
        ok = {"vmclear", "vmptrst", "invept", "invvpid", "vmxoff"}
        if any(v.revision_id == self.revision_id and v.address != self.vmxon_region
               for v in self.vmcs_regions.values()):
            ok.add("vmptrld")
        if self.current_vmcs is not None:
            ok |= {"vmread", "vmwrite"}
            ok |= {i for i in ("vmlaunch", "vmresume") if self._entry_failure(i) is None}
        return [i for i in _INSTRUCTIONS if i in ok]

    def snapshot(self) -> VMXSnapshot:
        """The state, the current VMCS and the last transition, frozen for drawing."""
        vmcs = self.current_vmcs
        return VMXSnapshot(self.state, vmcs.address if vmcs else None,
                           vmcs.launch_state if vmcs else None,
                           self.history[-1] if self.history else None)

    def _vm_entry(self, insn: str) -> Transition:
        # The order of checks is the SDM's VMLAUNCH/VMRESUME pseudocode (30.3).
        before = self._begin(insn)
        vmcs = self.current_vmcs
        if vmcs is None:
            self._raise(insn, "VMfailInvalid", detail="There is no current VMCS: VMCLEAR and "
                        "VMPTRLD one first.")
        failure = self._entry_failure(insn)
        if failure:
            self._fail(insn, *failure)
        self._entry_launch_state = vmcs.launch_state
        vmcs.launch_state, vmcs.vmxoff_since_launch = "launched", False
        self.state = VMXState.NON_ROOT
        return self._record(insn, before, note=f"guest runs with VMCS {vmcs.address:#x}")

    def _entry_failure(self, insn: str) -> tuple[VMInstructionError, str] | None:
        vmcs = self.current_vmcs
        assert vmcs is not None
        E = VMInstructionError
        if self.blocked_by_mov_ss:
            return E.ENTRY_EVENTS_BLOCKED_BY_MOV_SS, ""
        if insn == "vmlaunch" and vmcs.launch_state != "clear":
            return E.VMLAUNCH_NONCLEAR_VMCS, ""
        if insn == "vmresume" and vmcs.launch_state != "launched":
            return E.VMRESUME_NONLAUNCHED_VMCS, ""
        if insn == "vmresume" and vmcs.vmxoff_since_launch:
            return E.VMRESUME_AFTER_VMXOFF, ""
        if why := _check_controls(vmcs):
            return E.ENTRY_INVALID_CONTROL_FIELD, why + "."
        if why := _check_host_state(vmcs):
            return E.ENTRY_INVALID_HOST_STATE_FIELD, why + "."
        return None

    def _supported(self, insn: str, encoding: VMCSField | int) -> VMCSField:
        if self.current_vmcs is None:
            self._raise(insn, "VMfailInvalid", detail=f"{insn.upper()} needs a current VMCS: "
                        "VMPTRLD one first.")
        try:
            return VMCSField(encoding)
        except ValueError:
            self._fail(insn, VMInstructionError.UNSUPPORTED_VMCS_COMPONENT,
                       f"{encoding:#06x} is not a field this model supports.")

    def _begin(self, insn: str, allowed_off: bool = False) -> VMXState:
        if self.state is VMXState.NON_ROOT:
            exit_reason = {**VMX_INSTRUCTION_EXITS, "vmcall": ExitReason.VMCALL}.get(insn)
            what = (f"a VM exit (basic reason {int(exit_reason)}, {exit_reason.name}) that the "
                    f"hypervisor must handle: call vm_exit(ExitReason.{exit_reason.name})"
                    if exit_reason is not None else "the guest's business, not the VMM's")
            raise VmkitError(f"{insn.upper()} in VMX non-root operation is executed by the guest, "
                             f"so it is {what}. The VMM's instructions run in root operation: "
                             "call vm_exit() first.")
        if self.state is VMXState.OFF and not allowed_off:
            self._raise(insn, "#UD",
                        detail=f"{insn.upper()} outside VMX operation: run VMXON first.")
        return self.state

    def _fail(self, insn: str, number: VMInstructionError, detail: str = "") -> NoReturn:
        # VMfail(n) of the SDM (30.2): VMfailValid stores n in the current VMCS;
        # with no current VMCS there is nowhere to store it, so VMfailInvalid.
        if self.current_vmcs is not None:
            self.current_vmcs.write(VMCSField.VM_INSTRUCTION_ERROR, number)
            self._raise(insn, "VMfailValid", number, detail)
        self._raise(insn, "VMfailInvalid", number, detail)

    def _raise(self, insn: str, kind: str, number: int = 0, detail: str = "") -> NoReturn:
        error = VMXError(insn, kind, int(number), detail)
        self._record(insn, self.state, ok=False, error=error.number, note=error.summary)
        raise error

    def _record(self, insn: str, before: VMXState, ok: bool = True, error: int | None = None,
                note: str = "") -> Transition:
        transition = Transition(insn, before, self.state, ok, error, note)
        self.history.append(transition)
        self.blocked_by_mov_ss = False  # the blocking lasts one instruction (SDM Vol. 3A 6.8.3)
        return transition


def _valid_address(address: int) -> bool:
    return address % PAGE == 0 and 0 <= address < 1 << MAXPHYADDR


def _saved_field(name: str) -> VMCSField:
    try:
        encoding = VMCSField[name.upper()]
    except KeyError:
        raise VmkitError(f"{name!r} is not a VMCSField name, e.g. guest_physical_address") from None
    if field_type(encoding) not in ("exit information", "guest state"):
        raise VmkitError("a VM exit saves exit-information and guest-state fields, "
                         f"not {encoding.name}")
    return encoding


@dataclass(frozen=True)
class Equivalent:
    """One concept, as VT-x and AMD-V name it."""

    concept: str
    intel: str
    amd: str


#: Linux arch/x86/include/uapi/asm/svm.h and AMD APM Vol. 2, ch. 15, side by side.
AMD_V_EQUIVALENTS = (
    Equivalent("enable", "CR4.VMXE = 1, then VMXON", "EFER.SVME = 1 (bit 12)"),
    Equivalent("control block", "VMCS, through VMREAD/VMWRITE", "VMCB, plain memory"),
    Equivalent("enter guest", "VMLAUNCH / VMRESUME", "VMRUN"),
    Equivalent("leave guest", "VM exit", "#VMEXIT"),
    Equivalent("hypercall", "VMCALL", "VMMCALL"),
    Equivalent("nested paging", "EPT", "NPT"),
    Equivalent("TLB tag", "VPID", "ASID"),
)


@dataclass(frozen=True)
class AMDExit:
    """An SVM exit code and the Intel basic exit reasons closest to it."""

    code: int
    intel: tuple[ExitReason, ...]


#: SVM_EXIT_* codes without the prefix (Linux uapi/asm/svm.h).
AMD_EXIT_CODES = {
    "INTR": AMDExit(0x060, (ExitReason.EXTERNAL_INTERRUPT,)),
    "INIT": AMDExit(0x063, (ExitReason.INIT_SIGNAL,)),
    "RDTSC": AMDExit(0x06E, (ExitReason.RDTSC,)),
    "CPUID": AMDExit(0x072, (ExitReason.CPUID,)),
    "HLT": AMDExit(0x078, (ExitReason.HLT,)),
    "INVLPG": AMDExit(0x079, (ExitReason.INVLPG,)),
    "IOIO": AMDExit(0x07B, (ExitReason.IO_INSTRUCTION,)),
    "MSR": AMDExit(0x07C, (ExitReason.MSR_READ, ExitReason.MSR_WRITE)),  # EXITINFO1 0 / 1
    "SHUTDOWN": AMDExit(0x07F, (ExitReason.TRIPLE_FAULT,)),
    "VMRUN": AMDExit(0x080, (ExitReason.VMLAUNCH, ExitReason.VMRESUME)),  # a guest's own guest
    "VMMCALL": AMDExit(0x081, (ExitReason.VMCALL,)),
    "XSETBV": AMDExit(0x08D, (ExitReason.XSETBV,)),
    "NPF": AMDExit(0x400, (ExitReason.EPT_VIOLATION, ExitReason.EPT_MISCONFIG)),
}
