"""Tests for vmkit.cpu.hypervisor: configuration, VMCS controls, I/O bitmaps, VM exits, injection, traces."""

import pytest

from vmkit.core import VmkitError
from vmkit.cpu.hypervisor import Hypervisor, HypervisorConfig, io_bitmap_exits
from vmkit.cpu.kernel import GuestKernel
from vmkit.cpu.scenarios import two_vms
from vmkit.cpu.programs import cpuid_probe, hello, spinner, vmx_probe, wild_pointer, worker
from vmkit.cpu.trace import share
from vmkit.cpu.vmx import (
    INTR_INFO_VALID, CRAccessQualification, CRAccessType, ExitReason, InterruptionInfo, IOQualification, PinBasedControls,
    ProcBasedControls, VMCSField, VMXState,
)

HELLO_TEXT = "Bonjour depuis l'anneau 3 !\n"
IDLE_TEXT = "kernel: all done, halt\n"
COM1 = 0x3F8


def one_vm(*programs, config=HypervisorConfig(), duration=200_000, **kernel):
    """A hypervisor with one VM named 'vm' running ``programs``, run for ``duration``."""
    hv = Hypervisor(config)
    hv.create_vm("vm", GuestKernel(programs, **kernel))
    return hv.run(duration)


def controls(hv, vm):
    vmcs = hv.vmx.vmcs_regions[vm.vmcs]
    return (PinBasedControls(vmcs.read(VMCSField.PIN_BASED_VM_EXEC_CONTROL)),
            ProcBasedControls(vmcs.read(VMCSField.CPU_BASED_VM_EXEC_CONTROL)))


def io_exits(hv, vm="vm"):
    return [IOQualification.decode(e.qualification) for e in hv.exits
            if e.vm == vm and e.reason is ExitReason.IO_INSTRUCTION]


def reasons(hv, vm="vm"):
    return [e.reason for e in hv.exits if e.vm == vm]


def two_workers():
    hv = Hypervisor(HypervisorConfig(preemption_timer=50_000))
    hv.create_vm("vm1", GuestKernel((worker("A", "A", work=20_000, rounds=6),
                                     worker("B", "B", work=20_000, rounds=6)), timer_period=20_000))
    hv.create_vm("vm2", GuestKernel((worker("C", "C", work=20_000, rounds=6),), timer_period=20_000))
    return hv


@pytest.fixture(scope="module")
def hello_hv():
    return one_vm(hello(), duration=1_000_000)


@pytest.fixture(scope="module")
def cpuid_hv():
    return one_vm(cpuid_probe())


@pytest.fixture(scope="module")
def faulty_hv():
    """The notebook's section 6: three faulty guests next to a healthy one."""
    hv = Hypervisor(HypervisorConfig(preemption_timer=50_000))
    hv.create_vm("casse", GuestKernel((hello(),), bug="broken_idt"))
    hv.create_vm("boucle", GuestKernel((spinner(),), timer_period=20_000))
    hv.create_vm("sauvage", GuestKernel((wild_pointer(), hello()), timer_period=20_000))
    hv.create_vm("saine", GuestKernel((worker("S", "S", work=2_000, rounds=4),), timer_period=20_000))
    return hv.run(600_000)


@pytest.fixture(scope="module")
def vt_hv():
    """Two VMs (vm1 with a spinner) with both VT-x timers, as the notebook's section 2."""
    hv = Hypervisor(HypervisorConfig(preemption_timer=50_000, timers="vt"))
    hv.create_vm("vm1", GuestKernel((spinner(), worker("B", "B", work=20_000, rounds=6)), timer_period=20_000))
    hv.create_vm("vm2", GuestKernel((worker("C", "C", work=20_000, rounds=6),), timer_period=20_000))
    return hv.run(400_000)


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"preemption_timer": 0},
    {"exit_cost": -1},
    {"timers": "x"},
    {"io_exiting": "x"},
    {"io_bitmap_ports": frozenset({0x10000})},
    {"io_bitmap_ports": frozenset({-1})},
])
def test_config_rejects_bad_values(kwargs):
    """HypervisorConfig refuses out-of-range or unknown tunables with VmkitError."""
    with pytest.raises(VmkitError):
        HypervisorConfig(**kwargs)


def test_config_accepts_edge_values():
    """preemption_timer 1, exit_cost 0 and port 0xFFFF are accepted."""
    config = HypervisorConfig(preemption_timer=1, exit_cost=0, io_bitmap_ports=frozenset({0, 0xFFFF}))

    assert (config.preemption_timer, config.exit_cost) == (1, 0)


def test_create_vm_rejects_duplicate_name():
    """Two VMs cannot share a name."""
    hv = Hypervisor()
    hv.create_vm("vm", GuestKernel((hello(),)))

    with pytest.raises(VmkitError, match="exists already"):
        hv.create_vm("vm", GuestKernel((hello(),)))


def test_run_without_vm_raises():
    """run() with no VM is an error, not a silent no-op."""
    with pytest.raises(VmkitError, match="create_vm"):
        Hypervisor().run()


def test_run_negative_raises():
    """run(-1) is refused."""
    hv = Hypervisor()
    hv.create_vm("vm", GuestKernel((hello(),)))

    with pytest.raises(VmkitError):
        hv.run(-1)


def test_vm_lookup_unknown_name_raises():
    """hv.vm('nope') raises and names the VMs that exist."""
    hv = Hypervisor()
    hv.create_vm("vm", GuestKernel((hello(),)))

    with pytest.raises(VmkitError, match="'nope'.*vm"):
        hv.vm("nope")


# -- VMCS controls -------------------------------------------------------------------


def created(config):
    hv = Hypervisor(config)
    vm = hv.create_vm("vm", GuestKernel((hello(),)))
    return hv, vm


def test_vt_sets_external_interrupt_exiting_and_preemption_timer():
    """timers='vt' writes pin-based controls bits 0 and 6."""
    pin, _ = controls(*created(HypervisorConfig(timers="vt")))

    assert pin == PinBasedControls.EXTERNAL_INTERRUPT_EXITING | PinBasedControls.ACTIVATE_PREEMPTION_TIMER


def test_single_hypervisor_sets_only_external_interrupt_exiting():
    """timers='single-hypervisor' has external-interrupt exiting but no preemption timer."""
    pin, _ = controls(*created(HypervisorConfig(timers="single-hypervisor")))

    assert pin == PinBasedControls.EXTERNAL_INTERRUPT_EXITING


def test_single_guest_sets_no_pin_based_control():
    """timers='single-guest' writes 0 to the pin-based controls."""
    pin, _ = controls(*created(HypervisorConfig(timers="single-guest")))

    assert pin == 0


def test_default_proc_controls_are_hlt_and_unconditional_io_exiting():
    """The default config asks for HLT exiting and unconditional I/O exiting, nothing else."""
    _, proc = controls(*created(HypervisorConfig()))

    assert proc == ProcBasedControls.HLT_EXITING | ProcBasedControls.UNCONDITIONAL_IO_EXITING


def test_hlt_exiting_false_clears_hlt_exiting():
    """hlt_exiting=False leaves bit 7 of the processor-based controls clear."""
    _, proc = controls(*created(HypervisorConfig(hlt_exiting=False)))

    assert not proc & ProcBasedControls.HLT_EXITING


def test_io_exiting_none_sets_no_io_control():
    """io_exiting='none' sets neither bit 24 nor bit 25."""
    _, proc = controls(*created(HypervisorConfig(io_exiting="none")))

    assert not proc & (ProcBasedControls.UNCONDITIONAL_IO_EXITING | ProcBasedControls.USE_IO_BITMAPS)


def test_io_bitmap_mode_sets_use_io_bitmaps_only():
    """io_exiting='bitmap' sets bit 25 and not bit 24."""
    _, proc = controls(*created(HypervisorConfig(io_exiting="bitmap")))

    assert proc & ProcBasedControls.USE_IO_BITMAPS
    assert not proc & ProcBasedControls.UNCONDITIONAL_IO_EXITING


def test_io_bitmap_addresses_are_page_aligned_and_consecutive():
    """IO_BITMAP_A and IO_BITMAP_B are 4 KiB aligned, B right after A, different per VM."""
    hv = Hypervisor(HypervisorConfig(io_exiting="bitmap"))
    vms = [hv.create_vm(name, GuestKernel((hello(),))) for name in ("vm1", "vm2")]

    pairs = [(hv.vmx.vmcs_regions[vm.vmcs].read(VMCSField.IO_BITMAP_A),
              hv.vmx.vmcs_regions[vm.vmcs].read(VMCSField.IO_BITMAP_B)) for vm in vms]

    assert all(a % 0x1000 == 0 and b == a + 0x1000 for a, b in pairs)
    assert pairs[0][0] != pairs[1][0]


def test_io_bitmap_of_vm_has_exactly_the_configured_ports():
    """The VM's bitmap has the bit of every configured port set, and no other."""
    ports = {COM1, 0x80, 0x8123}
    hv, vm = created(HypervisorConfig(io_exiting="bitmap", io_bitmap_ports=frozenset(ports)))

    set_ports = {p for p in range(0x10000) if vm.io_bitmap[p >> 3] >> (p & 7) & 1}

    assert set_ports == ports


def test_each_vm_gets_its_own_vmcs():
    """Two VMs get two distinct, page-aligned VMCS regions."""
    hv = Hypervisor()
    a = hv.create_vm("a", GuestKernel((hello(),)))
    b = hv.create_vm("b", GuestKernel((hello(),)))

    assert a.vmcs != b.vmcs and a.vmcs % 0x1000 == 0 == b.vmcs % 0x1000
    assert {a.vmcs, b.vmcs} <= set(hv.vmx.vmcs_regions)


# -- I/O bitmaps ----------------------------------------------------------------------


def bitmap_with(*ports):
    bitmap = bytearray(8192)
    for p in ports:
        bitmap[p >> 3] |= 1 << (p & 7)
    return bytes(bitmap)


def test_io_bitmap_set_bit_exits():
    """A port whose bit is set exits; its neighbour does not."""
    bitmap = bitmap_with(COM1)

    assert io_bitmap_exits(bitmap, COM1, 1)
    assert not io_bitmap_exits(bitmap, COM1 + 1, 1)


def test_io_bitmap_wide_access_exits_on_second_port():
    """A 2-byte access exits when only the second port's bit is set."""
    bitmap = bitmap_with(0x41)

    assert io_bitmap_exits(bitmap, 0x40, 2)
    assert not io_bitmap_exits(bitmap, 0x40, 1)


def test_io_bitmap_high_ports_use_bitmap_b():
    """Port 0x8000 is bit 0 of byte 4096, the first byte of bitmap B."""
    bitmap = bytearray(8192)
    bitmap[4096] = 1

    assert io_bitmap_exits(bytes(bitmap), 0x8000, 1)
    assert not io_bitmap_exits(bytes(bitmap), 0x0000, 1)


def test_io_bitmap_wrapping_access_exits():
    """A 2-byte access at port 0xFFFF wraps to port 0 and exits whatever the bitmap says."""
    assert io_bitmap_exits(bytes(8192), 0xFFFF, 2)


# -- VM exits: trap and emulate -------------------------------------------------------


def test_cpuid_exits_with_reason_10(cpuid_hv):
    """CPUID in a guest always exits, reason 10."""
    assert ExitReason.CPUID in reasons(cpuid_hv)
    assert int(ExitReason.CPUID) == 10


def test_cpuid_answer_is_the_hypervisor_signature(cpuid_hv):
    """The guest program prints the emulated leaf 0x40000000 signature."""
    assert cpuid_hv.vm("vm").console.startswith("hypervisor: vmkitvmkitvm\n")


def test_hello_io_exits_decode_to_com1_out_byte(hello_hv):
    """The console bytes exit as OUT of 1 byte to port 0x3F8 through DX."""
    com1 = [q for q in io_exits(hello_hv) if q.port == COM1]

    assert com1
    assert all((q.direction, q.size, q.immediate, q.string) == ("out", 1, False, False) for q in com1)


def test_com1_exits_count_every_console_byte(hello_hv):
    """One COM1 exit per byte the guest printed, the kernel's final message included."""
    com1 = [q for q in io_exits(hello_hv) if q.port == COM1]

    assert hello_hv.vm("vm").console == HELLO_TEXT + IDLE_TEXT
    assert len(com1) == len((HELLO_TEXT + IDLE_TEXT).encode())


def test_pit_programming_exits_on_ports_0x43_and_0x40(hello_hv):
    """The kernel's PIT set-up exits first: command port 0x43, then channel 0 twice."""
    ports = [q.port for q in io_exits(hello_hv)][:3]

    assert ports == [0x43, 0x40, 0x40]


def test_every_exit_reason_is_an_exit_reason(hello_hv, faulty_hv):
    """Every recorded exit carries an ExitReason member."""
    assert all(isinstance(e.reason, ExitReason) for hv in (hello_hv, faulty_hv) for e in hv.exits)


def test_vmcs_holds_the_last_exit(hello_hv):
    """The VM's VMCS exit-reason and qualification fields hold the last exit."""
    vmcs = hello_hv.vmx.vmcs_regions[hello_hv.vm("vm").vmcs]
    last = hello_hv.exits[-1]

    assert vmcs.read(VMCSField.VM_EXIT_REASON) & 0xFFFF == last.reason
    assert vmcs.read(VMCSField.EXIT_QUALIFICATION) == last.qualification


def test_exit_counts_match_exit_list(faulty_hv):
    """exit_counts() is the per-VM tally of hv.exits."""
    counts = faulty_hv.exit_counts()

    for vm in faulty_hv.vms:
        tally = {}
        for r in reasons(faulty_hv, vm.name):
            tally[r.name] = tally.get(r.name, 0) + 1
        assert counts[vm.name] == tally


def test_finished_vm_exits_on_hlt_and_halts(hello_hv):
    """The kernel's final cli; hlt exits (reason 12) and powers the VM off."""
    assert reasons(hello_hv)[-1] is ExitReason.HLT
    assert hello_hv.vm("vm").state == "halted"


def test_vmlaunch_in_guest_exits_with_reason_20():
    """VMLAUNCH in a guest exits with reason 20."""
    hv = one_vm(vmx_probe("vmlaunch"))

    assert ExitReason.VMLAUNCH in reasons(hv)


def test_vmlaunch_in_guest_is_answered_with_ud():
    """The hypervisor injects #UD: the guest kernel kills the program."""
    hv = one_vm(vmx_probe("vmlaunch"))

    assert hv.vm("vm").console.startswith("kernel: #UD in pid 1, killed\n")
    assert hv.vm("vm").guest.processes()[0].state == "killed"


def test_vmcall_in_guest_exits_with_reason_18_and_resumes():
    """VMCALL exits with reason 18; the program goes on and exits normally."""
    hv = one_vm(vmx_probe("vmcall"))

    assert ExitReason.VMCALL in reasons(hv)
    assert hv.vm("vm").guest.processes()[0].state == "exited"


def test_broken_idt_gives_triple_fault_exit(faulty_hv):
    """A guest with an IDT of limit 0 ends in exit 2, TRIPLE_FAULT."""
    assert reasons(faulty_hv, "casse")[-1] is ExitReason.TRIPLE_FAULT
    assert faulty_hv.vm("casse").state == "triple fault"


def test_triple_fault_stops_only_its_vm(faulty_hv):
    """The healthy VM next to the triple-faulted one runs to completion."""
    saine = faulty_hv.vm("saine")

    assert saine.state == "halted"
    assert saine.console == "SSSS" + IDLE_TEXT


def test_spinner_vm_is_preempted_every_quantum(faulty_hv):
    """An infinite loop is taken back by the VMX-preemption timer more than once."""
    assert reasons(faulty_hv, "boucle").count(ExitReason.PREEMPTION_TIMER) > 1
    assert faulty_hv.vm("boucle").state == "runnable"


def test_wild_pointer_is_killed_inside_its_vm(faulty_hv):
    """A #PF is the guest kernel's business: the program is killed, the next one runs."""
    assert faulty_hv.vm("sauvage").console == "kernel: #PF in pid 1, killed\n" + HELLO_TEXT + IDLE_TEXT


def test_wild_pointer_causes_no_ept_exit(faulty_hv):
    """No EPT violation or misconfiguration (48, 49) is recorded for the #PF."""
    assert not {ExitReason.EPT_VIOLATION, ExitReason.EPT_MISCONFIG} & set(reasons(faulty_hv, "sauvage"))


def test_guest_fault_is_logged_as_in_guest_event(faulty_hv):
    """The #PF delivery through the guest's IDT is an 'in guest' event of that VM."""
    events = [e for e in faulty_hv.events if e.vm == "sauvage" and e.kind == "in guest"]

    assert any("#PF" in e.text for e in events)


def test_no_hlt_exiting_means_no_hlt_exit():
    """hlt_exiting=False: the finished kernel's HLT never exits."""
    hv = one_vm(hello(), config=HypervisorConfig(hlt_exiting=False), duration=150_000)

    assert ExitReason.HLT not in reasons(hv)


def test_no_hlt_exiting_keeps_finished_vm_burning_quanta():
    """hlt_exiting=False: the VM stays 'runnable' and is preempted after its last output."""
    hv = one_vm(hello(), config=HypervisorConfig(hlt_exiting=False), duration=150_000)
    last_out = max(e.time for e in hv.exits if e.reason is ExitReason.IO_INSTRUCTION)

    assert hv.vm("vm").state == "runnable"
    assert hv.vm("vm").console == HELLO_TEXT + IDLE_TEXT
    assert any(e.reason is ExitReason.PREEMPTION_TIMER and e.time > last_out for e in hv.exits)


def test_io_exiting_none_has_no_io_exit_but_output():
    """io_exiting='none': no exit 30, yet the devices still get the bytes."""
    hv = one_vm(hello(), config=HypervisorConfig(io_exiting="none"))

    assert ExitReason.IO_INSTRUCTION not in reasons(hv)
    assert hv.vm("vm").console == HELLO_TEXT + IDLE_TEXT


def test_io_bitmap_com1_only_exits_on_com1():
    """io_exiting='bitmap' with {0x3F8}: every I/O exit is on COM1, PIT and PIC go through."""
    config = HypervisorConfig(io_exiting="bitmap", io_bitmap_ports=frozenset({COM1}))
    hv = one_vm(hello(), config=config)

    ports = {q.port for q in io_exits(hv)}

    assert ports == {COM1}
    assert hv.vm("vm").console == HELLO_TEXT + IDLE_TEXT


# -- the guest's timer, injected -------------------------------------------------------


def test_vt_injects_timer_vector_0x20(vt_hv):
    """With VT-x timers the guest's ticks are injected as vector 0x20 into both VMs."""
    injected = {e.vm for e in vt_hv.events if e.kind == "inject" and e.text.startswith("vector 0x20")}

    assert injected == {"vm1", "vm2"}


def test_vt_guest_ticks_come_as_external_interrupt_exits(vt_hv):
    """The guest's timer is backed by a host timer: exit 1 in each VM."""
    assert all(ExitReason.EXTERNAL_INTERRUPT in reasons(vt_hv, vm.name) for vm in vt_hv.vms)


def test_injection_field_not_valid_after_run(vt_hv):
    """The VM-entry interruption-information field of every VMCS is not valid after the run."""
    for vm in vt_hv.vms:
        raw = vt_hv.vmx.vmcs_regions[vm.vmcs].read(VMCSField.VM_ENTRY_INTR_INFO_FIELD)
        assert not raw & INTR_INFO_VALID
        assert not InterruptionInfo.decode(raw).valid


def test_single_hypervisor_never_injects():
    """timers='single-hypervisor': the guest never receives a timer interrupt."""
    config = HypervisorConfig(preemption_timer=50_000, timers="single-hypervisor")
    hv = one_vm(spinner(), worker("B", "B", work=20_000, rounds=6), config=config, timer_period=20_000)

    assert not [e for e in hv.events if e.kind == "inject"]
    assert hv.vm("vm").console == ""


# -- running in pieces ----------------------------------------------------------------


def test_split_run_pausing_inside_a_guest_gives_same_exits_and_consoles():
    """run(a) then run(b), pausing inside a guest, equals one run(a + b)."""
    whole = two_workers().run(300_000)
    split = two_workers().run(77_777)
    assert (split.now, split.vmx.state) == (77_777, VMXState.NON_ROOT)  # paused inside a guest

    split.run(300_000 - 77_777)

    assert split.now == whole.now
    assert split.exits == whole.exits
    assert [vm.console for vm in split.vms] == [vm.console for vm in whole.vms]


def test_split_run_gives_same_cpu_shares():
    """run(a) then run(b) gives the same time per (vm, holder) as one run(a + b)."""
    whole = two_workers().run(300_000)
    split = two_workers().run(77_777).run(300_000 - 77_777)

    assert share(split.spans()) == share(whole.spans())


def test_split_run_gives_same_spans():
    """run(a) then run(b) gives exactly the spans of one run(a + b)."""
    whole = two_workers().run(300_000)
    split = two_workers().run(77_777).run(300_000 - 77_777)

    assert split.spans() == whole.spans()


def test_run_advances_the_horizon():
    """run(n) moves the horizon by n; an exit in progress at the horizon may pass it by up to exit_cost."""
    hv = two_workers().run(50_000)

    hv.run(50_000)

    assert 100_000 <= hv.now <= 100_000 + hv.config.exit_cost


def _two_small_vms(timers: str) -> Hypervisor:
    hv = Hypervisor(HypervisorConfig(exit_cost=100, preemption_timer=5_000, timers=timers))
    hv.create_vm("a", GuestKernel((hello("h", "x"), worker("W", "W", work=500, rounds=3)), timer_period=3_000))
    hv.create_vm("b", GuestKernel((hello("h", "y"), spinner()), timer_period=3_000))
    return hv


@pytest.mark.parametrize("timers", ["vt", "single-hypervisor", "single-guest"])
@pytest.mark.parametrize("chunk", [1, 7, 1_000, 4_999])
def test_many_small_runs_equal_one_big_run(timers, chunk):
    """Any split of run() gives the same exits, consoles and spans as one run of the same length."""
    total = 30_000
    whole = _two_small_vms(timers).run(total)
    split = _two_small_vms(timers)
    for _ in range(total // chunk):
        split.run(chunk)
    split.run(total - chunk * (total // chunk))

    assert split.exits == whole.exits
    assert [vm.console for vm in split.vms] == [vm.console for vm in whole.vms]
    assert split.spans() == whole.spans()


def test_run_zero_after_pause_keeps_the_paused_guest():
    """run(0) between two runs changes nothing."""
    whole = two_workers().run(100_000)
    split = two_workers().run(77_777)

    split.run(0)
    split.run(100_000 - 77_777)

    assert split.exits == whole.exits


def test_create_vm_after_paused_run():
    """A VM can be added between two runs."""
    hv = two_workers().run(77_777)

    hv.create_vm("vm3", GuestKernel((hello(),)))

    assert hv.vm("vm3").state == "runnable"


# -- VMX history and state --------------------------------------------------------------


def test_history_launches_each_vmcs_once_then_resumes(vt_hv):
    """Each VM is entered once with VMLAUNCH, then always with VMRESUME."""
    entries = [t.instruction for t in vt_hv.vmx.history if t.instruction in ("vmlaunch", "vmresume")]

    assert entries.count("vmlaunch") == len(vt_hv.vms)
    assert entries[0] == "vmlaunch"
    assert entries.count("vmresume") > 0


def test_history_has_one_vm_exit_transition_per_exit(vt_hv):
    """Every recorded exit is a 'vm exit' transition from non-root to root."""
    exits = [t for t in vt_hv.vmx.history if t.instruction == "vm exit"]

    assert len(exits) == len(vt_hv.exits)
    assert all((t.before, t.after) == (VMXState.NON_ROOT, VMXState.ROOT) for t in exits)


def test_vmx_in_root_after_all_vms_halted(hello_hv):
    """When every VM has halted, run() returns in VMX root operation."""
    assert hello_hv.vmx.state is VMXState.ROOT


def test_vmx_in_non_root_after_pausing_inside_a_guest():
    """When run() ends while a guest runs, the VMX stays in non-root operation."""
    hv = two_workers().run(77_777)

    assert hv.vmx.state is VMXState.NON_ROOT


# -- spans ------------------------------------------------------------------------------


def test_spans_are_contiguous_from_zero_to_now(vt_hv):
    """The spans tile [0, now]: each starts where the previous one ended."""
    spans = vt_hv.spans()

    assert spans[0].start == 0 and spans[-1].end == vt_hv.now
    assert all(a.end == b.start for a, b in zip(spans, spans[1:]))
    assert all(s.length > 0 for s in spans)


def test_spans_never_repeat_a_holder_back_to_back(vt_hv):
    """Two consecutive spans of one run always have different (vm, holder)."""
    spans = vt_hv.spans()

    assert all((a.vm, a.holder) != (b.vm, b.holder) for a, b in zip(spans, spans[1:]))


def test_share_totals_equal_now(vt_hv):
    """share() of the spans sums to hv.now."""
    assert sum(share(vt_hv.spans()).values()) == vt_hv.now


def test_hypervisor_time_covers_exit_costs(vt_hv):
    """The hypervisor holds the CPU at least exit_cost per exit."""
    held = share(vt_hv.spans())[(None, "hypervisor")]

    assert held >= vt_hv.config.exit_cost * len(vt_hv.exits)


def test_spans_holders_are_known_parties(vt_hv):
    """Holders are hypervisor (no VM), or kernel, idle or a pid inside a VM."""
    for s in vt_hv.spans():
        if s.vm is None:
            assert s.holder in ("hypervisor", "idle")
        else:
            assert s.vm in ("vm1", "vm2")
            assert s.holder in ("kernel", "idle") or s.holder.startswith("pid ")


def test_exit_records_the_address_of_the_exiting_instruction(cpuid_hv):
    """An exit's rip is GUEST_RIP: the CPUID itself, not the instruction the handler skipped to."""
    vcpu = cpuid_hv.vms[0].guest.vcpu
    cpuid_exits = [e for e in cpuid_hv.exits if e.reason is ExitReason.CPUID]

    assert cpuid_exits
    assert all(vcpu.disassemble_at(e.rip, 1)[0].mnemonic == "cpuid" for e in cpuid_exits)


def test_create_vm_after_a_paused_run_takes_the_cpu_back_with_an_exit():
    """Adding a VM while a guest is paused first leaves the guest by an external-interrupt exit."""
    hv = two_vms(duration=77_777)
    exits = len(hv.exits)

    hv.create_vm("vm3", GuestKernel((hello(),)))

    assert hv.exits[exits].reason is ExitReason.EXTERNAL_INTERRUPT
    assert hv.vmx.state.name == "ROOT"


def test_a_vm_created_after_all_halted_starts_at_the_horizon():
    """When every VM has stopped, run() still moves time to its horizon: a later VM starts there."""
    hv = Hypervisor()
    hv.create_vm("a", GuestKernel((hello(),)))
    hv.run(1_000_000)

    hv.create_vm("b", GuestKernel((spinner(),)))
    hv.run(10)

    assert 1_000_010 <= hv.now <= 1_000_010 + hv.config.exit_cost


def test_a_guest_halted_with_interrupts_off_costs_no_stepping():
    """Without HLT exiting, a guest stuck in cli; hlt idles to the next event instead of single-stepping."""
    hv = Hypervisor(HypervisorConfig(hlt_exiting=False, exit_cost=10))
    vm = hv.create_vm("a", GuestKernel((hello(),), timer_period=500))

    hv.run(1_000_000)

    assert vm.activity == "hlt" and hv.now >= 1_000_000
    assert len(hv.exits) < 5_000  # one exit per quantum or tick, not per instruction


@pytest.mark.parametrize("ports", [5, None, [0x3F8]])
def test_io_bitmap_ports_must_be_a_set(ports):
    """io_bitmap_ports is a set of port numbers."""
    with pytest.raises(VmkitError, match="set of ports"):
        HypervisorConfig(io_bitmap_ports=ports)


def test_hypervisor_needs_a_config_object():
    """Hypervisor(config) refuses a dict."""
    with pytest.raises(VmkitError, match="HypervisorConfig"):
        Hypervisor({"exit_cost": 3})


def test_guest_kernel_msr_accesses_exit_without_msr_bitmaps():
    """Without MSR bitmaps, the kernel's boot RDMSR and WRMSR exit with reasons 31 and 32."""
    hv = one_vm(hello(), duration=100_000)

    reasons = [e.reason for e in hv.exits[:2]]

    assert reasons == [ExitReason.MSR_READ, ExitReason.MSR_WRITE]
    assert hv.vms[0].msrs[0xC0000102] != 0


def test_rdmsr_of_the_apic_base_is_emulated():
    """The hypervisor answers RDMSR of IA32_APIC_BASE (0x1B) with the local APIC's reset address."""
    hv = one_vm(hello(), duration=100_000)

    first = hv.exits[0]

    assert first.reason is ExitReason.MSR_READ and "0xfee00900" in first.text


def test_cr3_load_exiting_traps_each_address_space_switch():
    """With CR3-load exiting, each switch between two programs is exit 28 with MOV-to-CR3 by RBX."""
    hv = Hypervisor(HypervisorConfig(cr3_load_exiting=True))
    hv.create_vm("vm", GuestKernel((worker("A", "A", work=2_000, rounds=3),
                                    worker("B", "B", work=2_000, rounds=3)), timer_period=5_000))

    hv.run(300_000)

    cr = [e for e in hv.exits if e.reason is ExitReason.CR_ACCESS]
    q = CRAccessQualification.decode(cr[0].qualification)
    assert len(cr) >= 4 and (q.cr, q.access_type, q.register) == (3, CRAccessType.MOV_TO_CR, 3)
    assert hv.vms[0].console.endswith("kernel: all done, halt\n")


def test_cr3_loads_do_not_exit_by_default():
    """CR3-load exiting is off by default (as KVM with EPT): no exit 28."""
    hv = two_workers().run(300_000)

    assert all(e.reason is not ExitReason.CR_ACCESS for e in hv.exits)


def test_exited_cr3_write_reaches_the_guest():
    """After the handler emulates MOV to CR3, the guest's CR3 holds the new process's value."""
    hv = Hypervisor(HypervisorConfig(cr3_load_exiting=True))
    vm = hv.create_vm("vm", GuestKernel((worker("A", "A", work=2_000, rounds=3),
                                         worker("B", "B", work=2_000, rounds=3)), timer_period=5_000))

    hv.run(30_000)

    cr3 = vm.guest.vcpu.reg("cr3")
    assert cr3 in (0x28000, 0x38000)
