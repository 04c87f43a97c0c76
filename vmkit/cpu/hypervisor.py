"""A hypervisor in VMX root operation: VMs, trap-and-emulate, two timers.

Each VM is a guest kernel (``kernel.py``) on its own VCPU with a VMCS. The
hypervisor enters it with VMLAUNCH/VMRESUME (``vmx.py``) and gets the CPU back
on a VM exit. Which instructions exit follows the VMCS controls it writes
(pin-based: external-interrupt exiting, activate VMX-preemption timer;
processor-based: HLT exiting, CR3-load exiting, unconditional I/O exiting,
I/O bitmaps); CPUID, VMCALL and the VMX instructions always exit, and so do
RDMSR/WRMSR without MSR bitmaps (SDM Vol. 3C §25.1). Exits are dispatched
to ``handle_<exit reason>`` methods, looked up by name.

The two timers of the slides: the VMX-preemption timer is the hypervisor's
quantum (exit 52); the guest's PIT is a virtual device whose ticks are backed
by a host timer (exit 1, external interrupt, as KVM's hrtimers) and injected
through the VM-entry interruption-information field, or after an
interrupt-window exit (7) when the guest has IF = 0. ``timers="single-*"``
shows the conflict of a machine with one timer.

Time is counted in guest instructions; a VM exit and entry round trip costs
``exit_cost`` of them (deliberately simple: a real round trip is about
1,000-2,000 cycles). Taught in course/01_cpu/03_timers_multiplexing.ipynb.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from vmkit.core import VmkitError, expect_int
from vmkit.cpu.guest import Guest, describe_delivery
from vmkit.cpu.kernel import GuestKernel
from vmkit.cpu.trace import Event, Span, Timeline
from vmkit.cpu.vcpu import Stop, StopKind
from vmkit.cpu.vmx import (
    HOST_STATE_64, VMX, VMX_INSTRUCTION_EXITS, CRAccessQualification, CRAccessType, ExitReason,
    InterruptionInfo, InterruptionType,
    IOQualification, PinBasedControls, ProcBasedControls, VMCSField,
)
from vmkit.cpu.x86 import Vector

VMXON_REGION = 0x1000
VMCS_BASE = 0x10000
SIGNATURE = b"vmkitvmkitvm"  # CPUID 0x40000000, as KVM's "KVMKVMKVM" or Xen's "XenVMMXenVMM"
TIMER_MODES = ("vt", "single-hypervisor", "single-guest")
# exit qualification's GPR numbering (SDM Vol. 3C, Table 27-3)
GPR_ENCODING = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
# MSRs the hypervisor answers: the local APIC at its reset address, enabled, boot CPU
EMULATED_MSRS = {0x1B: 0xFEE0_0900}
IO_MODES = ("unconditional", "bitmap", "none")
IO_BITMAPS = 0x20000  # host-physical address of the first VM's I/O bitmap A


def io_bitmap_exits(bitmap: bytes, port: int, size: int) -> bool:
    """Does an access of ``size`` bytes at ``port`` exit? (SDM Vol. 3C §25.1.3)

    Bitmap A (bytes 0..4095) covers ports 0x0000-0x7FFF, bitmap B the rest, one
    bit per port; an access exits if the bit of any port it touches is set.
    """
    if port + size > 0x10000:
        return True  # an access that wraps around the port space always exits
    return any(bitmap[p >> 3] >> (p & 7) & 1 for p in range(port, port + size))


@dataclass(frozen=True)
class HypervisorConfig:
    """Tunables of the hypervisor (instructions are the unit of time)."""

    preemption_timer: int = 10_000
    exit_cost: int = 1_000
    timers: str = "vt"
    hlt_exiting: bool = True
    cr3_load_exiting: bool = False  # off, as KVM with EPT; shadow paging needs it (chapter 2)
    io_exiting: str = "unconditional"       # or "bitmap" (exit on io_bitmap_ports only), or "none"
    io_bitmap_ports: frozenset[int] = frozenset({0x3F8})

    def __post_init__(self):
        expect_int(self.preemption_timer, "preemption_timer (instructions)", minimum=1)
        expect_int(self.exit_cost, "exit_cost (instructions)")
        for flag in ("hlt_exiting", "cr3_load_exiting"):
            if not isinstance(getattr(self, flag), bool):
                raise VmkitError(f"{flag} is True or False, not {getattr(self, flag)!r}")
        if self.timers not in TIMER_MODES:
            raise VmkitError(f"timers must be one of {TIMER_MODES}, not {self.timers!r}")
        if self.io_exiting not in IO_MODES:
            raise VmkitError(f"io_exiting must be one of {IO_MODES}, not {self.io_exiting!r}")
        if not isinstance(self.io_bitmap_ports, (set, frozenset)):
            raise VmkitError(f"io_bitmap_ports is a set of ports, e.g. frozenset({{0x3F8}}), not {self.io_bitmap_ports!r}")
        if any(not isinstance(p, int) or not 0 <= p <= 0xFFFF for p in self.io_bitmap_ports):
            raise VmkitError("I/O ports are 16-bit: 0..0xFFFF")


@dataclass(frozen=True)
class Exit:
    """One VM exit as the hypervisor saw it."""

    time: int
    vm: str
    reason: ExitReason
    qualification: int
    rip: int
    text: str

    def __str__(self) -> str:
        return f"{self.time:>8}  [{self.vm}] exit {int(self.reason):>2} {self.reason.name}: {self.text}"


@dataclass
class VM:
    """One virtual machine: a guest on its VCPU, its VMCS and its virtual timer."""

    name: str
    guest: Guest
    vmcs: int
    state: str = "runnable"   # runnable, waiting (hlt), halted, triple fault
    next_tick: int | None = None
    pending_irq: bool = False
    window: bool = False      # interrupt-window exiting requested
    activity: str = "active"  # guest activity state: "hlt" after a HLT that did not exit
    io_bitmap: bytes = bytes(8192)
    msrs: dict[int, int] = field(default_factory=dict)  # MSR values the guest wrote
    back_page: object = None  # with an EPT: the VMM's allocator for a gpa on first touch
    exits: Counter = field(default_factory=Counter)

    @property
    def console(self) -> str:
        return self.guest.console()


class Hypervisor:
    """A type-1 hypervisor on one physical CPU, time-multiplexing its VMs."""

    def __init__(self, config: HypervisorConfig = HypervisorConfig(), *, seed: int = 0):
        if not isinstance(config, HypervisorConfig):
            raise VmkitError(f"Hypervisor(config) takes a HypervisorConfig, not {config!r}")
        self.config = config
        self.seed = seed  # scheduling is round robin and deterministic
        self.vmx = VMX()
        self.vmx.set_cr4_vmxe(True)
        self.vmx.vmxon(VMXON_REGION)
        self.vms: list[VM] = []
        self.now = 0
        self.exits: list[Exit] = []
        self.events: list[Event] = []
        self.timeline = Timeline()
        self._turn = 0
        self._horizon = 0
        # a quantum the last run() left unfinished: (vm, time left, inside the guest?)
        self._resume: tuple[VM, int | None, bool] | None = None

    # -- VMs ----------------------------------------------------------------------

    def create_vm(self, name: str, kernel: GuestKernel) -> VM:
        """Create a VM: boot image in its memory, a fresh VMCS, the controls written."""
        if not isinstance(name, str) or not name:
            raise VmkitError(f"a VM's name is a non-empty str, not {name!r}")
        if not isinstance(kernel, GuestKernel):
            raise VmkitError(f"create_vm(name, kernel) needs a GuestKernel, not {kernel!r}")
        if any(vm.name == name for vm in self.vms):
            raise VmkitError(f"a VM named {name!r} exists already")
        self._take_cpu_back()
        address = VMCS_BASE + len(self.vms) * 0x1000
        vm = VM(name, Guest(kernel), address)
        vmx = self.vmx
        vmx.allocate_vmcs(address)
        vmx.vmclear(address)
        vmx.vmptrld(address)
        config = self.config
        # vt: both timers; single-hypervisor: its own host timer, seen as external
        # interrupts; single-guest: no exiting at all, the guest's ticks reach its IDT
        pin = {"vt": PinBasedControls.EXTERNAL_INTERRUPT_EXITING | PinBasedControls.ACTIVATE_PREEMPTION_TIMER,
               "single-hypervisor": PinBasedControls.EXTERNAL_INTERRUPT_EXITING,
               "single-guest": PinBasedControls(0)}[config.timers]
        proc = ProcBasedControls.HLT_EXITING if config.hlt_exiting else ProcBasedControls(0)
        if config.cr3_load_exiting:
            proc |= ProcBasedControls.CR3_LOAD_EXITING
        if config.io_exiting == "unconditional":
            proc |= ProcBasedControls.UNCONDITIONAL_IO_EXITING
        elif config.io_exiting == "bitmap":
            proc |= ProcBasedControls.USE_IO_BITMAPS
            bitmap = bytearray(8192)
            for port in config.io_bitmap_ports:
                bitmap[port >> 3] |= 1 << (port & 7)
            vm.io_bitmap = bytes(bitmap)
            base = IO_BITMAPS + len(self.vms) * 0x2000
            vmx.vmwrite(VMCSField.IO_BITMAP_A, base)
            vmx.vmwrite(VMCSField.IO_BITMAP_B, base + 0x1000)
        vmx.vmwrite(VMCSField.PIN_BASED_VM_EXEC_CONTROL, pin)
        vmx.vmwrite(VMCSField.CPU_BASED_VM_EXEC_CONTROL, proc)
        for f, value in HOST_STATE_64.items():
            vmx.vmwrite(f, value)
        self._write_guest_state(vm)
        self.vms.append(vm)
        self.events.append(Event(self.now, "vm", f"created, VMCS at {address:#x}", name))
        return vm

    def _take_cpu_back(self) -> None:
        """If the last run() paused inside a guest, get the CPU back as a VMM must: by a VM exit.

        The host's own interrupt (external-interrupt exiting) is how a real VMM
        regains the CPU for management work.
        """
        if self._resume is None or not self._resume[2]:
            return
        vm, quantum, _ = self._resume
        self._resume = (vm, quantum, False)
        self._exit(vm, ExitReason.EXTERNAL_INTERRUPT, None, "the host takes the CPU back")

    def vm(self, name: str) -> VM:
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise VmkitError(f"no VM named {name!r}; VMs: {', '.join(v.name for v in self.vms)}")

    def _guest_state(self, vm: VM) -> dict[str, int]:
        """The guest-state fields a VM exit saves (and VM entry loads), by VMCS field name."""
        vcpu = vm.guest.vcpu
        return {"guest_rip": vcpu.rip, "guest_rsp": vcpu.reg("rsp"),
                "guest_rflags": vcpu.reg("rflags"), "guest_cr3": vcpu.reg("cr3")}

    def _write_guest_state(self, vm: VM) -> None:
        # the VMM fills the guest-state area with VMWRITE before the first entry
        for name, value in self._guest_state(vm).items():
            self.vmx.vmwrite(VMCSField[name.upper()], value)

    # -- running ------------------------------------------------------------------

    def run(self, instructions: int = 200_000) -> Hypervisor:
        """Advance the simulation's horizon by ``instructions`` units of time and run up to it.

        The horizon, not ``now``, is what moves: an exit in progress at the
        horizon completes (``now`` may pass it by up to ``exit_cost``), and
        ``run(a)`` then ``run(b)`` is exactly ``run(a + b)``.
        """
        expect_int(instructions, "instructions")
        if not self.vms:
            raise VmkitError("no VM to run: create_vm(name, kernel) first")
        self._horizon += instructions
        until = self._horizon
        if self._resume is not None and self.now < until:  # the last run() stopped mid-quantum
            vm, quantum, entered = self._resume
            self._resume = None
            self._enter(vm, until, quantum=quantum, entered=entered)
        while self.now < until:
            vm = self._pick()
            if vm is None:  # every VM halted or waiting: the CPU idles until a tick, or the horizon
                waiting = [v.next_tick for v in self.vms if v.state == "waiting" and v.next_tick]
                self.timeline.mark(self.now, "idle")
                self.now = min(until, max(self.now, min(waiting))) if waiting else until
                self._timer_ticks()
                continue
            self._enter(vm, until)
        if self._resume is None or not self._resume[2]:
            self.timeline.mark(self.now, "hypervisor")
        return self

    def _pick(self) -> VM | None:
        self._timer_ticks()
        for i in range(len(self.vms)):
            vm = self.vms[(self._turn + i) % len(self.vms)]
            if vm.state == "runnable":
                self._turn = (self._turn + i + 1) % len(self.vms)
                return vm
        return None

    def _timer_ticks(self) -> None:
        for vm in self.vms:
            if vm.next_tick is not None and self.now >= vm.next_tick:
                vm.next_tick = vm.guest.devices.pit.next_after(vm.next_tick, self.now)
                vm.pending_irq = True
                if vm.state == "waiting":
                    vm.state = "runnable"

    def _enter(self, vm: VM, until: int, *, quantum: int | None = None, entered: bool = False) -> None:
        """Give ``vm`` the CPU for one quantum: entries and exits until the quantum ends.

        After an exit that does not end the quantum (I/O, CPUID, ...) the VMM
        resumes the same VM with the time left, as SDM Vol. 3C, ch. 31 of the 2016 edition, advises
        ("initial VM quantum less the time the VM has already run"). ``quantum``
        and ``entered`` resume a quantum that the last run() left unfinished,
        in root operation (``entered`` False) or inside the guest (True).
        """
        vmx = self.vmx
        if not entered and (vmx.current_vmcs is None or vmx.current_vmcs.address != vm.vmcs):
            vmx.vmptrld(vm.vmcs)
        if quantum is None and self.config.timers != "single-guest":
            quantum = self.config.preemption_timer
        while vm.state == "runnable":
            if not entered:
                if self.now >= until:
                    self._resume = (vm, quantum, False)
                    return
                self._prepare_injection(vm)
                if vmx.current_vmcs.launch_state == "clear":
                    vmx.vmlaunch()
                else:
                    vmx.vmresume()
                if self.config.timers == "vt":
                    vmx.current_vmcs.write(VMCSField.VMX_PREEMPTION_TIMER_VALUE, quantum)
            entered = False
            reason, ran = self._run_guest(vm, until, quantum)
            if quantum is not None:
                quantum -= ran
            if reason is None:  # the simulation paused inside the guest
                self._resume = (vm, quantum, True)
                return
            if reason in (ExitReason.PREEMPTION_TIMER, ExitReason.TRIPLE_FAULT, ExitReason.HLT):
                return
            if reason is ExitReason.EXTERNAL_INTERRUPT and self.config.timers == "single-hypervisor":
                return

    def _prepare_injection(self, vm: VM) -> None:
        if not vm.pending_irq:
            return
        if self.config.timers == "single-hypervisor":
            vm.pending_irq = False  # the only timer is ours: the guest never sees its ticks
        elif vm.guest.interrupts_enabled:
            self.vmx.vmwrite(VMCSField.VM_ENTRY_INTR_INFO_FIELD,
                             InterruptionInfo(int(Vector.TIMER), InterruptionType.EXTERNAL_INTERRUPT).encode())
            vm.pending_irq = vm.window = False
        else:
            vm.window = True  # interrupt-window exiting: exit 7 as soon as IF = 1

    def _controls(self) -> tuple[PinBasedControls, ProcBasedControls]:
        vmcs = self.vmx.current_vmcs
        return (PinBasedControls(vmcs.read(VMCSField.PIN_BASED_VM_EXEC_CONTROL)),
                ProcBasedControls(vmcs.read(VMCSField.CPU_BASED_VM_EXEC_CONTROL)))

    def _run_guest(self, vm: VM, until: int, quantum: int | None) -> tuple[ExitReason | None, int]:
        """Non-root operation until a VM exit; return its reason (None: simulation paused) and the time run.

        What exits is read from the current VMCS's controls, as the CPU does.
        """
        guest = vm.guest
        started = self.now
        pin, proc = self._controls()
        # what non-root operation traps, read from the controls (CR3_TARGET_COUNT is 0;
        # without MSR bitmaps every RDMSR/WRMSR exits, SDM Vol. 3C §25.1.3)
        guest.vcpu.trapping = {kind for kind, on in (
            (StopKind.CR_ACCESS, proc & ProcBasedControls.CR3_LOAD_EXITING),
            (StopKind.MSR, not proc & ProcBasedControls.USE_MSR_BITMAPS)) if on}
        self._inject(vm)
        if vm.state != "runnable":
            return ExitReason.TRIPLE_FAULT, 0
        if pin & PinBasedControls.ACTIVATE_PREEMPTION_TIMER:
            quantum_reason = ExitReason.PREEMPTION_TIMER
        else:  # the hypervisor's own timer interrupt, with external-interrupt exiting
            quantum_reason = ExitReason.EXTERNAL_INTERRUPT
        end = started + quantum if quantum is not None else None
        while True:
            if end is not None and self.now >= end:
                return self._exit(vm, quantum_reason, None, ""), self.now - started
            if vm.next_tick is not None and self.now >= vm.next_tick:
                if pin & PinBasedControls.EXTERNAL_INTERRUPT_EXITING:
                    return self._exit(vm, ExitReason.EXTERNAL_INTERRUPT, None, ""), self.now - started
                self._timer_ticks()  # no exiting: the tick goes straight through the guest's IDT
                if guest.interrupts_enabled:
                    vm.pending_irq = False
                    vm.activity = "active"
                    guest.vcpu.deliver(int(Vector.TIMER), external=True)
            if vm.window and guest.interrupts_enabled:
                return self._exit(vm, ExitReason.PENDING_INTERRUPT, None, ""), self.now - started
            if self.now >= until:
                return None, self.now - started
            budget = until - self.now
            if end is not None:
                budget = min(budget, end - self.now)
            if vm.next_tick is not None:
                budget = min(budget, vm.next_tick - self.now)
            if vm.activity == "hlt":   # halted inside the guest: the CPU idles in non-root
                self.timeline.mark(self.now, "idle", vm.name)
                self.now += budget     # until the next event; IF cannot change meanwhile
                continue
            if vm.window:
                budget = 1  # step until IF = 1: the interrupt window opens on that boundary
            start = self.now
            self.timeline.mark(start, guest.holder(), vm.name)
            guest.user_entries.clear()
            stop = guest.vcpu.run(budget)
            for offset, pid in guest.entries_within(stop):
                self.timeline.mark(start + offset, f"pid {pid}", vm.name)
            self.now += stop.retired
            reason = self._in_guest(vm, stop, proc)
            if reason is not None:
                return self._exit(vm, reason, stop, ""), self.now - started

    def _in_guest(self, vm: VM, stop: Stop, proc: ProcBasedControls) -> ExitReason | None:
        """What the CPU does in non-root operation: an exit reason, or None (done in the guest)."""
        kind = stop.kind
        if kind is StopKind.IO:
            if proc & ProcBasedControls.USE_IO_BITMAPS:  # bit 25 overrides bit 24
                exits = io_bitmap_exits(vm.io_bitmap, stop.port, stop.size)
            else:
                exits = bool(proc & ProcBasedControls.UNCONDITIONAL_IO_EXITING)
            if exits:
                return ExitReason.IO_INSTRUCTION
            self._device_io(vm, stop)  # no exit: the access reaches the device directly
            self.now += 1
            return None
        if kind is StopKind.CPUID:
            return ExitReason.CPUID  # CPUID always exits
        if kind is StopKind.CR_ACCESS:
            return ExitReason.CR_ACCESS
        if kind is StopKind.EPT_VIOLATION:
            return ExitReason.EPT_VIOLATION
        if kind is StopKind.MSR:
            return ExitReason.MSR_READ if stop.direction == "in" else ExitReason.MSR_WRITE
        if kind is StopKind.RDTSC:
            if proc & ProcBasedControls.RDTSC_EXITING:
                return ExitReason.RDTSC
            self.now += 1  # no exit: the guest reads the TSC plus the VMCS's TSC offset
            vm.guest.answer_rdtsc(stop, self.now + self.vmx.current_vmcs.read(VMCSField.TSC_OFFSET))
            return None
        if kind is StopKind.HLT:
            if proc & ProcBasedControls.HLT_EXITING:
                return ExitReason.HLT
            vm.guest.skip(stop)
            vm.activity = "hlt"
            return None
        if kind is StopKind.INVALID and stop.mnemonic == "vmcall":
            return ExitReason.VMCALL
        if kind is StopKind.INVALID and stop.mnemonic in VMX_INSTRUCTION_EXITS:
            return VMX_INSTRUCTION_EXITS[stop.mnemonic]
        if kind is StopKind.BUDGET:
            return None
        # exceptions and int n go through the guest's own IDT: no exit
        delivery = vm.guest.deliver_stop(stop)
        what = f"{stop.kind.value} at {stop.rip:#x}: {describe_delivery(delivery)}"
        self.events.append(Event(self.now, "in guest", what, vm.name))
        return ExitReason.TRIPLE_FAULT if delivery.triple_fault else None

    def _exit(self, vm: VM, reason: ExitReason, stop: Stop | None, text: str) -> ExitReason:
        qualification = 0
        if reason is ExitReason.IO_INSTRUCTION:
            qualification = IOQualification(
                size=stop.size, direction=stop.direction, string=False, rep=False,
                immediate=stop.length == 2, port=stop.port).encode()
        elif reason is ExitReason.EPT_VIOLATION:
            access = {"read": 1, "write": 2, "fetch": 4}[stop.access]
            qualification = access | 1 << 7 | 1 << 8  # the access, gla valid, final translation
        elif reason is ExitReason.CR_ACCESS:
            qualification = CRAccessQualification(
                cr=3, access_type=CRAccessType.MOV_TO_CR, register=stop.register).encode()
        vcpu = vm.guest.vcpu
        # the processor itself saves the guest state and the exit information
        extra = {"guest_physical_address": stop.address} if reason is ExitReason.EPT_VIOLATION else {}
        self.vmx.vm_exit(reason, qualification, vm_exit_instruction_len=stop.length if stop else 0,
                         **self._guest_state(vm), **extra)
        vm.exits[reason] += 1
        self.timeline.mark(self.now, "hypervisor")
        rip = vcpu.rip  # GUEST_RIP: the instruction that exited, before a handler skips it
        handler = getattr(self, f"handle_{reason.name.lower()}")
        detail = handler(vm, stop) or text
        self.exits.append(Exit(self.now, vm.name, reason, qualification, rip, detail))
        self.now += self.config.exit_cost
        return reason

    def _inject(self, vm: VM) -> None:
        """VM entry delivers the event in the interruption-information field, if valid."""
        # the processor reads its own VMCS here: this is VM entry, not a VMREAD
        info = InterruptionInfo.decode(self.vmx.current_vmcs.read(VMCSField.VM_ENTRY_INTR_INFO_FIELD))
        if not info.valid:
            return
        external = info.type == InterruptionType.EXTERNAL_INTERRUPT
        delivery = vm.guest.vcpu.deliver(info.vector, external=external)
        vm.activity = "active"  # an event wakes a halted guest
        self.events.append(Event(self.now, "inject", describe_delivery(delivery), vm.name))
        # the field is consumed by this entry; the next exit clears its valid bit anyway
        self.vmx.current_vmcs.write(VMCSField.VM_ENTRY_INTR_INFO_FIELD, 0)
        if delivery.triple_fault:
            self._exit(vm, ExitReason.TRIPLE_FAULT, None, "")

    # -- exit handlers: handle_<ExitReason name> ------------------------------------

    def _skip(self, vm: VM, stop: Stop) -> None:
        vm.guest.skip(stop)

    def _device_io(self, vm: VM, stop: Stop) -> str:
        """Perform the guest's IN/OUT on its (virtual) device and move past it."""
        devices = vm.guest.devices
        if stop.direction == "out":
            what = devices.out(stop.port, stop.value)
            if what.startswith("PIT period") and self.config.timers != "single-hypervisor":
                vm.next_tick = self.now + devices.pit.period
        else:
            vcpu = vm.guest.vcpu
            value = devices.in_(stop.port)
            vcpu.set_reg("rax", vcpu.reg("rax") & ~0xFF | value)
            register = devices.uart.register(stop.port, "in")
            what = (f"COM1 {register} -> {value:#04x}" if register
                    else f"IN from port {stop.port:#x} -> {value:#04x}")
        self._skip(vm, stop)
        return what

    def handle_io_instruction(self, vm: VM, stop: Stop) -> str:
        q = IOQualification.decode(self.vmx.vmread(VMCSField.EXIT_QUALIFICATION))
        assert (q.port, q.direction) == (stop.port, stop.direction)
        return self._device_io(vm, stop)

    def handle_cpuid(self, vm: VM, stop: Stop) -> str:
        vcpu = vm.guest.vcpu
        leaf = vcpu.reg("rax") & 0xFFFFFFFF
        words = [int.from_bytes(SIGNATURE[i:i + 4], "little") for i in (0, 4, 8)]
        answers = {0: (0xD, *(int.from_bytes(b"GenuineIntel"[i:i + 4], "little") for i in (0, 8, 4))),
                   1: (0x000906EA, 0, 1 << 31, 0),  # ECX bit 31: running under a hypervisor
                   0x40000000: (0x40000001, *words)}
        regs = answers.get(leaf, (0, 0, 0, 0))
        for name, value in zip(("rax", "rbx", "rcx", "rdx"), regs):
            vcpu.set_reg(name, value)
        self._skip(vm, stop)
        return f"leaf {leaf:#x} emulated" + (f": {SIGNATURE.decode()!r}" if leaf == 0x40000000 else "")

    def handle_hlt(self, vm: VM, stop: Stop) -> str:
        self._skip(vm, stop)
        if not vm.guest.interrupts_enabled:
            vm.state = "halted"
            return "hlt with IF = 0: the VM is powered off"
        vm.state = "waiting"
        return "the guest is idle: the CPU goes to another VM"

    def handle_ept_violation(self, vm: VM, stop: Stop) -> str:
        if vm.back_page is None:
            raise AssertionError("an EPT violation in a VM without an EPT")
        gpa = self.vmx.vmread(VMCSField.GUEST_PHYSICAL_ADDRESS)
        vm.back_page(gpa)  # the VMM allocates guest memory on first touch
        return f"gpa {gpa:#x}: not backed yet; the VMM maps a frame and the access is retried"

    def handle_cr_access(self, vm: VM, stop: Stop) -> str:
        q = CRAccessQualification.decode(self.vmx.vmread(VMCSField.EXIT_QUALIFICATION))
        vcpu = vm.guest.vcpu
        value = vcpu.reg(GPR_ENCODING[q.register])
        vcpu.set_reg(f"cr{q.cr}", value)
        self._skip(vm, stop)
        return f"MOV to CR{q.cr} <- {value:#x}: the guest switches address space"

    def handle_msr_read(self, vm: VM, stop: Stop) -> str:
        vcpu = vm.guest.vcpu
        msr = vcpu.reg("rcx") & 0xFFFFFFFF
        value = vm.msrs.get(msr, EMULATED_MSRS.get(msr))
        if value is None:  # as KVM does for an MSR it does not emulate
            self.vmx.vmwrite(VMCSField.VM_ENTRY_INTR_INFO_FIELD, InterruptionInfo(
                int(Vector.GP), InterruptionType.HARDWARE_EXCEPTION, deliver_error_code=True).encode())
            return f"RDMSR {msr:#x}: not emulated, inject #GP"
        vcpu.set_reg("rax", value & 0xFFFFFFFF)
        vcpu.set_reg("rdx", value >> 32)
        self._skip(vm, stop)
        return f"RDMSR {msr:#x} = {value:#x}"

    def handle_msr_write(self, vm: VM, stop: Stop) -> str:
        vcpu = vm.guest.vcpu
        msr = vcpu.reg("rcx") & 0xFFFFFFFF
        vm.msrs[msr] = (vcpu.reg("rdx") & 0xFFFFFFFF) << 32 | vcpu.reg("rax") & 0xFFFFFFFF
        self._skip(vm, stop)
        return f"WRMSR {msr:#x} <- {vm.msrs[msr]:#x}"

    def handle_rdtsc(self, vm: VM, stop: Stop) -> str:
        tsc = self.now + self.vmx.vmread(VMCSField.TSC_OFFSET)
        vm.guest.answer_rdtsc(stop, tsc)
        return f"TSC = {tsc}"

    def handle_vmcall(self, vm: VM, stop: Stop) -> str:
        vcpu = vm.guest.vcpu
        number = vcpu.reg("rax")
        vcpu.set_reg("rax", 0)
        self._skip(vm, stop)
        return f"hypercall {number}"

    def _inject_ud(self, vm: VM, stop: Stop) -> str:
        # no nested virtualization: like KVM without nested=1, answer #UD
        info = InterruptionInfo(int(Vector.UD), InterruptionType.HARDWARE_EXCEPTION)
        self.vmx.vmwrite(VMCSField.VM_ENTRY_INTR_INFO_FIELD, info.encode())
        return f"{stop.mnemonic} in a guest: inject #UD (no nested VMX)"

    handle_vmclear = handle_vmlaunch = handle_vmptrld = handle_vmptrst = _inject_ud
    handle_vmread = handle_vmresume = handle_vmwrite = handle_vmoff = handle_vmon = _inject_ud
    handle_invept = handle_invvpid = _inject_ud

    def handle_preemption_timer(self, vm: VM, stop: Stop | None) -> str:
        return "quantum over: next VM"

    def handle_external_interrupt(self, vm: VM, stop: Stop | None) -> str:
        self._timer_ticks()
        if self.config.timers == "single-hypervisor":
            return "the hypervisor's timer: next VM"
        return "the guest's timer is due: inject vector 32"

    def handle_pending_interrupt(self, vm: VM, stop: Stop | None) -> str:
        vm.window = False
        return "interrupt window open"

    def handle_triple_fault(self, vm: VM, stop: Stop | None) -> str:
        vm.state = "triple fault"
        return "the guest shut down: only this VM stops"

    # -- results ----------------------------------------------------------------------

    def spans(self) -> list[Span]:
        """Who held the CPU: hypervisor, or a VM's kernel or program, over time."""
        return self.timeline.spans(self.now)

    def exit_counts(self) -> dict[str, dict[str, int]]:
        return {vm.name: {r.name: n for r, n in sorted(vm.exits.items())} for vm in self.vms}
