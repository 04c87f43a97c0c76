"""vmkit.memory.physical: frames, words, the allocator."""

import pytest

from vmkit.core import VmkitError
from vmkit.memory.physical import FRAME, PhysicalMemory


def test_words_are_little_endian():
    """write_u64 stores the low byte first, as x86 does."""
    mem = PhysicalMemory(1 << 16)

    mem.write_u64(0x100, 0x1122334455667788)

    assert mem.read(0x100, 2) == b"\x88\x77" and mem.read_u64(0x100) == 0x1122334455667788


def test_reading_beyond_installed_memory_returns_all_ones():
    """A read of non-existent memory returns all ones (a master abort on a PC)."""
    mem = PhysicalMemory(1 << 16)

    assert mem.read_u64(1 << 20) == (1 << 64) - 1


def test_addresses_wider_than_maxphyaddr_are_refused():
    """A physical address beyond 52 bits is a caller mistake."""
    with pytest.raises(VmkitError, match="MAXPHYADDR"):
        PhysicalMemory(1 << 16).read_u64(1 << 52)


def test_allocator_is_deterministic_and_reuses_the_lowest_freed_frame():
    """Frames come in order; a freed frame is reused first, zeroed."""
    mem = PhysicalMemory(1 << 16)
    a, b, c = mem.alloc_frame(), mem.alloc_frame(), mem.alloc_frame()
    mem.write_u64(b * FRAME, 7)

    mem.free_frame(b)

    assert (a, b, c) == (0, 1, 2)
    assert mem.alloc_frame() == 1 and mem.read_u64(FRAME) == 0


def test_a_full_memory_says_so():
    """Allocating past the last frame is a clear error."""
    mem = PhysicalMemory(2 * FRAME)
    mem.alloc_frame(), mem.alloc_frame()

    with pytest.raises(VmkitError, match="full"):
        mem.alloc_frame()


def test_reads_and_writes_are_counted():
    """Every 64-bit access counts: the walker's references are measured, not typed in."""
    mem = PhysicalMemory(1 << 16)
    mem.write_u64(0, 1)
    mem.read_u64(0)

    assert (mem.reads, mem.writes) == (1, 1)
