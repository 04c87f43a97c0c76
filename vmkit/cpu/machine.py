"""Bare metal: one CPU, its memory and devices, running a guest kernel natively.

No hypervisor here: the kernel owns the only timer (the PIT) and every device.
This is the "système non virtualisé" of the slides, the reference against
which the hypervisor is compared. Taught in course/01_cpu/01_modes_privileges.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmkit.core import VmkitError, expect_int
from vmkit.cpu.guest import Guest, describe_delivery
from vmkit.cpu.kernel import GuestKernel
from vmkit.cpu.trace import Event, Span, Timeline
from vmkit.cpu.vcpu import Stop, StopKind
from vmkit.cpu.x86 import Vector

BARE_METAL_VENDOR = b"GenuineIntel"


@dataclass(frozen=True)
class Step:
    """One instruction of an instruction-by-instruction run."""

    time: int
    rip: int
    cpl: int
    instruction: str
    event: str


class Machine:
    """A physical machine running ``kernel`` with nothing underneath it."""

    def __init__(self, kernel: GuestKernel, *, seed: int = 0):
        if not isinstance(kernel, GuestKernel):
            raise VmkitError(f"Machine(kernel) needs a GuestKernel, not {kernel!r}")
        self.seed = seed  # the machine is deterministic; kept for the common interface
        self.guest = Guest(kernel)
        self.now = 0
        self.state = "running"
        self.events: list[Event] = []
        self.timeline = Timeline()
        self._next_tick: int | None = None
        self._pending_irq = False
        self._waiting = False   # after HLT with IF = 1
        self._horizon = 0

    @property
    def vcpu(self):
        return self.guest.vcpu

    @property
    def console(self) -> str:
        return self.guest.console()

    def _event(self, kind: str, text: str) -> None:
        self.events.append(Event(self.now, kind, text))

    def run(self, instructions: int = 100_000) -> Machine:
        """Run for ``instructions`` more instructions, or until the machine stops.

        ``run(a)`` then ``run(b)`` is exactly ``run(a + b)``.
        """
        expect_int(instructions, "instructions")
        self._horizon += instructions
        while self.now < self._horizon and self.state == "running":
            self._slice(self._horizon)
        return self

    def step(self, count: int = 1) -> list[Step]:
        """Execute ``count`` steps, recording each: one instruction, or one fault.

        A faulting instruction retires nothing, so its step takes no time: a
        debugger's view. ``run(n)`` counts retired instructions instead.
        """
        expect_int(count, "count")
        steps = []
        for _ in range(count):
            if self.state != "running":
                break
            rip, cpl = self.vcpu.rip, self.vcpu.cpl
            insn = self.vcpu.disassemble_at(rip, 1)
            before = len(self.events)
            self._horizon = self.now + 1  # one instruction (or one fault) per step
            self._slice(self._horizon)
            text = "; ".join(e.text for e in self.events[before:])
            steps.append(Step(self.now, rip, cpl, insn[0].text if insn else "?", text))
        return steps

    def _slice(self, until: int) -> None:
        if self._waiting:  # halted with IF = 1: the CPU sleeps until the next interrupt
            target = until if self._next_tick is None else min(until, self._next_tick)
            self.timeline.mark(self.now, "idle")
            self.now = max(self.now, target)
            self._tick()
            return
        budget = until - self.now
        if self._next_tick is not None:
            budget = min(budget, max(self._next_tick - self.now, 1))
        if self._pending_irq:
            budget = 1  # step until the kernel sets IF: delivery on that very boundary
        start = self.now
        self.timeline.mark(start, self.guest.holder())
        self.guest.user_entries.clear()
        stop = self.vcpu.run(budget)
        for offset, pid in self.guest.entries_within(stop):
            self.timeline.mark(start + offset, f"pid {pid}")
        self.now += stop.retired
        self._handle(stop)
        self._tick()

    def _tick(self) -> None:
        """The PIT raises IRQ 0 when due; the CPU takes it when IF = 1."""
        if self._next_tick is not None and self.now >= self._next_tick:
            self._pending_irq = True
            self._next_tick = self.guest.devices.pit.next_after(self._next_tick, self.now)
        if self._pending_irq and self.state == "running" and self.guest.interrupts_enabled:
            self._pending_irq = False
            self._waiting = False
            self._deliver(self.vcpu.deliver(int(Vector.TIMER), external=True), "timer interrupt")

    def _deliver(self, delivery, what: str) -> None:
        if delivery.triple_fault:
            self.state = "triple fault"
            self._event("triple fault", f"{what}: {describe_delivery(delivery)}; the CPU shuts down")
        else:
            self._event("interrupt", f"{what}: {describe_delivery(delivery)}")

    def _handle(self, stop: Stop) -> None:
        guest, vcpu = self.guest, self.vcpu
        kind = stop.kind
        if kind is StopKind.BUDGET:
            return
        if kind in (StopKind.IO, StopKind.CPUID, StopKind.RDTSC):
            self.now += 1  # the device answered: the instruction retires
        if kind is StopKind.RDTSC:
            guest.answer_rdtsc(stop, self.now)  # the TSC counts simulated time
            return
        if kind is StopKind.IO:
            if stop.direction == "out":
                what = guest.devices.out(stop.port, stop.value)
                if what.startswith("PIT period"):
                    self._next_tick = self.now + guest.devices.pit.period
                    self._event("io", what)
            else:
                vcpu.set_reg("rax", vcpu.reg("rax") & ~0xFF | guest.devices.in_(stop.port))
            guest.skip(stop)
        elif kind is StopKind.CPUID:
            leaf = vcpu.reg("rax") & 0xFFFFFFFF
            regs = (0, 0, 0, 0)
            if leaf == 0:
                b, d, c = (int.from_bytes(BARE_METAL_VENDOR[i:i + 4], "little") for i in (0, 4, 8))
                regs = (0xD, b, c, d)
            for name, value in zip(("rax", "rbx", "rcx", "rdx"), regs):
                vcpu.set_reg(name, value)
            guest.skip(stop)
            self._event("cpuid", f"leaf {leaf:#x} answered by the CPU itself")
        elif kind is StopKind.HLT:
            if not guest.interrupts_enabled:
                self.state = "halted"
                self._event("halt", "hlt with interrupts disabled: the machine is off")
            else:
                guest.skip(stop)
                self._waiting = True  # until the next interrupt
        else:
            label = None
            if kind is StopKind.MEMORY:
                label = f"{stop.access} of {stop.address:#x}, outside memory"
            elif kind is StopKind.INVALID:
                label = f"invalid opcode ({stop.mnemonic})"
            elif kind is StopKind.INTERRUPT and stop.software:
                label = f"int {stop.vector:#x} (system call)" if stop.vector == 0x80 else f"int {stop.vector:#x}"
            elif label is None:
                label = f"exception {Vector(stop.vector).name if stop.vector in set(Vector) else stop.vector}"
            where = f" at {stop.rip:#x}, ring {stop.cpl}"
            self._deliver(guest.deliver_stop(stop), label + where)

    def spans(self) -> list[Span]:
        """Who held the CPU, from the start until now."""
        return self.timeline.spans(self.now)
