"""Physical memory as frames, the store every page table and EPT lives in.

A machine's (or a VM's) physical memory: ``size`` bytes cut into 4 KiB frames,
read and written in little-endian 64-bit words as the page walker does, with a
deterministic frame allocator for building tables. A read beyond the installed
memory returns all ones, as a bus read of non-existent memory does on a PC
(a master abort); a write there is dropped. Addresses wider than ``MAXPHYADDR``
bits are a caller mistake.
Taught in course/02_memory/.
"""

from __future__ import annotations

import struct

from vmkit.core import VmkitError, expect_int

FRAME = 4096           # bytes in a frame: the unit of physical memory
MAXPHYADDR = 52        # physical-address width, as CPUID.80000008H:EAX[7:0] would report
_ONES = (1 << 64) - 1

PA = int   # a physical address (gpa or hpa, depending on whose memory this is)
PFN = int  # a physical frame number: pa >> 12


class PhysicalMemory:
    """``size`` bytes of physical memory in 4 KiB frames, with a bump-and-free-list allocator."""

    def __init__(self, size: int = 1 << 24, *, name: str = "memory"):
        expect_int(size, "size", minimum=FRAME, maximum=1 << 32)
        if size % FRAME:
            raise VmkitError(f"size must be a multiple of {FRAME}, not {size:#x}")
        self.name = name
        self.size = size
        self._bytes = bytearray(size)
        self._next = 0          # next never-used frame
        self._free: list[PFN] = []
        self.reads = 0          # 64-bit reads, for counting memory references
        self.writes = 0

    @property
    def frames(self) -> int:
        return self.size // FRAME

    def _check(self, pa: PA, length: int) -> bool:
        expect_int(pa, "physical address")
        if pa + length > 1 << MAXPHYADDR:
            raise VmkitError(f"{pa:#x} is wider than MAXPHYADDR ({MAXPHYADDR} bits)")
        return pa + length <= self.size

    def read_u64(self, pa: PA) -> int:
        """Read a little-endian 64-bit word; beyond installed memory reads all ones."""
        self.reads += 1
        if not self._check(pa, 8):
            return _ONES
        return struct.unpack_from("<Q", self._bytes, pa)[0]

    def write_u64(self, pa: PA, value: int) -> None:
        """Write a little-endian 64-bit word; beyond installed memory the write is lost."""
        self.writes += 1
        expect_int(value, "value", maximum=_ONES)
        if self._check(pa, 8):
            struct.pack_into("<Q", self._bytes, pa, value)

    def read(self, pa: PA, length: int) -> bytes:
        expect_int(length, "length")
        if not self._check(pa, length):
            raise VmkitError(f"{pa:#x}+{length} is beyond {self.name} ({self.size:#x} bytes)")
        return bytes(self._bytes[pa:pa + length])

    def write(self, pa: PA, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray)):
            raise VmkitError(f"write() takes bytes, not {type(data).__name__}")
        if not self._check(pa, len(data)):
            raise VmkitError(f"{pa:#x}+{len(data)} is beyond {self.name} ({self.size:#x} bytes)")
        self._bytes[pa:pa + len(data)] = data

    def alloc_frame(self) -> PFN:
        """A zeroed frame: the lowest freed one, else the next never used (deterministic)."""
        if self._free:
            pfn = min(self._free)
            self._free.remove(pfn)
        elif self._next < self.frames:
            pfn = self._next
            self._next += 1
        else:
            raise VmkitError(f"{self.name} is full: all {self.frames} frames are in use")
        self._bytes[pfn * FRAME:(pfn + 1) * FRAME] = bytes(FRAME)
        return pfn

    def free_frame(self, pfn: PFN) -> None:
        expect_int(pfn, "pfn")
        if pfn >= self._next or pfn in self._free:
            raise VmkitError(f"frame {pfn} is not allocated")
        self._free.append(pfn)

    @property
    def frames_in_use(self) -> int:
        return self._next - len(self._free)
