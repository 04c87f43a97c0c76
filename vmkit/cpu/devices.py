"""The PC devices the guest kernel drives through port I/O.

COM1, a 16550 UART at ports 0x3F8-0x3FF (its eight registers, the divisor
latch behind LCR.DLAB; it transmits each byte at once, as QEMU's emulated
serial port does, so the line status always says THR empty), the 8254 PIT's channel 0
(0x40, command port 0x43) and the 8259 PIC's command port (0x20, EOI). On bare
metal they are the machine's; under the hypervisor the same models are the
*virtual* devices its I/O exits emulate. Deliberately simple: the PIT counts
one tick per guest instruction (a real one counts at 1.193182 MHz).
Taught in course/01_cpu/03_timers_multiplexing.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmkit.core import VmkitError, expect_int

COM1_THR = 0x3F8
PIT_CHANNEL0, PIT_COMMAND = 0x40, 0x43
PIC_COMMAND, PIC_EOI = 0x20, 0x20
UART_CLOCK_DIVIDEND = 115_200   # 1.8432 MHz / 16: baud = 115200 / divisor
LSR_THRE, LSR_TEMT = 0x20, 0x40
LCR_DLAB = 0x80
FCR_ENABLE = 0x01
# register names by offset from the base, for reads and writes, with DLAB clear / set
_UART_WRITE = ("THR", "IER", "FCR", "LCR", "MCR", "LSR", "MSR", "SCR")  # LSR, MSR: writes ignored
_UART_READ = ("RBR", "IER", "IIR", "LCR", "MCR", "LSR", "MSR", "SCR")


@dataclass
class UART16550:
    """A 16550A UART's registers (National Semiconductor PC16550D data sheet).

    Nothing is ever received (RBR reads 0, LSR.DR clear) and modem lines are
    idle (MSR 0). Writing THR transmits the byte at once.
    """

    base: int = COM1_THR
    ier: int = 0
    lcr: int = 0
    mcr: int = 0
    fcr: int = 0
    scr: int = 0
    divisor: int = 12         # 9600 baud, the PC BIOS's default
    sent: bytearray = field(default_factory=bytearray)
    accesses: list[str] = field(default_factory=list)   # register of each access, in order

    def register(self, port: int, direction: str) -> str | None:
        """The register an access at ``port`` reaches, or None outside the UART."""
        if direction not in ("in", "out"):
            raise VmkitError(f"direction is 'in' or 'out', not {direction!r}")
        offset = expect_int(port, "port", maximum=0xFFFF) - self.base
        if not 0 <= offset < 8:
            return None
        if self.lcr & LCR_DLAB and offset in (0, 1):
            return ("DLL", "DLM")[offset]
        return (_UART_WRITE if direction == "out" else _UART_READ)[offset]

    @property
    def baud(self) -> int | None:
        """115200 / divisor; None while the latch holds 0 (the data sheet leaves it undefined)."""
        return UART_CLOCK_DIVIDEND // self.divisor if self.divisor else None

    def _own(self, port: int, direction: str) -> str:
        name = self.register(port, direction)
        if name is None:
            raise VmkitError(f"port {port:#x} is not one of the UART's {self.base:#x}-{self.base + 7:#x}")
        self.accesses.append(name)
        return name

    def write(self, port: int, value: int) -> str:
        value = expect_int(value, "value", maximum=0xFFFF_FFFF) & 0xFF
        name = self._own(port, "out")
        if name == "THR":
            self.sent.append(value)
            return f"COM1 <- {chr(value)!r}"
        if name == "DLL":
            self.divisor = self.divisor & 0xFF00 | value
        elif name == "DLM":
            self.divisor = self.divisor & 0xFF | value << 8
        elif name in ("LCR", "SCR"):
            setattr(self, name.lower(), value)
        elif name in ("IER", "MCR"):
            setattr(self, name.lower(), value & (0x0F if name == "IER" else 0x1F))  # others read 0
        elif name == "FCR":
            # bits 1-2 clear the FIFOs and self-clear; the rest is kept only with FIFOs enabled
            self.fcr = value & 0xC9 if value & FCR_ENABLE else 0
        else:
            return f"COM1 {name} <- {value:#04x} (read-only register, ignored)"
        return f"COM1 {name} <- {value:#04x}"

    def read(self, port: int) -> int:
        name = self._own(port, "in")
        if name == "LSR":
            return LSR_THRE | LSR_TEMT
        if name == "IIR":
            return 0x01 | (0xC0 if self.fcr & FCR_ENABLE else 0)   # no interrupt pending
        if name == "DLL":
            return self.divisor & 0xFF
        if name == "DLM":
            return self.divisor >> 8
        if name in ("IER", "LCR", "MCR", "SCR"):
            return getattr(self, name.lower())
        return 0   # RBR with nothing received, MSR with idle lines


@dataclass
class PIT:
    """8254 channel 0 in mode 2 (rate generator), loaded low byte then high byte."""

    reload: int | None = None
    _low: int | None = None

    def write(self, port: int, value: int) -> bool:
        """Handle one OUT; return True when a new period took effect."""
        if port == PIT_COMMAND:
            self._low = None
            return False
        if self._low is None:
            self._low = value & 0xFF
            return False
        self.reload = (value & 0xFF) << 8 | self._low or 0x10000  # 0 means 65536
        self._low = None
        return True

    @property
    def period(self) -> int | None:
        return self.reload

    def next_after(self, tick: int, now: int) -> int:
        """The first tick after ``now``, given one due at ``tick`` (missed ticks coalesce into one IRQ)."""
        return tick + ((now - tick) // self.reload + 1) * self.reload


@dataclass
class Devices:
    """One machine's (or one VM's) serial console, timer and interrupt controller."""

    uart: UART16550 = field(default_factory=UART16550)
    pit: PIT = field(default_factory=PIT)
    eois: int = 0

    def out(self, port: int, value: int) -> str:
        """Perform an OUT; return what happened, in a few words."""
        if self.uart.register(port, "out") is not None:
            return self.uart.write(port, value)
        if port in (PIT_CHANNEL0, PIT_COMMAND):
            if self.pit.write(port, value):
                return f"PIT period = {self.pit.period} instructions"
            return f"PIT port {port:#x} <- {value & 0xFF:#04x}"
        if port == PIC_COMMAND and value & 0xFF == PIC_EOI:
            self.eois += 1
            return "PIC EOI"
        return f"port {port:#x} <- {value:#x} (no device)"

    def in_(self, port: int) -> int:
        """Perform an IN: the UART answers its ports; a port with no device reads 0xFF."""
        if self.uart.register(port, "in") is not None:
            return self.uart.read(port)
        return 0xFF

    @property
    def console(self) -> bytearray:
        return self.uart.sent

    @property
    def text(self) -> str:
        return self.console.decode("utf-8", "replace")
