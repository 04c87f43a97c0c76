"""A booted guest kernel on its own VCPU: what a machine or a VM runs.

The parts here are what the *hardware* does for any guest, virtualized or
not: boot from a :class:`BootImage`, deliver exceptions and ``int n`` through
the guest's IDT, turn an access outside memory into a #PF (CR2 and the x86
error code), and note when the kernel's ``iretq`` hands the CPU to a program.
Taught in course/01_cpu/01_modes_privileges.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmkit.cpu.kernel import (
    GDT, PCB_PID, PCB_SIZE, PCB_STATE, PCB_STATUS, PROCS, RUNNABLE, DEAD, KILLED, SLEEPING,
    BootImage, GuestKernel, build,
)
from vmkit.cpu.devices import Devices
from vmkit.cpu.vcpu import VCPU, Delivery, Stop, StopKind
from vmkit.cpu.x86 import RFLAGS, Vector

# x86 page-fault error code (SDM 4.7): P, W/R, U/S, RSVD, I/D
PF_P, PF_W, PF_U, PF_I = 1 << 0, 1 << 1, 1 << 2, 1 << 4


@dataclass(frozen=True)
class Process:
    """One entry of the guest kernel's process table."""

    pid: int
    name: str
    state: str
    status: int | None


class Guest:
    """A guest kernel booted on a fresh VCPU, with its devices."""

    def __init__(self, kernel: GuestKernel):
        self.kernel = kernel
        self.image: BootImage = build(kernel)
        self.vcpu = VCPU(kernel.memory_size, gdt=GDT, gdt_bytes=self.image.gdt)
        for address, data in self.image.regions:
            self.vcpu.write(address, data)
        self.vcpu.set_reg("rsp", self.image.stack)
        self.vcpu.set_reg("rip", self.image.entry)
        if kernel.paging:
            self.vcpu.set_reg("cr3", self.image.cr3)  # the boot page tables: the kernel alone
            # CR4.PAE and CR0.PG on, as a 64-bit kernel runs: unicorn then flushes its TLB
            # when the kernel loads another process's CR3
            self.vcpu.set_reg("cr4", self.vcpu.reg("cr4") | 1 << 5)
            self.vcpu.set_reg("cr0", self.vcpu.reg("cr0") | 1 << 31)
        self.devices = Devices()
        self.user_entries: list[tuple[int, int]] = []  # (instructions into the slice, pid)
        from unicorn import UC_HOOK_BLOCK

        # A block hook on the kernel's iretq: a code hook, even on one address,
        # would slow every instruction by a third; a block hook is checked when
        # code is translated, and the kernel makes iretq start its own block.
        iret = self.image.symbols["iret_to_user"]
        self.vcpu.uc.hook_add(UC_HOOK_BLOCK, self._on_iret, None, iret, iret)
        # the kernel's privileged instructions a hypervisor may trap (rbx is GPR 3)
        symbols = self.image.symbols
        self.vcpu.watch(symbols["load_cr3"], StopKind.CR_ACCESS, "mov cr3", register=3)
        self.vcpu.watch(symbols["read_apic_base"], StopKind.MSR, "rdmsr", direction="in")
        self.vcpu.watch(symbols["write_gs_base"], StopKind.MSR, "wrmsr", direction="out")

    def _on_iret(self, uc, address, size, _data):
        # called before the block runs: the count covers what ran before iretq
        self.user_entries.append((self.vcpu._count() + 1, self.current_pid()))

    def entries_within(self, stop: Stop) -> list[tuple[int, int]]:
        """The kernel -> program hand-overs of the slice that ended with ``stop``.

        A slice can end on the iretq itself, before it runs: that one does not count
        (the block hook fires again when the slice resumes there).
        """
        return [(offset, pid) for offset, pid in self.user_entries if offset <= stop.retired]

    def current_pid(self) -> int:
        index = self.vcpu.read_u64(self.image.symbols["current"])
        return self.vcpu.read_u64(PROCS + index * PCB_SIZE + PCB_PID)

    def holder(self) -> str:
        return "kernel" if self.vcpu.cpl == 0 else f"pid {self.current_pid()}"

    @property
    def interrupts_enabled(self) -> bool:
        return bool(self.vcpu.reg("rflags") & RFLAGS.IF)

    def processes(self) -> list[Process]:
        """The guest kernel's process table, read from guest memory."""
        result = []
        for i in range(self.vcpu.read_u64(self.image.symbols["nprocs"])):
            base = PROCS + i * PCB_SIZE
            state = self.vcpu.read_u64(base + PCB_STATE)
            status = self.vcpu.read_u64(base + PCB_STATUS) if state in (DEAD, KILLED) else None
            result.append(Process(self.vcpu.read_u64(base + PCB_PID), self.kernel.programs[i].name,
                                  {RUNNABLE: "runnable", DEAD: "exited", KILLED: "killed", SLEEPING: "sleeping"}.get(state, "?"), status))
        return result

    def deliver_stop(self, stop: Stop) -> Delivery:
        """Deliver the exception or software interrupt a stop stands for, in the guest."""
        vcpu = self.vcpu
        if stop.kind is StopKind.INTERRUPT and stop.software:
            vcpu.set_reg("rip", stop.rip + stop.length)
            return vcpu.deliver(stop.vector, software=True)
        if stop.kind is StopKind.MEMORY:
            vcpu.set_reg("cr2", stop.address)
            code = (PF_W if stop.access == "write" else 0) | (PF_U if stop.cpl == 3 else 0)
            code |= PF_I if stop.access == "fetch" else 0
            return vcpu.deliver(int(Vector.PF), error_code=code)
        if stop.kind is StopKind.INVALID:
            return vcpu.deliver(int(Vector.UD))
        assert stop.kind is StopKind.INTERRUPT, stop
        if stop.error_code is not None and stop.vector == Vector.PF:  # a walk's own #PF
            vcpu.set_reg("cr2", stop.address)
            return vcpu.deliver(stop.vector, error_code=stop.error_code)
        return vcpu.deliver(stop.vector)

    def answer_rdtsc(self, stop: Stop, tsc: int) -> None:
        """Emulate RDTSC: EDX:EAX = the time-stamp counter, then move past it."""
        self.vcpu.set_reg("rax", tsc & 0xFFFFFFFF)
        self.vcpu.set_reg("rdx", tsc >> 32 & 0xFFFFFFFF)
        self.skip(stop)

    def skip(self, stop: Stop) -> None:
        """Move RIP past the instruction that stopped (it has been emulated)."""
        self.vcpu.set_reg("rip", stop.rip + stop.length)

    def console(self) -> str:
        return self.devices.text


def describe_delivery(d: Delivery) -> str:
    names = {int(v): v.name for v in Vector}
    chain = " -> ".join(f"#{names[v]}" if v < 32 and v in names else f"vector {v:#x}" for v in d.chain)
    if d.triple_fault:
        return f"{chain} -> triple fault"
    return f"{chain}: ring {d.from_cpl} -> ring {d.to_cpl}, handler {d.handler:#x}"
