"""The PC devices the guest kernel drives through port I/O.

COM1's transmit register (0x3F8, 16550 UART), the 8254 PIT's channel 0
(0x40, command port 0x43) and the 8259 PIC's command port (0x20, EOI). On bare
metal they are the machine's; under the hypervisor the same models are the
*virtual* devices its I/O exits emulate. Deliberately simple: the PIT counts
one tick per guest instruction (a real one counts at 1.193182 MHz).
Taught in course/01_cpu/03_timers_multiplexing.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass, field

COM1_THR = 0x3F8
PIT_CHANNEL0, PIT_COMMAND = 0x40, 0x43
PIC_COMMAND, PIC_EOI = 0x20, 0x20


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

    console: bytearray = field(default_factory=bytearray)
    pit: PIT = field(default_factory=PIT)
    eois: int = 0

    def out(self, port: int, value: int) -> str:
        """Perform an OUT; return what happened, in a few words."""
        if port == COM1_THR:
            self.console.append(value & 0xFF)
            return f"COM1 <- {chr(value & 0xFF)!r}"
        if port in (PIT_CHANNEL0, PIT_COMMAND):
            if self.pit.write(port, value):
                return f"PIT period = {self.pit.period} instructions"
            return f"PIT port {port:#x} <- {value & 0xFF:#04x}"
        if port == PIC_COMMAND and value & 0xFF == PIC_EOI:
            self.eois += 1
            return "PIC EOI"
        return f"port {port:#x} <- {value:#x} (no device)"

    def in_(self, port: int) -> int:
        """Perform an IN: the line status register says 'ready', nothing else answers."""
        return 0x60 if port == COM1_THR + 5 else 0xFF

    @property
    def text(self) -> str:
        return self.console.decode("utf-8", "replace")
