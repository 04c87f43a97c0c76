"""Tests for vmkit.cpu.vmx: the VMX state machine, its errors and its bit layouts."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmkit.core import VmkitError
from vmkit.cpu.vmx import (
    AMD_EXIT_CODES,
    AMD_V_EQUIVALENTS,
    HOST_STATE_64,
    VM_INSTRUCTION_ERROR_TEXT,
    VMCS,
    VMX,
    VMX_INSTRUCTION_EXITS,
    CRAccessQualification,
    CRAccessType,
    EntryControls,
    ExitControls,
    ExitReason,
    InterruptionInfo,
    InterruptionType,
    IOQualification,
    PinBasedControls,
    ProcBasedControls,
    SecondaryControls,
    VMCSField,
    VMInstructionError,
    VMXError,
    VMXSnapshot,
    VMXState,
    field_type,
    field_width,
    is_read_only,
)

VMXON_REGION = 0x1000
VMCS_A = 0x2000
VMCS_B = 0x3000


def in_root() -> VMX:
    vmx = VMX()
    vmx.set_cr4_vmxe(True)
    vmx.vmxon(VMXON_REGION)
    return vmx


def with_vmcs(address: int = VMCS_A) -> VMX:
    """Root operation with a current, clear VMCS whose host state is valid."""
    vmx = in_root()
    vmx.allocate_vmcs(address)
    vmx.vmclear(address)
    vmx.vmptrld(address)
    for encoding, value in HOST_STATE_64.items():
        vmx.vmwrite(encoding, value)
    return vmx


def in_guest() -> VMX:
    vmx = with_vmcs()
    vmx.vmlaunch()
    return vmx


def failure(call, *args) -> VMXError:
    with pytest.raises(VMXError) as info:
        call(*args)
    return info.value


def stored_error(vmx: VMX) -> int:
    return vmx.current_vmcs.read(VMCSField.VM_INSTRUCTION_ERROR)


# --- states and transitions ----------------------------------------------------------


def test_a_new_processor_is_out_of_vmx_operation():
    """A processor starts with VMX off, CR4.VMXE clear and no regions."""
    vmx = VMX()

    assert (vmx.state, vmx.cr4_vmxe, vmx.vmxon_region, vmx.current_vmcs) == (
        VMXState.OFF, False, None, None)


def test_lifecycle_goes_off_root_non_root_root_off():
    """VMXON, VMLAUNCH, a VM exit and VMXOFF walk the four transitions of the SDM."""
    vmx = with_vmcs()

    vmx.vmlaunch()
    vmx.vm_exit(ExitReason.HLT)
    vmx.vmxoff()

    moves = [(t.instruction, t.before, t.after) for t in vmx.history
             if t.before is not t.after]
    assert moves == [
        ("vmxon", VMXState.OFF, VMXState.ROOT),
        ("vmlaunch", VMXState.ROOT, VMXState.NON_ROOT),
        ("vm exit", VMXState.NON_ROOT, VMXState.ROOT),
        ("vmxoff", VMXState.ROOT, VMXState.OFF),
    ]


def test_successful_instructions_return_their_transition():
    """Each instruction returns the Transition it appended to the history."""
    vmx = VMX()
    vmx.set_cr4_vmxe(True)

    transition = vmx.vmxon(VMXON_REGION)

    assert transition is vmx.history[-1] and transition.ok and transition.error is None


def test_vmxon_clears_the_current_vmcs_pointer():
    """VMXON leaves no VMCS current, so VMPTRST stores FFFFFFFF_FFFFFFFFH."""
    vmx = in_root()

    assert vmx.vmptrst() == 0xFFFF_FFFF_FFFF_FFFF


def test_vmptrst_returns_the_current_vmcs_address():
    """VMPTRST stores the address VMPTRLD made current."""
    vmx = with_vmcs(VMCS_B)

    assert vmx.vmptrst() == VMCS_B


def test_vmlaunch_marks_the_vmcs_launched():
    """A successful VMLAUNCH moves the current VMCS from clear to launched."""
    vmx = with_vmcs()

    vmx.vmlaunch()

    assert vmx.current_vmcs.launch_state == "launched"


def test_vmresume_after_a_vm_exit_reenters_the_guest():
    """After a VM exit, VMRESUME (not VMLAUNCH) enters the guest again."""
    vmx = in_guest()
    vmx.vm_exit(ExitReason.CPUID)

    vmx.vmresume()

    assert vmx.state is VMXState.NON_ROOT


def test_vmclear_allows_a_second_vmlaunch():
    """VMCLEAR puts a launched VMCS back in the clear state, so VMLAUNCH works again."""
    vmx = in_guest()
    vmx.vm_exit(ExitReason.HLT)
    vmx.vmclear(VMCS_A)
    vmx.vmptrld(VMCS_A)

    vmx.vmlaunch()

    assert vmx.state is VMXState.NON_ROOT


def test_vmclear_of_the_current_vmcs_leaves_none_current():
    """VMCLEAR of the current VMCS invalidates the current-VMCS pointer."""
    vmx = with_vmcs()

    vmx.vmclear(VMCS_A)

    assert vmx.current_vmcs is None and vmx.vmptrst() == 0xFFFF_FFFF_FFFF_FFFF


def test_vmwrite_then_vmread_round_trips():
    """VMREAD returns what VMWRITE stored in the current VMCS."""
    vmx = with_vmcs()

    vmx.vmwrite(VMCSField.GUEST_RIP, 0x7C00)

    assert vmx.vmread(VMCSField.GUEST_RIP) == 0x7C00


def test_vmwrite_ignores_bits_beyond_the_field_width():
    """VMWRITE to a 16-bit field keeps only the low 16 bits of the operand."""
    vmx = with_vmcs()

    vmx.vmwrite(VMCSField.GUEST_CS_SELECTOR, 0x1_0008)

    assert vmx.vmread(VMCSField.GUEST_CS_SELECTOR) == 0x0008


def test_clearing_cr4_vmxe_outside_vmx_operation_is_allowed():
    """CR4.VMXE can be cleared once VMXOFF has left VMX operation."""
    vmx = in_root()
    vmx.vmxoff()

    vmx.set_cr4_vmxe(False)

    assert vmx.cr4_vmxe is False


# --- VM exits ------------------------------------------------------------------------


def test_vm_exit_saves_reason_qualification_and_extra_fields():
    """A VM exit writes the exit reason, the qualification and the named fields."""
    vmx = in_guest()
    qualification = IOQualification(1, "out", False, False, False, 0x3F8).encode()

    vmx.vm_exit(ExitReason.IO_INSTRUCTION, qualification, vm_exit_instruction_len=1)

    assert [vmx.vmread(f) for f in (VMCSField.VM_EXIT_REASON, VMCSField.EXIT_QUALIFICATION,
                                    VMCSField.VM_EXIT_INSTRUCTION_LEN)] == [30, qualification, 1]


def test_vm_exit_clears_the_injection_valid_bit():
    """Every VM exit clears bit 31 of VM_ENTRY_INTR_INFO_FIELD, keeping the rest."""
    vmx = with_vmcs()
    event = InterruptionInfo(vector=0x20, type=InterruptionType.EXTERNAL_INTERRUPT)
    vmx.vmwrite(VMCSField.VM_ENTRY_INTR_INFO_FIELD, event.encode())
    vmx.vmlaunch()

    vmx.vm_exit(ExitReason.EXTERNAL_INTERRUPT)

    assert vmx.vmread(VMCSField.VM_ENTRY_INTR_INFO_FIELD) == 0x20


def test_entry_failure_exit_sets_bit_31_and_keeps_the_vmcs_clear():
    """A VM-entry failure (reason 33) sets bit 31 and leaves the launch state clear."""
    vmx = in_guest()

    vmx.vm_exit(ExitReason.INVALID_STATE)

    assert vmx.vmread(VMCSField.VM_EXIT_REASON) == 0x8000_0021
    assert vmx.current_vmcs.launch_state == "clear"


def test_vm_exit_outside_non_root_operation_is_a_caller_mistake():
    """Declaring a VM exit while the VMM runs raises VmkitError."""
    vmx = with_vmcs()

    with pytest.raises(VmkitError, match="non-root"):
        vmx.vm_exit(ExitReason.CPUID)


def test_vm_exit_refuses_to_write_host_state():
    """A VM exit saves exit information and guest state, never host state."""
    vmx = in_guest()

    with pytest.raises(VmkitError, match="HOST_RIP"):
        vmx.vm_exit(ExitReason.CPUID, host_rip=0)


def test_vmx_instruction_in_non_root_operation_names_its_exit_reason():
    """Calling VMREAD while the guest runs explains that the guest's VMREAD exits (23)."""
    vmx = in_guest()

    with pytest.raises(VmkitError, match=r"basic reason 23, VMREAD"):
        vmx.vmread(VMCSField.GUEST_RIP)


# --- failures: #UD, #GP and VMfailInvalid ---------------------------------------------


def test_vmxon_with_cr4_vmxe_clear_raises_ud():
    """VMXON with CR4.VMXE = 0 raises #UD."""
    error = failure(VMX().vmxon, VMXON_REGION)

    assert (error.kind, error.number, error.instruction) == ("#UD", 0, "vmxon")


@pytest.mark.parametrize("name", ["vmxoff", "vmptrst", "vmlaunch", "vmresume", "vmcall"])
def test_vmx_instructions_outside_vmx_operation_raise_ud(name):
    """Every VMX instruction but VMXON raises #UD outside VMX operation."""
    vmx = VMX()
    vmx.set_cr4_vmxe(True)

    assert failure(getattr(vmx, name)).kind == "#UD"


def test_clearing_cr4_vmxe_in_vmx_operation_raises_gp():
    """CR4.VMXE cannot be cleared in VMX operation: #GP, number 0."""
    error = failure(in_root().set_cr4_vmxe, False)

    assert (error.kind, error.number) == ("#GP", 0)


def test_vmxon_with_a_misaligned_region_is_vmfailinvalid():
    """VMXON with an address that is not 4 KiB-aligned fails with VMfailInvalid."""
    vmx = VMX()
    vmx.set_cr4_vmxe(True)

    error = failure(vmx.vmxon, VMXON_REGION + 8)

    assert (error.kind, error.number, vmx.state) == ("VMfailInvalid", 0, VMXState.OFF)


def test_vmlaunch_without_a_current_vmcs_is_vmfailinvalid():
    """VMLAUNCH with no current VMCS fails with VMfailInvalid, number 0."""
    error = failure(in_root().vmlaunch)

    assert (error.kind, error.number) == ("VMfailInvalid", 0)


def test_vmread_without_a_current_vmcs_is_vmfailinvalid():
    """VMREAD with no current VMCS fails with VMfailInvalid."""
    error = failure(in_root().vmread, VMCSField.GUEST_RIP)

    assert error.kind == "VMfailInvalid"


# --- failures: every VM-instruction error number -------------------------------------


def test_vmcall_in_root_operation_is_error_1():
    """VMCALL in VMX root operation fails with error 1."""
    vmx = with_vmcs()

    error = failure(vmx.vmcall)

    assert (error.kind, error.number, stored_error(vmx)) == ("VMfailValid", 1, 1)


def test_vmclear_of_a_misaligned_address_is_error_2():
    """VMCLEAR of an address that is not 4 KiB-aligned fails with error 2."""
    vmx = with_vmcs()

    error = failure(vmx.vmclear, VMCS_B + 0x10)

    assert (error.number, stored_error(vmx)) == (2, 2)


def test_vmclear_of_the_vmxon_region_is_error_3():
    """VMCLEAR of the VMXON region fails with error 3."""
    vmx = with_vmcs()

    error = failure(vmx.vmclear, VMXON_REGION)

    assert (error.number, stored_error(vmx)) == (3, 3)


def test_vmlaunch_twice_is_error_4():
    """A second VMLAUNCH without VMCLEAR fails with error 4 and stays in root."""
    vmx = in_guest()
    vmx.vm_exit(ExitReason.HLT)

    error = failure(vmx.vmlaunch)

    assert (error.kind, error.number, stored_error(vmx)) == ("VMfailValid", 4, 4)
    assert vmx.state is VMXState.ROOT


def test_vmresume_of_a_clear_vmcs_is_error_5():
    """VMRESUME before any VMLAUNCH fails with error 5."""
    vmx = with_vmcs()

    error = failure(vmx.vmresume)

    assert (error.number, stored_error(vmx)) == (5, 5)


def test_vmresume_after_vmxoff_is_error_6():
    """VMXOFF and VMXON between VMLAUNCH and VMRESUME make VMRESUME fail with error 6."""
    vmx = in_guest()
    vmx.vm_exit(ExitReason.HLT)
    vmx.vmxoff()
    vmx.vmxon(VMXON_REGION)
    vmx.vmptrld(VMCS_A)

    error = failure(vmx.vmresume)

    assert (error.number, stored_error(vmx)) == (6, 6)


@pytest.mark.parametrize("writes", [
    {VMCSField.CR3_TARGET_COUNT: 5},
    {VMCSField.PIN_BASED_VM_EXEC_CONTROL: PinBasedControls.VIRTUAL_NMIS},
    {VMCSField.CPU_BASED_VM_EXEC_CONTROL: ProcBasedControls.USE_MSR_BITMAPS,
     VMCSField.MSR_BITMAP: 0x5008},
    {VMCSField.VM_EXIT_CONTROLS: ExitControls.HOST_ADDRESS_SPACE_SIZE
     | ExitControls.SAVE_PREEMPTION_TIMER},
])
def test_invalid_control_fields_are_error_7(writes):
    """VM entry rejects inconsistent control fields with error 7."""
    vmx = with_vmcs()
    for encoding, value in writes.items():
        vmx.vmwrite(encoding, value)

    error = failure(vmx.vmlaunch)

    assert (error.number, stored_error(vmx)) == (7, 7)


def test_unrestricted_guest_without_ept_is_error_7():
    """UNRESTRICTED_GUEST needs ENABLE_EPT, once secondary controls are active."""
    vmx = with_vmcs()
    vmx.vmwrite(VMCSField.CPU_BASED_VM_EXEC_CONTROL, ProcBasedControls.ACTIVATE_SECONDARY_CONTROLS)
    vmx.vmwrite(VMCSField.SECONDARY_VM_EXEC_CONTROL, SecondaryControls.UNRESTRICTED_GUEST)

    assert failure(vmx.vmlaunch).number == 7


def test_secondary_controls_are_ignored_unless_activated():
    """Without ACTIVATE_SECONDARY_CONTROLS the secondary field is not checked."""
    vmx = with_vmcs()
    vmx.vmwrite(VMCSField.SECONDARY_VM_EXEC_CONTROL, SecondaryControls.UNRESTRICTED_GUEST)

    assert vmx.vmlaunch().ok


def test_injecting_an_nmi_with_a_wrong_vector_is_error_7():
    """An injected NMI must have vector 2 (SDM 26.2.1.3)."""
    vmx = with_vmcs()
    vmx.vmwrite(VMCSField.VM_ENTRY_INTR_INFO_FIELD,
                InterruptionInfo(vector=3, type=InterruptionType.NMI).encode())

    error = failure(vmx.vmlaunch)

    assert error.number == 7 and "vector 2" in str(error)


def test_injecting_gp_without_error_code_is_error_7():
    """A hardware #GP must be injected with deliver-error-code set."""
    vmx = with_vmcs()
    vmx.vmwrite(VMCSField.VM_ENTRY_INTR_INFO_FIELD,
                InterruptionInfo(13, InterruptionType.HARDWARE_EXCEPTION).encode())

    assert failure(vmx.vmlaunch).number == 7


def test_vmlaunch_without_host_state_is_error_8():
    """A VMCS whose host state was never written fails VM entry with error 8."""
    vmx = in_root()
    vmx.allocate_vmcs(VMCS_A)
    vmx.vmclear(VMCS_A)
    vmx.vmptrld(VMCS_A)

    error = failure(vmx.vmlaunch)

    assert (error.number, stored_error(vmx)) == (8, 8) and "HOST_CR0" in str(error)


def test_a_32_bit_host_address_space_is_error_8():
    """The model's VMM is 64-bit, so HOST_ADDRESS_SPACE_SIZE must be set."""
    vmx = with_vmcs()
    vmx.vmwrite(VMCSField.VM_EXIT_CONTROLS, 0)

    assert failure(vmx.vmlaunch).number == 8


def test_vmptrld_of_a_misaligned_address_is_error_9():
    """VMPTRLD of an address that is not 4 KiB-aligned fails with error 9."""
    vmx = with_vmcs()

    error = failure(vmx.vmptrld, VMCS_B + 0x800)

    assert (error.number, stored_error(vmx)) == (9, 9)


def test_vmptrld_of_the_vmxon_region_is_error_10():
    """VMPTRLD of the VMXON region fails with error 10."""
    vmx = with_vmcs()

    error = failure(vmx.vmptrld, VMXON_REGION)

    assert (error.number, stored_error(vmx)) == (10, 10)


def test_vmptrld_of_an_unallocated_region_is_error_11():
    """VMPTRLD of a region with no revision identifier fails with error 11."""
    vmx = in_root()

    error = failure(vmx.vmptrld, VMCS_B)

    assert (error.kind, error.number) == ("VMfailInvalid", 11)


def test_vmptrld_of_a_foreign_revision_is_error_11():
    """VMPTRLD of a region written for another revision fails with error 11."""
    vmx = with_vmcs()
    vmx.allocate_vmcs(VMCS_B, revision_id=0x13)

    error = failure(vmx.vmptrld, VMCS_B)

    assert (error.kind, error.number, stored_error(vmx)) == ("VMfailValid", 11, 11)


def test_vmclear_does_not_write_the_revision_identifier():
    """VMCLEAR of a fresh region is not enough for VMPTRLD: error 11."""
    vmx = in_root()
    vmx.vmclear(VMCS_B)

    assert failure(vmx.vmptrld, VMCS_B).number == 11


@pytest.mark.parametrize("instruction, args", [("vmread", (0x4242,)), ("vmwrite", (0x4242, 1))])
def test_unknown_field_encodings_are_error_12(instruction, args):
    """VMREAD or VMWRITE of an unsupported encoding fails with error 12."""
    vmx = with_vmcs()

    error = failure(getattr(vmx, instruction), *args)

    assert (error.number, stored_error(vmx)) == (12, 12)


def test_vmwrite_to_a_read_only_field_is_error_13():
    """VMWRITE to VM_EXIT_REASON, an exit-information field, fails with error 13."""
    vmx = with_vmcs()

    error = failure(vmx.vmwrite, VMCSField.VM_EXIT_REASON, 10)

    assert (error.number, stored_error(vmx)) == (13, 13)


def test_vmxon_in_root_without_current_vmcs_is_vmfailinvalid_15():
    """VMXON in root operation with no current VMCS: VMfailInvalid, number 15."""
    error = failure(in_root().vmxon, VMXON_REGION)

    assert (error.kind, error.number) == ("VMfailInvalid", 15)


def test_vmxon_in_root_with_current_vmcs_is_vmfailvalid_15():
    """VMXON in root operation with a current VMCS: VMfailValid, 15 stored."""
    vmx = with_vmcs()

    error = failure(vmx.vmxon, VMXON_REGION)

    assert (error.kind, error.number, stored_error(vmx)) == ("VMfailValid", 15, 15)


def test_vmlaunch_right_after_mov_ss_is_error_26():
    """VMLAUNCH right after MOV SS fails with error 26."""
    vmx = with_vmcs()
    vmx.mov_ss()

    error = failure(vmx.vmlaunch)

    assert (error.number, stored_error(vmx)) == (26, 26)


def test_mov_ss_blocking_lasts_one_instruction():
    """One instruction between MOV SS and VMLAUNCH lets the entry succeed."""
    vmx = with_vmcs()
    vmx.mov_ss()
    vmx.vmptrst()

    assert vmx.vmlaunch().ok


@pytest.mark.parametrize("instruction, args", [("invept", (0,)), ("invvpid", (1, 0)),
                                               ("invvpid", (4, 1))])
def test_invalid_invept_invvpid_operands_are_error_28(instruction, args):
    """INVEPT type 0, INVVPID with VPID 0 or type 4 fail with error 28."""
    vmx = with_vmcs()

    error = failure(getattr(vmx, instruction), *args)

    assert (error.number, stored_error(vmx)) == (28, 28)


def test_failures_are_recorded_before_raising():
    """A failed instruction appears in the history with its error number."""
    vmx = with_vmcs()

    failure(vmx.vmresume)

    last = vmx.history[-1]
    assert (last.instruction, last.ok, last.error, last.after) == (
        "vmresume", False, 5, VMXState.ROOT)


def test_error_message_names_instruction_number_meaning_and_fix():
    """A VMXError message says which instruction, which number, what it means, how to fix."""
    vmx = in_guest()
    vmx.vm_exit(ExitReason.HLT)

    message = str(failure(vmx.vmlaunch))

    assert all(part in message for part in (
        "VMLAUNCH", "VMfailValid", "error 4", "VMLAUNCH with non-clear VMCS", "Fix:"))


# --- widget helpers ------------------------------------------------------------------


def test_available_instructions_follow_the_state():
    """available_instructions() lists what would succeed in each state."""
    off, root, ready, guest = VMX(), in_root(), with_vmcs(), in_guest()
    off.set_cr4_vmxe(True)

    assert off.available_instructions() == ["vmxon"]
    assert root.available_instructions() == ["vmclear", "vmptrst", "invept", "invvpid", "vmxoff"]
    assert {"vmread", "vmlaunch"} <= set(ready.available_instructions())
    assert "vmresume" not in ready.available_instructions()
    assert guest.available_instructions() == ["vm_exit"]


def test_snapshot_shows_state_vmcs_and_last_transition():
    """snapshot() freezes the state, the current VMCS and the last transition."""
    vmx = in_guest()

    snap = vmx.snapshot()

    assert snap == VMXSnapshot(VMXState.NON_ROOT, VMCS_A, "launched", vmx.history[-1])


def test_allocate_vmcs_rejects_a_misaligned_region():
    """allocate_vmcs() of an address that is not 4 KiB-aligned is a caller mistake."""
    with pytest.raises(VmkitError, match="4 KiB"):
        VMX().allocate_vmcs(0x2001)


def test_vmcs_read_of_an_unknown_encoding_is_a_caller_mistake():
    """VMCS.read() itself rejects encodings outside VMCSField."""
    with pytest.raises(VmkitError):
        VMCS(VMCS_A, 0x12).read(0x4242)


# --- numbers and encodings -----------------------------------------------------------


@pytest.mark.parametrize("reason, number", [
    (ExitReason.EXCEPTION_NMI, 0), (ExitReason.TRIPLE_FAULT, 2), (ExitReason.PENDING_INTERRUPT, 7),
    (ExitReason.CPUID, 10), (ExitReason.HLT, 12), (ExitReason.VMCALL, 18),
    (ExitReason.VMON, 27), (ExitReason.CR_ACCESS, 28), (ExitReason.IO_INSTRUCTION, 30),
    (ExitReason.MSR_WRITE, 32), (ExitReason.MONITOR_INSTRUCTION, 39),
    (ExitReason.EPT_VIOLATION, 48), (ExitReason.EPT_MISCONFIG, 49),
    (ExitReason.PREEMPTION_TIMER, 52), (ExitReason.XSETBV, 55), (ExitReason.XRSTORS, 64),
    (ExitReason.TPAUSE, 68), (ExitReason.NOTIFY, 75),
])
def test_exit_reason_numbers_match_appendix_c(reason, number):
    """Basic exit reasons have the numbers of SDM Table C-1."""
    assert reason == number


def test_unused_exit_reason_numbers_are_absent():
    """Numbers 35, 38 and 42 are not exit reasons."""
    assert not {35, 38, 42} & set(ExitReason)


def test_vmx_instruction_exits_are_reasons_19_to_27_50_and_53():
    """A guest's VMX instructions exit with reasons 19-27, 50 and 53."""
    assert sorted(VMX_INSTRUCTION_EXITS.values()) == [*range(19, 28), 50, 53]
    assert VMX_INSTRUCTION_EXITS["vmxoff"] is ExitReason.VMOFF


def test_every_vm_instruction_error_has_a_french_text():
    """VM_INSTRUCTION_ERROR_TEXT describes exactly the numbers of VMInstructionError."""
    assert set(VM_INSTRUCTION_ERROR_TEXT) == set(VMInstructionError)
    assert VM_INSTRUCTION_ERROR_TEXT[4] == "VMLAUNCH avec un VMCS qui n'est pas « clear »"


@pytest.mark.parametrize("encoding, width, kind", [
    (0x482E, 32, "guest state"), (0x4402, 32, "exit information"),
    (0x6C16, "natural", "host state"), (0x201A, 64, "control"), (0x0800, 16, "guest state"),
    (0x0C02, 16, "host state"), (0x640A, "natural", "exit information"),
])
def test_field_width_and_type_come_from_the_encoding(encoding, width, kind):
    """Bits 14:13 of an encoding give the width, bits 11:10 the type."""
    assert (field_width(encoding), field_type(encoding)) == (width, kind)


def test_only_exit_information_fields_are_read_only():
    """is_read_only() is true exactly for type-1 fields."""
    read_only = {f for f in VMCSField if is_read_only(f)}

    assert VMCSField.VM_EXIT_REASON in read_only and VMCSField.GUEST_LINEAR_ADDRESS in read_only
    assert all(field_type(f) == "exit information" for f in read_only)
    assert not is_read_only(VMCSField.VM_ENTRY_INTR_INFO_FIELD)


@pytest.mark.parametrize("name, encoding", [
    ("VIRTUAL_PROCESSOR_ID", 0x0000), ("GUEST_TR_SELECTOR", 0x080E),
    ("HOST_TR_SELECTOR", 0x0C0C), ("IO_BITMAP_B", 0x2002), ("EPT_POINTER", 0x201A),
    ("VM_ENTRY_INTR_INFO_FIELD", 0x4016), ("VM_INSTRUCTION_ERROR", 0x4400),
    ("VM_EXIT_INTR_ERROR_CODE", 0x4406), ("VMX_INSTRUCTION_INFO", 0x440E),
    ("VM_EXIT_INSTRUCTION_INFO", 0x440E), ("GUEST_IDTR_LIMIT", 0x4812),
    ("VMX_PREEMPTION_TIMER_VALUE", 0x482E), ("CR3_TARGET_VALUE3", 0x600E),
    ("GUEST_GDTR_BASE", 0x6816), ("GUEST_RFLAGS", 0x6820), ("HOST_IDTR_BASE", 0x6C0E),
    ("HOST_RIP", 0x6C16),
])
def test_vmcs_field_encodings_match_linux(name, encoding):
    """VMCSField members carry Linux's enum vmcs_field encodings."""
    assert VMCSField[name] == encoding


def test_guest_rax_is_not_a_vmcs_field():
    """General-purpose registers other than RSP are not in the VMCS."""
    assert "GUEST_RAX" not in VMCSField.__members__


def test_control_bits_match_the_sdm():
    """A few control bits checked against SDM Tables 24-5 to 24-12."""
    assert (PinBasedControls.ACTIVATE_PREEMPTION_TIMER, ProcBasedControls.HLT_EXITING,
            ProcBasedControls.USE_IO_BITMAPS, ProcBasedControls.ACTIVATE_SECONDARY_CONTROLS,
            SecondaryControls.ENABLE_EPT, ExitControls.SAVE_PREEMPTION_TIMER,
            EntryControls.IA32E_MODE_GUEST) == (0x40, 0x80, 1 << 25, 1 << 31, 2, 1 << 22, 0x200)


# --- exit qualifications -------------------------------------------------------------


def test_io_qualification_of_out_dx_al_to_com1():
    """OUT DX, AL to port 0x3F8 encodes as 0x03F80000."""
    qualification = IOQualification(size=1, direction="out", string=False, rep=False,
                                     immediate=False, port=0x3F8)

    assert qualification.encode() == 0x03F8_0000


def test_io_qualification_of_in_eax_from_immediate_port():
    """IN EAX, 0x60 encodes size 3, IN, immediate and the port."""
    qualification = IOQualification(size=4, direction="in", string=False, rep=False,
                                    immediate=True, port=0x60)

    assert qualification.encode() == 0x0060_0000 | 3 | 8 | 0x40


@given(st.sampled_from([1, 2, 4]), st.sampled_from(["in", "out"]), st.booleans(),
       st.booleans(), st.booleans(), st.integers(0, 0xFFFF))
def test_io_qualification_round_trips(size, direction, string, rep, immediate, port):
    """decode(encode(q)) == q for every I/O qualification."""
    qualification = IOQualification(size, direction, string, rep, immediate, port)

    assert IOQualification.decode(qualification.encode()) == qualification


@pytest.mark.parametrize("kwargs", [{"size": 3}, {"port": 0x10000}, {"direction": "up"}])
def test_io_qualification_rejects_impossible_values(kwargs):
    """Size 3, a port above 0xFFFF or an unknown direction raise VmkitError."""
    arguments = dict(size=1, direction="out", string=False, rep=False, immediate=False, port=0)

    with pytest.raises(VmkitError):
        IOQualification(**{**arguments, **kwargs})


def test_io_qualification_decode_rejects_reserved_bits():
    """A qualification with reserved bit 7 set is not an I/O qualification."""
    with pytest.raises(VmkitError, match="reserved"):
        IOQualification.decode(0x80)


def test_cr_access_qualification_of_mov_to_cr3_from_rbx():
    """MOV CR3, RBX encodes CR 3, type 0, register 3: 0x303."""
    qualification = CRAccessQualification(cr=3, access_type=CRAccessType.MOV_TO_CR, register=3,
                                          lmsw_source=0)

    assert qualification.encode() == 0x303


@given(st.integers(0, 15), st.sampled_from(CRAccessType), st.integers(0, 15),
       st.integers(0, 0xFFFF), st.booleans())
def test_cr_access_qualification_round_trips(cr, access_type, register, source, memory):
    """decode(encode(q)) == q for every control-register access qualification."""
    qualification = CRAccessQualification(cr, access_type, register, source, memory)

    assert CRAccessQualification.decode(qualification.encode()) == qualification


def test_interruption_info_of_gp_with_error_code():
    """Injecting #GP with its error code encodes as 0x80000B0D."""
    info = InterruptionInfo(vector=13, type=InterruptionType.HARDWARE_EXCEPTION,
                            deliver_error_code=True, valid=True)

    assert info.encode() == 0x8000_0B0D


@given(st.integers(0, 255), st.sampled_from(InterruptionType), st.booleans(), st.booleans())
def test_interruption_info_round_trips(vector, kind, error_code, valid):
    """decode(encode(i)) == i for every interruption-information value."""
    info = InterruptionInfo(vector, kind, error_code, valid)

    assert InterruptionInfo.decode(info.encode()) == info


@pytest.mark.parametrize("vector, kind", [(256, 0), (3, 1), (3, 8)])
def test_interruption_info_rejects_impossible_values(vector, kind):
    """Vector 256 and types 1 (reserved) or 8 raise VmkitError."""
    with pytest.raises(VmkitError):
        InterruptionInfo(vector, kind)


# --- AMD-V ---------------------------------------------------------------------------


def test_amd_exit_codes_match_linux_svm_h():
    """SVM exit codes as in Linux uapi/asm/svm.h, with their Intel twins."""
    codes = {name: exit.code for name, exit in AMD_EXIT_CODES.items()}

    assert {k: codes[k] for k in ("INTR", "CPUID", "HLT", "IOIO", "MSR", "SHUTDOWN", "VMRUN",
                                  "VMMCALL", "NPF")} == {
        "INTR": 0x60, "CPUID": 0x72, "HLT": 0x78, "IOIO": 0x7B, "MSR": 0x7C,
        "SHUTDOWN": 0x7F, "VMRUN": 0x80, "VMMCALL": 0x81, "NPF": 0x400}
    assert AMD_EXIT_CODES["VMMCALL"].intel == (ExitReason.VMCALL,)


def test_amd_v_equivalents_cover_the_seven_concepts():
    """The VT-x/AMD-V table has one row per concept of the lesson."""
    rows = {row.concept: (row.intel, row.amd) for row in AMD_V_EQUIVALENTS}

    assert list(rows) == ["enable", "control block", "enter guest", "leave guest", "hypercall",
                          "nested paging", "TLB tag"]
    assert rows["TLB tag"] == ("VPID", "ASID")
