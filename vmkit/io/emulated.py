"""Intercepting I/O at the instruction: the console as a fully emulated device.

The chapter-1 hypervisor traps every IN and OUT of its guest (unconditional I/O
exiting): each is a VM exit 30 whose qualification (SDM Vol. 3C, Table 27-5)
names the port, the size and the direction; the hypervisor then performs the
access on its 16550 model (``vmkit.cpu.devices.UART16550``). A guest kernel
with ``console="16550"`` drives the UART as a PC kernel does: seven OUTs to set
it up at boot, then for each byte an IN of LSR until THRE, and an OUT to THR.
``console="plain"`` writes THR blindly. ``console_run`` measures what each costs
per KiB sent. Taught in course/03_io/ (chapter 3, item 2).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from vmkit.core import VmkitError, expect_int
from vmkit.cpu.hypervisor import Hypervisor, HypervisorConfig
from vmkit.cpu.kernel import GuestKernel
from vmkit.cpu.programs import hello
from vmkit.cpu.vmcs import IOQualification
from vmkit.cpu.vmx import ExitReason

MAX_PAYLOAD = 16 << 10   # the program's text must fit its 64 KiB slot with its code


@dataclass(frozen=True)
class IOExit:
    """One exit 30, its qualification decoded, and the UART register it reached."""

    time: int
    qualification: int
    port: int
    direction: str
    size: int
    string: bool
    rep: bool
    immediate: bool
    register: str | None   # None: a port that is not the UART's (the PIT, the PIC)
    text: str


@dataclass(frozen=True)
class ConsoleRun:
    """What sending bytes through the emulated console cost."""

    console: str
    sent: int                    # bytes the UART transmitted (the program's and the kernel's)
    exits: tuple[IOExit, ...]    # every exit 30 of the run, in order
    exit_cost: int               # instructions per exit round trip (HypervisorConfig)

    @property
    def uart_exits(self) -> int:
        return sum(1 for e in self.exits if e.register is not None)

    @property
    def exits_per_kib(self) -> float:
        """UART exits per 1,024 bytes transmitted."""
        if not self.sent:
            raise VmkitError("nothing was transmitted: no exits per KiB to compute")
        return self.uart_exits * 1024 / self.sent

    def by_register(self) -> dict[str, int]:
        """UART exits counted by register and direction, e.g. {'OUT THR': 1047, 'IN LSR': 1047}."""
        return dict(Counter(f"{e.direction.upper()} {e.register}" for e in self.exits
                            if e.register is not None))


def decode_io_exits(hv: Hypervisor, vm: str) -> tuple[IOExit, ...]:
    """The exits 30 of ``vm``, each qualification decoded as the hypervisor's handler does.

    The register an access reached depends on LCR.DLAB at that moment, so it comes from the
    UART's own log; the log matches the exits one to one only when every access exits.
    """
    if hv.config.io_exiting != "unconditional":
        raise VmkitError("register names need every UART access to exit: "
                         "use HypervisorConfig(io_exiting='unconditional')")
    uart = hv.vm(vm).guest.devices.uart
    registers = iter(uart.accesses)
    rows = []
    for e in hv.exits:
        if e.vm != vm or e.reason is not ExitReason.IO_INSTRUCTION:
            continue
        q = IOQualification.decode(e.qualification)
        register = next(registers) if uart.register(q.port, q.direction) is not None else None
        rows.append(IOExit(e.time, e.qualification, q.port, q.direction, q.size, q.string, q.rep,
                           q.immediate, register, e.text))
    return tuple(rows)


def console_run(nbytes: int = 1024, console: str = "16550", *, exit_cost: int = 1_000,
                seed: int = 0) -> ConsoleRun:
    """Run a VM whose one program writes ``nbytes`` (newline included) to the console."""
    expect_int(nbytes, "nbytes", minimum=1, maximum=MAX_PAYLOAD)
    expect_int(seed, "seed")
    hv = Hypervisor(HypervisorConfig(exit_cost=exit_cost), seed=seed)
    vm = hv.create_vm("vm", GuestKernel((hello(text="x" * (nbytes - 1)),), console=console))
    hv.run(20 * nbytes * (exit_cost + 100) + 1_000_000)
    if vm.state != "halted":
        raise VmkitError(
            f"the guest did not finish: with exit_cost={exit_cost}, the exits of each timer tick "
            f"(every {vm.guest.kernel.timer_period} instructions) leave it almost no time to "
            f"run; use a smaller exit_cost")
    return ConsoleRun(console, len(vm.guest.devices.uart.sent), decode_io_exits(hv, "vm"),
                      exit_cost)
