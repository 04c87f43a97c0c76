"""x86-64 architectural formats: segment descriptors, IDT gates, the TSS, vectors.

Source: Intel SDM Vol. 3A, ch. 3 (segment descriptors), 6 (interrupts and
exceptions: vectors, 64-bit IDT gates, Table 6-5 double-fault conditions),
7 (the 64-bit TSS). These are the bytes a guest kernel keeps in its memory.
Taught in course/01_cpu/01_modes_privileges.ipynb.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from vmkit.core import VmkitError

GPA = int  # a guest-physical address


class Vector(IntEnum):
    """Exception and interrupt vectors (SDM Vol. 3A, Table 6-1)."""

    DE = 0    # divide error
    DB = 1    # debug
    NMI = 2
    BP = 3    # breakpoint (int3)
    OF = 4
    BR = 5
    UD = 6    # invalid opcode
    NM = 7
    DF = 8    # double fault
    TS = 10   # invalid TSS
    NP = 11   # segment not present
    SS = 12   # stack-segment fault
    GP = 13   # general protection
    PF = 14   # page fault
    MF = 16
    AC = 17
    MC = 18
    XM = 19
    TIMER = 32    # IRQ 0 as the guest kernel remaps its PIC (our convention)
    SYSCALL = 0x80  # the int 0x80 system-call gate, as in 32-bit Linux


#: Vectors whose delivery pushes an error code (SDM 6.13).
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17})

#: SDM Table 6-4: contributory exceptions; a second one while delivering
#: a first makes a double fault.
CONTRIBUTORY = frozenset({0, 10, 11, 12, 13})


class RFLAGS(IntFlag):
    CF = 1 << 0
    ZF = 1 << 6
    TF = 1 << 8
    IF = 1 << 9
    IOPL = 3 << 12
    NT = 1 << 14
    RF = 1 << 16
    VM = 1 << 17


RFLAGS_FIXED = 0x2  # bit 1 always reads 1

# Selectors of the GDT every vmkit guest kernel uses (Linux's order for
# syscall/sysret: kernel code, kernel data, user data, user code, TSS).
KERNEL_CS = 0x08
KERNEL_DS = 0x10
USER_DS = 0x18 | 3
USER_CS = 0x20 | 3
TSS_SELECTOR = 0x28


def segment_descriptor(*, code: bool, dpl: int) -> int:
    """A flat 64-bit code or data segment descriptor (SDM 3.4.5).

    63     56 55 54 53 52 51  48 47 46 45 44 43  40 39     16 15      0
    +--------+--+--+--+--+------+--+-----+--+------+---------+---------+
    |base    |G |DB|L |AV|limit |P | DPL |S | type | base    | limit   |
    +--------+--+--+--+--+------+--+-----+--+------+---------+---------+
    """
    if dpl not in range(4):
        raise VmkitError(f"DPL must be 0..3, not {dpl}")
    access = 0x80 | dpl << 5 | 0x10 | (0xA if code else 0x2)  # P, DPL, S, type
    flags = 0x8 | (0x2 if code else 0x0)  # G, and L for 64-bit code
    limit = 0xFFFFF
    return (limit & 0xFFFF) | (limit >> 16) << 48 | access << 40 | flags << 52


def tss_descriptor(base: GPA, limit: int = 0x67) -> bytes:
    """The 16-byte 64-bit TSS descriptor (SDM 7.2.3), type 9 = available TSS."""
    low = (limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | 0x89 << 40 | (base >> 24 & 0xFF) << 56
    return struct.pack("<QQ", low, base >> 32)


class GateType(IntEnum):
    INTERRUPT = 0xE  # clears IF on entry
    TRAP = 0xF       # leaves IF alone


@dataclass(frozen=True)
class Gate:
    """A 64-bit IDT gate descriptor (SDM 6.14.1, Figure 6-8)."""

    offset: int
    selector: int = KERNEL_CS
    type: GateType = GateType.INTERRUPT
    dpl: int = 0
    present: bool = True
    ist: int = 0

    def encode(self) -> bytes:
        """127..96 reserved | 95..64 offset 63:32 | 63..48 offset 31:16 |
        47 P | 46..45 DPL | 43..40 type | 34..32 IST | 31..16 selector | 15..0 offset 15:0"""
        attrs = (0x80 if self.present else 0) | self.dpl << 5 | self.type
        low = (
            (self.offset & 0xFFFF)
            | self.selector << 16
            | self.ist << 32
            | attrs << 40
            | (self.offset >> 16 & 0xFFFF) << 48
        )
        return struct.pack("<QQ", low, self.offset >> 32 & 0xFFFFFFFF)

    @classmethod
    def decode(cls, raw: bytes) -> Gate:
        low, high = struct.unpack("<QQ", raw)
        attrs = low >> 40 & 0xFF
        return cls(
            offset=(low & 0xFFFF) | (low >> 48 & 0xFFFF) << 16 | (high & 0xFFFFFFFF) << 32,
            selector=low >> 16 & 0xFFFF,
            type=GateType(attrs & 0xF) if attrs & 0xF in (0xE, 0xF) else attrs & 0xF,
            dpl=attrs >> 5 & 3,
            present=bool(attrs & 0x80),
            ist=low >> 32 & 7,
        )


# 64-bit TSS layout (SDM Figure 7-11): RSP0 at offset 4, RSP1 at 12, RSP2 at 20.
TSS_SIZE = 0x68
TSS_RSP0 = 4
TSS_IOMAP_BASE = 0x66  # 16-bit offset of the I/O permission bitmap
