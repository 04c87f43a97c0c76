"""A real guest program whose every access goes through its page tables and the EPT.

unicorn executes the program; vmkit is its MMU. In ``UC_TLB_VIRTUAL`` mode
unicorn asks a ``UC_HOOK_TLB_FILL`` hook for each page it has not translated
yet (its own TLB); the hook runs our walker (``paging.walk`` natively, or
``nested.walk_2d`` in a VM) and answers the host-physical page and its rights.
Guest-physical memory is backed lazily, as a hypervisor does: a page the EPT
does not map yet is an EPT violation (exit 48); the VMM allocates a host frame,
maps it, and the access is retried. The host memory is shared with unicorn
(``mem_map_ptr``), so A/D bits and the program's data are one and the same.

Deliberately simple: the program runs at ring 0 in 64-bit mode with no
interrupts; unicorn's own TLB plays the hardware TLB (its fills are our walks).
Source: Intel SDM Vol. 3A ch. 4, Vol. 3C ch. 28; unicorn 2.1's TLB hooks.
Taught in course/02_memory/02_two_dimensional_walk.ipynb.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

from vmkit.core import VmkitError, expect_int
from vmkit.memory.ept import EPTViolation
from vmkit.memory.nested import nested_setup, walk_2d
from vmkit.memory.paging import PTE, Access, AddressSpace, GeneralProtection, PageFault, walk
from vmkit.memory.physical import FRAME, PhysicalMemory

CODE, STACK_TOP, DATA = 0x40_0000, 0x7FFF_F000_0000, 0x1000_0000
_UC_READ, _UC_WRITE, _UC_FETCH = 16, 17, 18  # UC_MEM_READ, UC_MEM_WRITE, UC_MEM_FETCH


@dataclass(frozen=True)
class Fill:
    """One TLB fill: the page unicorn asked for and what our walk cost."""

    gva: int
    access: str
    references: int
    lazily_backed: bool


@dataclass
class PagedRun:
    fills: list[Fill] = field(default_factory=list)
    ept_violations: int = 0
    page_fault: PageFault | None = None       # the guest's #PF that stopped the program
    general_protection: GeneralProtection | None = None  # a non-canonical address
    stopped: str | None = None                # another exception (int3, ud2, ...), as unicorn said it

    @property
    def references(self) -> int:
        return sum(f.references for f in self.fills)


class PagedProgram:
    """``source`` assembled at 0x400000, with ``data_pages`` pages mapped at 0x10000000."""

    def __init__(self, source: str, *, nested: bool = True, data_pages: int = 16,
                 stack_pages: int = 4, host_size: int = 1 << 25):
        from vmkit.cpu.asm import assemble

        expect_int(data_pages, "data_pages", minimum=0, maximum=4096)
        expect_int(stack_pages, "stack_pages", minimum=1, maximum=256)
        code = assemble(source, CODE)
        if not code:
            raise VmkitError("the program is empty")
        self.nested = nested
        if nested:
            self.host, self.ept, self.guest, self.space = nested_setup(host_size=host_size, guest_size=1 << 26)
            memory = self.guest
        else:
            self.host = PhysicalMemory(host_size, name="memory")
            self.space = AddressSpace(self.host)
            memory = self.host
        self._memory = memory
        for offset in range(0, len(code), FRAME):  # code pages: allocated and filled now
            pa = memory.alloc_frame() * FRAME
            memory.write(pa, code[offset:offset + FRAME])
            self.space.map(CODE + offset, pa, writable=False)
        for i in range(stack_pages):
            self.space.map(STACK_TOP - (i + 1) * FRAME, memory.alloc_frame() * FRAME, executable=False)
        # data pages: mapped by the guest at guest-physical frames the VMM has not backed yet
        self._next_gpa = 1 << 25 if nested else None
        for i in range(data_pages):
            if nested:
                self.space.map(DATA + i * FRAME, self._next_gpa + i * FRAME, executable=False)
            else:
                self.space.map(DATA + i * FRAME, memory.alloc_frame() * FRAME, executable=False)
        self.end = CODE + len(code)
        self.run_record = PagedRun()
        self._uc = None

    def _engine(self):
        from unicorn import (UC_ARCH_X86, UC_HOOK_TLB_FILL, UC_MODE_64, UC_PROT_ALL, UC_TLB_VIRTUAL, Uc)
        from unicorn.x86_const import UC_X86_REG_RSP

        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        buffer = (ctypes.c_char * self.host.size).from_buffer(self.host._bytes)
        self._buffer = buffer  # keep the shared memory alive with the engine
        uc.mem_map_ptr(0, self.host.size, UC_PROT_ALL, ctypes.addressof(buffer))
        uc.hook_add(UC_HOOK_TLB_FILL, self._fill)
        uc.reg_write(UC_X86_REG_RSP, STACK_TOP - 16)
        return uc

    def _fill(self, uc, gva, access, entry, _data) -> bool:
        from unicorn import UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE

        kind = Access(write=access == _UC_WRITE, fetch=access == _UC_FETCH)
        name = {_UC_READ: "read", _UC_WRITE: "write", _UC_FETCH: "fetch"}.get(access, "read")
        backed = False
        while True:
            result = (walk_2d(self.guest, self.space.cr3, gva, kind) if self.nested
                      else walk(self.host, self.space.cr3, gva, kind))
            if isinstance(result.result, EPTViolation) and not backed:
                # the VMM backs the guest page on first touch, then the access is retried
                self.run_record.ept_violations += 1
                self.guest.back(result.result.gpa & ~(FRAME - 1), FRAME)
                backed = True
                self.run_record.fills.append(Fill(gva, name, result.memory_references, True))
                continue
            break
        self.run_record.fills.append(Fill(gva, name, result.memory_references, False))
        if not result.ok:
            if isinstance(result.result, PageFault):
                self.run_record.page_fault = result.result
            elif isinstance(result.result, GeneralProtection):
                self.run_record.general_protection = result.result
            return False
        translation = result.result.guest if self.nested else result.result
        hpa = result.result.hpa if self.nested else result.result.pa
        leaf = (result.steps[-2].guest if self.nested else result.references[-1]).entry
        # grant writing only once the leaf is dirty, so that the first write comes back
        # here and the walker sets D, as the processor does on a first write
        writable = translation.writable and bool(leaf & PTE.D or kind.write)
        entry.paddr = hpa & ~(FRAME - 1)
        entry.perms = (UC_PROT_READ | (UC_PROT_WRITE if writable else 0)
                       | (UC_PROT_EXEC if translation.executable else 0))
        return True

    def run(self, instructions: int = 1_000_000) -> PagedRun:
        """Run up to ``instructions`` instructions (or to the end of the code)."""
        from unicorn import UcError

        expect_int(instructions, "instructions", minimum=1)
        if self._uc is None:
            self._uc = self._engine()
            start = CODE
        else:
            from unicorn.x86_const import UC_X86_REG_RIP
            start = self._uc.reg_read(UC_X86_REG_RIP)
        try:
            self._uc.emu_start(start, self.end, count=instructions)
        except UcError as error:
            record = self.run_record
            if record.page_fault is None and record.general_protection is None:
                record.stopped = str(error)  # e.g. int3 or ud2: no kernel here to handle them
        return self.run_record

    def read_data(self, offset: int, length: int) -> bytes:
        """Read the program's data region through its own translation, page by page (no counting)."""
        expect_int(offset, "offset")
        expect_int(length, "length")
        data = bytearray()
        while len(data) < length:
            gva = DATA + offset + len(data)
            result = (walk_2d(self.guest, self.space.cr3, gva, Access(), set_accessed_dirty=False)
                      if self.nested else walk(self.host, self.space.cr3, gva, Access(),
                                               set_accessed_dirty=False))
            if not result.ok:
                raise VmkitError(f"data offset {gva - DATA:#x} is not reachable: {result.result}")
            hpa = result.result.hpa if self.nested else result.result.pa
            chunk = min(length - len(data), FRAME - gva % FRAME)
            data += self.host.read(hpa, chunk)
        return bytes(data)
