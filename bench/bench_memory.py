"""Chapter 2 benchmarks: the price of translating every access with vmkit's walkers.

(a) Translations per second: the MMU with TLB hits, with cold native walks
and with cold 2D walks (the walkers in Python).
(b) A real program touching memory page by page: raw unicorn on flat memory,
against the same program with vmkit as its MMU (native and nested), in one run.

Wall-clock time is read here, and only here.
"""

from __future__ import annotations

import time
from functools import partial

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn.x86_const import UC_X86_REG_RSP

from bench import best_of
from vmkit.cpu.asm import assemble
from vmkit.memory.mmu import MMU
from vmkit.memory.nested import nested_setup, walk_2d
from vmkit.memory.paged import CODE, DATA, PagedProgram
from vmkit.memory.paging import AddressSpace, walk
from vmkit.memory.physical import PhysicalMemory

PAGES, LOOPS = 64, 200


def translations() -> None:
    print("(a) translations per second (vmkit's MMU, best of 3)")
    mem = PhysicalMemory(1 << 24)
    space = AddressSpace(mem)
    host, ept, guest, gspace = nested_setup()
    for i in range(PAGES):
        space.map(DATA + i * 4096, mem.alloc_frame() * 4096)
        gspace.map(DATA + i * 4096, guest.alloc_frame() * 4096)
    addresses = [DATA + i * 4096 for i in range(PAGES)]
    rows = [
        ("TLB hits (one page, again and again)", lambda: MMU(lambda g, a: walk(mem, space.cr3, g, a)).run([DATA] * 2000), 2000),
        ("cold native walks (4 references)", lambda: [walk(mem, space.cr3, g) for g in addresses * 10], PAGES * 10),
        ("cold 2D walks (24 references)", lambda: [walk_2d(guest, gspace.cr3, g) for g in addresses * 2], PAGES * 2),
    ]
    base = None
    for name, run, count in rows:
        rate = count / best_of(lambda run=run: run)[0]
        base = base or rate
        print(f"  {name:<40} {rate:>12,.0f} /s   {rate / base:>8.4f}")


def _program() -> str:
    return f"""
    mov r8, {LOOPS}
again:
    mov rcx, {PAGES}
    mov rbx, {DATA:#x}
touch:
    add qword ptr [rbx], rcx
    add rbx, 4096
    dec rcx
    jnz touch
    dec r8
    jnz again
    nop
"""


def program() -> None:
    print(f"\n(b) a program touching {PAGES} pages {LOOPS} times: unicorn flat memory vs vmkit as the MMU")
    code = assemble(_program(), CODE)

    def raw():
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map(CODE, 0x10000)
        uc.mem_map(DATA, PAGES * 4096)
        uc.mem_map(0x7FFF_EFFF_0000, 0x10000)
        uc.reg_write(UC_X86_REG_RSP, 0x7FFF_EFFF_F000)
        uc.mem_write(CODE, code)
        uc.emu_start(CODE, CODE + len(code) - 1)

    baseline, _ = best_of(lambda: raw)
    print(f"  {'raw unicorn, flat memory':<40} {baseline * 1e3:>9.2f} ms   1")
    for nested in (False, True):
        # tables are built outside the timing, as raw unicorn's mapping is
        seconds, _ = best_of(lambda nested=nested: partial(
            PagedProgram(_program(), nested=nested, data_pages=PAGES).run, 10_000_000))
        name = "vmkit MMU, nested (2D walks)" if nested else "vmkit MMU, native walks"
        print(f"  {name:<40} {seconds * 1e3:>9.2f} ms   {baseline / seconds:.4f} of raw speed")


def main() -> None:
    start = time.perf_counter()
    translations()
    program()
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
