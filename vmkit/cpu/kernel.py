"""A tiny guest operating system in real x86-64 assembly, and its boot image.

The guest kernel runs at ring 0 and its programs at ring 3. Its tables live in
guest memory in the real formats (GDT, 64-bit IDT gates, 64-bit TSS; see
``x86.py``). It programs the PIT (channel 0, mode 2) and, on every timer
interrupt (vector 32), saves the running program's registers in its process
table and resumes the next one, round robin: that is how the guest OS takes
the CPU back from its programs. ``int 0x80`` is its system call gate (DPL 3;
an interrupt gate, so the kernel is never interrupted),
with Linux's numbers: write 1, sched_yield 24, getpid 39, exit 60, and 35 as
sleep (Linux's nanosleep, but counted in timer ticks). With nothing runnable
but a sleeper, the kernel idles with ``sti; hlt``: the CPU is free until the
next timer interrupt (under a hypervisor, HLT yields it to another VM). A fault in
a program (#DE, #UD, #GP, #PF) kills it, as a signal would.

Guest-physical memory map (identity, no paging: that is chapter 2)::

    0x01000  GDT                0x05000  process table (0x100 per process)
    0x02000  IDT (256 gates)    0x09000  top of the kernel stack (TSS.RSP0)
    0x03000  TSS                0x10000  kernel code, then its variables
                                0x20000  program i at 0x20000 + i*0x10000,
                                         its stack just below the next one

Deliberately simple: one kernel stack (the kernel is not preemptible:
interrupt gates clear IF), no memory protection between programs.
Taught in course/01_cpu/01_modes_privileges.ipynb.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vmkit.core import VmkitError, expect_int
from vmkit.cpu.asm import assemble
from vmkit.cpu.x86 import (
    TSS_IOMAP_BASE, TSS_RSP0, TSS_SELECTOR, TSS_SIZE, USER_CS, USER_DS,
    Gate, Vector, segment_descriptor, tss_descriptor,
)

GDT, IDT, TSS = 0x1000, 0x2000, 0x3000
PROCS, PCB_SIZE = 0x5000, 0x100
KERNEL_STACK = 0x9000
KERNEL_BASE = 0x10000
PROGRAM_BASE, PROGRAM_SPAN = 0x20000, 0x10000

# Process control block: state, pid, 15 saved registers, the iretq frame.
PCB_STATE, PCB_PID, PCB_RAX, PCB_RIP, PCB_STATUS, PCB_WAKE, PCB_CR3 = 0x00, 0x08, 0x10, 0x88, 0xB0, 0xB8, 0xC0
PAGE_TABLE_OFFSET = 0x8000  # where a program's page tables would start in its region (chapter 2)
IA32_APIC_BASE, IA32_KERNEL_GS_BASE = 0x1B, 0xC0000102
SAVED = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
FRAME = ("rip", "cs", "rflags", "rsp", "ss")
RUNNABLE, DEAD, KILLED, SLEEPING = 1, 2, 3, 4

COM1, PIT_CH0, PIT_CMD, PIC_CMD = 0x3F8, 0x40, 0x43, 0x20

MSG_IDLE = "kernel: all done, halt\\n"  # as assembler text: \\n is one byte
MSG_PANIC = "kernel panic: double fault\\n"

FAULTS = {Vector.DE: "#DE", Vector.UD: "#UD", Vector.GP: "#GP", Vector.PF: "#PF", Vector.SS: "#SS", Vector.NP: "#NP"}


@dataclass(frozen=True)
class Program:
    """A user program: ring-3 assembly placed at its own base address."""

    name: str
    source: str

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise VmkitError(f"a program's name is a non-empty str, not {self.name!r}")
        if not isinstance(self.source, str):
            raise VmkitError(f"program {self.name!r}: its source is assembly text (a str), not {self.source!r}")


CONSOLE_DRIVERS = ("plain", "16550")
# the 16550 set-up a PC kernel does at boot (Linux's 8250 driver, OSDev's "Serial Ports"):
# (register offset, value): interrupts off, DLAB on, divisor 1 (115200 baud), 8N1 with DLAB
# off, FIFOs on and cleared with a 14-byte trigger, DTR + RTS + OUT2
UART_INIT = ((1, 0x00), (3, 0x80), (0, 0x01), (1, 0x00), (3, 0x03), (2, 0xC7), (4, 0x0B))
MAX_PROGRAMS = 99
MAX_MEMORY = 64 << 20  # a guest of at most 64 MiB: plenty for the course, bounded for the host


@dataclass(frozen=True)
class GuestKernel:
    """What to boot: the timer period (PIT reload, in instructions) and the programs.

    ``bug="broken_idt"`` makes the kernel load an IDT of limit 0 after boot,
    so its first interrupt ends in a triple fault.
    """

    programs: tuple[Program, ...]
    timer_period: int = 20_000
    bug: str | None = None
    memory_size: int = 0x100000
    paging: bool = False  # each process in its own address space (chapter 2)
    console: str = "plain"  # "16550": set the UART up at boot, poll LSR.THRE before each byte

    def __post_init__(self):
        if isinstance(self.programs, list):
            object.__setattr__(self, "programs", tuple(self.programs))
        if not isinstance(self.programs, tuple) or not all(isinstance(p, Program) for p in self.programs):
            raise VmkitError("programs is a tuple of Program, e.g. (programs.hello(),); "
                             f"got {self.programs!r}")
        expect_int(self.timer_period, "timer_period (a 16-bit PIT reload value)", minimum=1, maximum=0xFFFF)
        expect_int(self.memory_size, "memory_size", minimum=0x40000, maximum=MAX_MEMORY)
        if self.memory_size % 0x1000:
            raise VmkitError(f"memory_size must be a multiple of 4096, not {self.memory_size:#x}")
        if not self.programs:
            raise VmkitError("a guest kernel needs at least one program")
        if len(self.programs) > MAX_PROGRAMS:
            raise VmkitError(f"at most {MAX_PROGRAMS} programs (pids print with two digits), not {len(self.programs)}")
        if PROGRAM_BASE + len(self.programs) * PROGRAM_SPAN > self.memory_size:
            raise VmkitError(f"{len(self.programs)} programs do not fit in {self.memory_size:#x} bytes")
        if not isinstance(self.paging, bool):
            raise VmkitError(f"paging is True or False, not {self.paging!r}")
        if self.paging and _tables_base(len(self.programs)) + TABLE_SET * (len(self.programs) + 1) > min(
                self.memory_size, 1 << 21):
            raise VmkitError(f"{len(self.programs)} programs and their page tables do not fit in "
                             "the first 2 MiB of memory; use fewer programs")
        if self.console not in CONSOLE_DRIVERS:
            raise VmkitError(f"console must be one of {CONSOLE_DRIVERS}, not {self.console!r}")
        if self.bug not in (None, "broken_idt"):
            raise VmkitError(f"unknown bug {self.bug!r}; known: 'broken_idt'")


def _pcb(reg: str = "rax") -> str:
    # Kernel variables are addressed through labels (RIP-relative): keystone
    # 0.9.2 mis-encodes some absolute [disp32] operands as RIP-relative ones.
    return f"    mov {reg}, qword ptr [current]\n    shl {reg}, 8\n    add {reg}, {PROCS:#x}\n"


def _save(error_code: bool) -> str:
    """Save the interrupted program's registers and iretq frame into its PCB."""
    lines = ["    push rax", _pcb().rstrip()]
    lines += [f"    mov qword ptr [rax+{PCB_RAX + 8 * i:#x}], {r}" for i, r in enumerate(SAVED) if r != "rax"]
    lines += ["    pop rbx", f"    mov qword ptr [rax+{PCB_RAX:#x}], rbx"]
    if error_code:
        lines += ["    pop rbx", "    mov qword ptr [error_code], rbx"]
    for i, _ in enumerate(FRAME):
        lines += ["    pop rbx", f"    mov qword ptr [rax+{PCB_RIP + 8 * i:#x}], rbx"]
    return "\n".join(lines) + "\n"


def kernel_source(kernel: GuestKernel) -> str:
    """The guest kernel's assembly source."""
    restore = "\n".join(f"    mov {r}, qword ptr [rax+{PCB_RAX + 8 * i:#x}]"
                        for i, r in enumerate(SAVED) if r != "rax")
    frame = "\n".join(f"    push qword ptr [rax+{PCB_RIP + 8 * i:#x}]" for i in reversed(range(len(FRAME))))
    bug = "    lidt [bad_idtr]      ; the bug: an IDT of limit 0\n" if kernel.bug == "broken_idt" else ""
    poll = uart_init = ""
    if kernel.console == "16550":
        poll = f"""    mov dx, {COM1 + 5:#x}         ; LSR
kputs_wait:
    in al, dx
    test al, 0x20               ; THRE: the transmitter takes a byte
    jz kputs_wait
    mov dx, {COM1:#x}             ; THR
"""
        uart_init = "".join(f"    mov dx, {COM1 + r:#x}\n    mov al, {v:#04x}\n    out dx, al\n"
                            for r, v in UART_INIT)
    faults = []
    for vector, name in FAULTS.items():
        faults.append(f"""
fault_{int(vector)}:
{_save(vector in (Vector.GP, Vector.PF, Vector.SS, Vector.NP))}    lea rsi, [msg_{int(vector)}]
    mov rcx, {len(f"kernel: {name} in pid ")}
    mov rdx, {int(vector)}
    jmp kill_current""")
    messages = "\n".join(f'msg_{int(v)}: .ascii "kernel: {n} in pid "' for v, n in FAULTS.items())
    return f"""
kernel_entry:                   ; ring 0, on the kernel stack
    lidt [idtr_desc]             ; load the IDT the loader filled
    mov ax, {TSS_SELECTOR:#x}
    ltr ax                      ; and the TSS (RSP0 for ring 3 -> 0)
{uart_init}    mov ecx, {IA32_APIC_BASE:#x}
    jmp read_apic_base          ; privileged instructions a hypervisor may trap each
read_apic_base:                 ; start their own translation block (see guest.py)
    rdmsr                       ; where is the local APIC? as Linux asks at boot
    jmp apic_base_read
apic_base_read:
    mov dword ptr [apic_base], eax
    mov ecx, {IA32_KERNEL_GS_BASE:#x}
    lea rax, [current]          ; per-CPU data for swapgs, as Linux sets it
    xor edx, edx
    jmp write_gs_base
write_gs_base:
    wrmsr
    mov al, 0x34                ; PIT channel 0, lobyte/hibyte, mode 2
    out {PIT_CMD:#x}, al
    mov rax, qword ptr [period]
    out {PIT_CH0:#x}, al              ; reload value, low byte
    mov al, ah
    out {PIT_CH0:#x}, al              ; then high byte
{bug}    mov rax, qword ptr [nprocs]
    dec rax
    mov qword ptr [current], rax
    jmp schedule

timer_handler:                  ; vector 32, interrupt gate
    test qword ptr [rsp+8], 3   ; interrupted CS: ring 0 means the idle loop
    jnz timer_from_user
    add rsp, 40                 ; nothing to save: drop the frame
    jmp timer_tick
timer_from_user:
{_save(False)}timer_tick:
    inc qword ptr [ticks]
    mov al, 0x20
    out {PIC_CMD:#x}, al              ; end of interrupt to the 8259 PIC
    mov rcx, qword ptr [nprocs]      ; wake the sleepers whose time has come
    mov rbx, {PROCS:#x}
wake_next:
    cmp qword ptr [rbx], {SLEEPING}
    jne wake_skip
    mov rax, qword ptr [rbx+{PCB_WAKE:#x}]
    cmp rax, qword ptr [ticks]
    ja wake_skip
    mov qword ptr [rbx], {RUNNABLE}
wake_skip:
    add rbx, {PCB_SIZE:#x}
    dec rcx
    jnz wake_next
    jmp schedule

schedule:                       ; round robin over runnable programs
    mov rcx, qword ptr [nprocs]
    mov rax, qword ptr [current]
sched_next:
    inc rax
    cmp rax, qword ptr [nprocs]
    jb sched_check
    xor eax, eax
sched_check:
    mov rbx, rax
    shl rbx, 8
    add rbx, {PROCS:#x}
    cmp qword ptr [rbx], {RUNNABLE}
    je sched_found
    dec rcx
    jnz sched_next
    jmp idle
sched_found:
    cmp rax, qword ptr [current]
    mov qword ptr [current], rax
    je resume_user
    shl rax, 8                  ; another process: switch to its address space
    add rax, {PROCS:#x}
    mov rbx, qword ptr [rax+{PCB_CR3:#x}]
    jmp load_cr3
load_cr3:
    mov cr3, rbx                ; paging is off in this chapter: CR3 is only a value
resume_user:                    ; rebuild the iretq frame from the PCB
{_pcb()}{frame}
{restore}
    mov rax, qword ptr [rax+{PCB_RAX:#x}]
    jmp iret_to_user            ; ends the translation block: iretq starts its own, which
iret_to_user:                   ; the emulator watches at no cost (see guest.py)
    iretq

idle:                           ; nothing runnable: wait if someone sleeps, else power off
    mov rcx, qword ptr [nprocs]
    mov rbx, {PROCS:#x}
idle_scan:
    cmp qword ptr [rbx], {SLEEPING}
    je idle_wait
    add rbx, {PCB_SIZE:#x}
    dec rcx
    jnz idle_scan
    lea rsi, [msg_idle]
    mov rcx, {len(MSG_IDLE) - 1}
    call kputs
power_off:
    cli
    hlt
    jmp power_off
idle_wait:                      ; halt until the next interrupt: the CPU is free
    sti
    hlt
    jmp idle_wait

syscall_handler:                ; int 0x80, interrupt gate of DPL 3
{_save(False)}    mov rbx, qword ptr [rax+{PCB_RAX:#x}]
    cmp rbx, 1
    je sys_write
    cmp rbx, 24
    je sys_yield
    cmp rbx, 35
    je sys_sleep
    cmp rbx, 39
    je sys_getpid
    cmp rbx, 60
    je sys_exit
    mov qword ptr [rax+{PCB_RAX:#x}], -38   ; -ENOSYS
    jmp resume_user
sys_write:                      ; write(rdi=buffer, rsi=length)
    mov rsi, qword ptr [rax+{PCB_RAX + 8 * SAVED.index('rdi'):#x}]
    mov rcx, qword ptr [rax+{PCB_RAX + 8 * SAVED.index('rsi'):#x}]
    mov qword ptr [rax+{PCB_RAX:#x}], rcx
    call kputs
    jmp resume_user
sys_yield:
    mov qword ptr [rax+{PCB_RAX:#x}], 0
    jmp schedule
sys_sleep:                      ; sleep(rdi=ticks): Linux's 35 is nanosleep, with a timespec
    mov rbx, qword ptr [rax+{PCB_RAX + 8 * SAVED.index('rdi'):#x}]
    add rbx, qword ptr [ticks]
    mov qword ptr [rax+{PCB_WAKE:#x}], rbx
    mov qword ptr [rax+{PCB_RAX:#x}], 0
    mov qword ptr [rax], {SLEEPING}
    jmp schedule
sys_getpid:
    mov rbx, qword ptr [rax+{PCB_PID:#x}]
    mov qword ptr [rax+{PCB_RAX:#x}], rbx
    jmp resume_user
sys_exit:                       ; exit(rdi=status)
    mov rbx, qword ptr [rax+{PCB_RAX + 8 * SAVED.index('rdi'):#x}]
    mov qword ptr [rax+{PCB_STATUS:#x}], rbx
    mov qword ptr [rax], {DEAD}
    jmp schedule
{''.join(faults)}

kill_current:                   ; print "kernel: #XX in pid N, killed"
{_pcb()}    mov qword ptr [rax], {KILLED}
    mov qword ptr [rax+{PCB_STATUS:#x}], rdx    ; the vector, as a signal number would be
    call kputs
{_pcb()}    mov rax, qword ptr [rax+{PCB_PID:#x}]
    xor edx, edx
    mov ecx, 10
    div rcx                     ; rax = tens, rdx = units (pids stay below 100)
    lea rsi, [digits]
    add dl, 0x30
    mov byte ptr [rsi+1], dl
    mov rcx, 11                 ; two digits, then ", killed" and a newline
    test rax, rax
    jz one_digit
    add al, 0x30
    mov byte ptr [rsi], al
    jmp print_pid
one_digit:
    inc rsi
    dec rcx
print_pid:
    call kputs
    jmp schedule

double_fault:                   ; vector 8: the kernel cannot go on
    lea rsi, [msg_panic]
    mov rcx, {len(MSG_PANIC) - 1}
    call kputs
    cli
    hlt
    jmp double_fault

kputs:                          ; rsi = bytes, rcx = length, to COM1
    mov dx, {COM1:#x}
    test rcx, rcx
    jz kputs_done
kputs_loop:
{poll}    mov al, byte ptr [rsi]
    out dx, al
    inc rsi
    dec rcx
    jnz kputs_loop
kputs_done:
    ret

digits: .ascii "00, killed\\n"
msg_idle: .ascii "{MSG_IDLE}"
msg_panic: .ascii "{MSG_PANIC}"
{messages}
.align 16
current: .quad 0                ; index of the running process
nprocs: .quad 0
ticks: .quad 0
period: .quad 0                 ; PIT reload value
error_code: .quad 0
apic_base: .quad 0
idtr_desc: .word 0              ; lidt operand: limit, then base
    .quad 0
bad_idtr: .word 0
    .quad 0
"""


_SYMBOLS = ("current", "nprocs", "ticks", "period", "idtr_desc", "bad_idtr", "kernel_entry", "timer_handler", "syscall_handler", "iret_to_user", "load_cr3", "read_apic_base", "write_gs_base", "double_fault",
            "idle", "schedule") + tuple(f"fault_{int(v)}" for v in FAULTS)


@dataclass(frozen=True)
class BootImage:
    """A guest kernel assembled and laid out, ready to copy into guest memory."""

    kernel: GuestKernel
    regions: tuple[tuple[int, bytes], ...]
    symbols: dict[str, int] = field(hash=False)
    gdt: bytes
    entry: int
    stack: int
    cr3: int = 0  # with paging: the boot page tables (the kernel alone)

    def program_base(self, index: int) -> int:
        return PROGRAM_BASE + index * PROGRAM_SPAN


def build(kernel: GuestKernel) -> BootImage:
    """Assemble the kernel and its programs and lay out every table, as a boot loader would."""
    source = kernel_source(kernel)
    table = "\n.align 8\nsymtab: .quad " + ", ".join(_SYMBOLS)
    code = assemble(source + table, KERNEL_BASE)
    addresses = struct.unpack(f"<{len(_SYMBOLS)}Q", code[-8 * len(_SYMBOLS):])
    symbols = dict(zip(_SYMBOLS, addresses))

    gdt = struct.pack("<5Q", 0, segment_descriptor(code=True, dpl=0), segment_descriptor(code=False, dpl=0),
                      segment_descriptor(code=False, dpl=3), segment_descriptor(code=True, dpl=3))
    gdt += tss_descriptor(TSS)
    gates = {int(Vector.TIMER): Gate(symbols["timer_handler"]),
             int(Vector.SYSCALL): Gate(symbols["syscall_handler"], dpl=3),
             int(Vector.DF): Gate(symbols["double_fault"])}
    gates.update({int(v): Gate(symbols[f"fault_{int(v)}"]) for v in FAULTS})
    idt = bytearray(256 * 16)
    for vector, gate in gates.items():
        idt[vector * 16:vector * 16 + 16] = gate.encode()
    tss = bytearray(TSS_SIZE)
    struct.pack_into("<Q", tss, TSS_RSP0, KERNEL_STACK)
    # I/O map base past the TSS limit: no I/O permission bitmap, so IN/OUT at
    # CPL 3 > IOPL 0 raise #GP (SDM Vol. 1 §19.5.2), as Linux sets it up
    struct.pack_into("<H", tss, TSS_IOMAP_BASE, TSS_SIZE)
    # the loader fills the kernel's variables, as a linker's initialised data
    code = bytearray(code)
    for name, value in (("nprocs", struct.pack("<Q", len(kernel.programs))),
                        ("period", struct.pack("<Q", kernel.timer_period)),
                        ("idtr_desc", struct.pack("<HQ", len(idt) - 1, IDT)),
                        ("bad_idtr", struct.pack("<HQ", 0, IDT))):
        offset = symbols[name] - KERNEL_BASE
        code[offset:offset + len(value)] = value
    regions = [(IDT, bytes(idt)), (TSS, bytes(tss)), (KERNEL_BASE, bytes(code))]
    pcbs = bytearray(PCB_SIZE * len(kernel.programs))
    for i, program in enumerate(kernel.programs):
        base = PROGRAM_BASE + i * PROGRAM_SPAN
        try:
            regions.append((base, assemble(program.source, base)))
        except VmkitError as exc:
            raise type(exc)(exc.line, exc.text, f"in program {program.name!r}: {exc.reason}") from None
        pcb = dict.fromkeys(SAVED, 0) | {"rip": base, "cs": USER_CS, "rflags": 0x202,
                                         "rsp": base + PROGRAM_SPAN - 16, "ss": USER_DS}
        struct.pack_into("<QQ", pcbs, i * PCB_SIZE, RUNNABLE, i + 1)
        struct.pack_into("<Q", pcbs, i * PCB_SIZE + PCB_CR3, base + PAGE_TABLE_OFFSET)
        struct.pack_into(f"<{len(SAVED) + len(FRAME)}Q", pcbs, i * PCB_SIZE + PCB_RAX,
                         *(pcb[r] for r in SAVED + FRAME))
    cr3 = 0
    if kernel.paging:
        tables, cr3 = _page_tables(len(kernel.programs))
        regions.append((_tables_base(len(kernel.programs)), tables))
        for i in range(len(kernel.programs)):  # each process's CR3: its own PML4
            struct.pack_into("<Q", pcbs, i * PCB_SIZE + PCB_CR3,
                             _tables_base(len(kernel.programs)) + TABLE_SET * (i + 1))
    regions.append((PROCS, bytes(pcbs)))
    return BootImage(kernel, tuple(regions), symbols, gdt, symbols["kernel_entry"], KERNEL_STACK, cr3)


# With paging, one set of four tables (PML4, PDPT, PD, PT) for the kernel at boot,
# then one per process, above the programs. Everything lives in the first 2 MiB,
# so one PT maps it all; a process sees the kernel's 128 KiB (supervisor) and its
# own region (user), nothing else: another program's memory is a #PF.
TABLE_SET = 4 * 0x1000
KERNEL_REGION = PROGRAM_BASE  # 0 .. 0x20000: tables, kernel, its stack


def _tables_base(programs: int) -> int:
    return PROGRAM_BASE + programs * PROGRAM_SPAN


def _page_tables(programs: int) -> tuple[bytes, int]:
    """The boot set and one set per process, as bytes placed at _tables_base; and the boot CR3."""
    P, RW, US = 1, 2, 4
    base = _tables_base(programs)
    data = bytearray(TABLE_SET * (programs + 1))
    for s in range(programs + 1):
        pml4 = base + s * TABLE_SET
        pdpt, pd, pt = pml4 + 0x1000, pml4 + 0x2000, pml4 + 0x3000
        o = s * TABLE_SET
        struct.pack_into("<Q", data, o, pdpt | P | RW | US)
        struct.pack_into("<Q", data, o + 0x1000, pd | P | RW | US)
        struct.pack_into("<Q", data, o + 0x2000, pt | P | RW | US)
        for page in range(0, KERNEL_REGION, 0x1000):
            struct.pack_into("<Q", data, o + 0x3000 + (page >> 12) * 8, page | P | RW)
        if s:  # the process's own region, user-accessible
            region = PROGRAM_BASE + (s - 1) * PROGRAM_SPAN
            for page in range(region, region + PROGRAM_SPAN, 0x1000):
                struct.pack_into("<Q", data, o + 0x3000 + (page >> 12) * 8, page | P | RW | US)
    return bytes(data), base
