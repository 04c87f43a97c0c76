"""Ring-3 programs for the guest kernel, in real x86-64 assembly.

Each function returns a :class:`Program`; system calls go through ``int 0x80``
with Linux's numbers (rax = 1 write, 24 sched_yield, 39 getpid, 60 exit; 35 sleeps
for a number of timer ticks).
Taught in course/01_cpu/01_modes_privileges.ipynb and 03_timers_multiplexing.ipynb.
"""

from __future__ import annotations

from vmkit.core import VmkitError, expect_int
from vmkit.cpu.kernel import Program

_EXIT = "    mov rax, 60\n    xor edi, edi\n    int 0x80\n"


def _write(label: str, length: int) -> str:
    return f"    mov rax, 1\n    lea rdi, [{label}]\n    mov rsi, {length}\n    int 0x80\n"


def _text(label: str, text: str) -> tuple[str, int]:
    """A ``.byte`` line holding ``text`` in UTF-8, and its length in bytes."""
    if not isinstance(text, str):
        raise VmkitError(f"the text to print is a str, not {text!r}")
    data = text.encode("utf-8")
    if not data:
        return f"{label}:\n", 0
    return f"{label}: .byte {', '.join(str(b) for b in data)}\n", len(data)


def _letter(letter) -> str:
    if not isinstance(letter, str) or len(letter) != 1 or not letter.isprintable():
        raise VmkitError(f"letter must be one printable character, not {letter!r}")
    return letter


def worker(name: str, letter: str, *, work: int = 300, rounds: int = 6) -> Program:
    """Compute for ``work`` loop turns, print ``letter``, ``rounds`` times; then exit."""
    data, size = _text("letter", _letter(letter))
    expect_int(work, "work (loop turns)", minimum=1)
    expect_int(rounds, "rounds", minimum=1)
    return Program(name, f"""
    mov r12, {rounds}
round:
    mov rcx, {work}
compute:
    add rbx, rcx                ; some work: 3 instructions per turn
    dec rcx
    jnz compute
{_write('letter', size)}    dec r12
    jnz round
{_EXIT}{data}""")


def sleeper(name: str, letter: str, *, ticks: int = 2, rounds: int = 4) -> Program:
    """Print ``letter``, then sleep ``ticks`` timer ticks, ``rounds`` times; then exit."""
    data, size = _text("letter", _letter(letter))
    expect_int(ticks, "ticks", minimum=1)
    expect_int(rounds, "rounds", minimum=1)
    return Program(name, f"""
    mov r12, {rounds}
round:
{_write('letter', size)}    mov rax, 35
    mov rdi, {ticks}
    int 0x80
    dec r12
    jnz round
{_EXIT}{data}""")


def spinner(name: str = "spin") -> Program:
    """An infinite loop that never makes a system call."""
    return Program(name, "forever:\n    inc rax\n    jmp forever\n")


def hello(name: str = "hello", text: str = "Bonjour depuis l'anneau 3 !") -> Program:
    """Print one line with write(2) and exit."""
    if not isinstance(text, str):
        raise VmkitError(f"the text to print is a str, not {text!r}")
    data, size = _text("text", text + "\n")
    return Program(name, _write("text", size) + _EXIT + data)


PRIVILEGED = {
    "hlt": "hlt",
    "cli": "cli",
    "out": "mov al, 0x41\n    out 0x80, al",
    "mov cr3": "xor eax, eax\n    mov cr3, rax",
    "lidt": "lidt [rsp]",
    "wrmsr": "xor eax, eax\n    xor edx, edx\n    mov ecx, 0xC0000080\n    wrmsr",
}


def privileged(instruction: str, name: str | None = None) -> Program:
    """Announce, then execute a privileged instruction at ring 3 (it raises #GP)."""
    if instruction not in PRIVILEGED:
        raise VmkitError(f"unknown privileged instruction {instruction!r}; known: {', '.join(PRIVILEGED)}")
    data, size = _text("text", f"try: {instruction}...\n")
    return Program(name or instruction, _write("text", size) + f"""
    {PRIVILEGED[instruction]}
{_EXIT}{data}""")


def getpid(name: str = "getpid") -> Program:
    """Ask the kernel for its pid and print it in decimal (``pid = N``), then exit."""
    return Program(name, """
    mov rax, 39
    int 0x80
    xor edx, edx
    mov ecx, 10
    div rcx                     ; rax = tens, rdx = units
    add dl, 0x30
    mov byte ptr [digits+1], dl
    lea rdi, [text]
    mov rsi, 9
    test rax, rax
    jz units_only
    add al, 0x30
    mov byte ptr [digits], al
    jmp print
units_only:
    mov byte ptr [digits], dl   ; shift the units left over the tens
    mov byte ptr [digits+1], 0x0a
    dec rsi
print:
    mov rax, 1
    int 0x80
""" + _EXIT + 'text: .ascii "pid = "\ndigits: .ascii "??\\n"\n')


def wild_pointer(address: int = 0x4000_0000, name: str = "wild") -> Program:
    """Read memory at an address the machine does not have."""
    expect_int(address, "address", maximum=(1 << 64) - 1)
    return Program(name, f"    mov rax, {address:#x}\n    mov rbx, qword ptr [rax]\n{_EXIT}")


def cpuid_probe(name: str = "cpuid") -> Program:
    """Ask CPUID whether a hypervisor is present, and if so its 12-byte signature.

    Software checks CPUID.1:ECX bit 31 ("hypervisor present") before it reads
    the hypervisor leaf 0x40000000, as Linux's ``detect_hypervisor_vendor`` does.
    """
    return Program(name, f"""
    mov eax, 1
    cpuid
    bt ecx, 31
    jnc bare
    mov eax, 0x40000000
    cpuid
    mov dword ptr [sig], ebx
    mov dword ptr [sig+4], ecx
    mov dword ptr [sig+8], edx
{_write('text', 25)}{_EXIT}bare:
{_write('none', 14)}{_EXIT}text: .ascii "hypervisor: "
sig: .ascii "............\\n"
none: .ascii "no hypervisor\\n"
""")


def vmx_probe(mnemonic: str = "vmxon", name: str | None = None) -> Program:
    """Execute one VMX instruction (exits in a VM, #UD on bare metal)."""
    operands = {"vmxon": " [rsp]", "vmclear": " [rsp]", "vmptrld": " [rsp]", "vmptrst": " [rsp]",
                "vmread": " rax, rbx", "vmwrite": " rax, rbx"}
    if mnemonic not in operands and mnemonic not in ("vmlaunch", "vmresume", "vmxoff", "vmcall"):
        raise VmkitError(f"unknown VMX instruction {mnemonic!r}")
    return Program(name or mnemonic, f"    {mnemonic}{operands.get(mnemonic, '')}\n{_EXIT}")
