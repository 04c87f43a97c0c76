"""Tests for vmkit.cpu.kernel and vmkit.cpu.programs: the guest kernel's boot image and its programs.

The x86 table formats the boot image is made of (vmkit.cpu.x86) are pinned here too.
"""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmkit.core import VmkitError
from vmkit.cpu import programs
from vmkit.cpu.asm import AssemblyError, assemble
from vmkit.cpu.guest import Guest
from vmkit.cpu.kernel import (
    IDT, PROGRAM_BASE, PROGRAM_SPAN, TSS, GuestKernel, Program, build,
)
from vmkit.cpu.x86 import (
    KERNEL_CS, TSS_RSP0, Gate, GateType, Vector, segment_descriptor, tss_descriptor,
)

# -- x86 formats --------------------------------------------------------------------


@given(
    offset=st.integers(0, 2**64 - 1),
    dpl=st.integers(0, 3),
    gate_type=st.sampled_from([GateType.INTERRUPT, GateType.TRAP]),
    present=st.booleans(),
    ist=st.integers(0, 7),
)
def test_gate_encode_decode_round_trip(offset, dpl, gate_type, present, ist):
    """Gate.decode(Gate.encode()) gives back the same 64-bit IDT gate."""
    gate = Gate(offset, KERNEL_CS, gate_type, dpl, present, ist)

    raw = gate.encode()

    assert len(raw) == 16
    assert Gate.decode(raw) == gate


def test_gate_encode_layout():
    """An interrupt gate of DPL 3 has attribute byte 0xEE and the offset split 15:0, 31:16, 63:32."""
    raw = Gate(0x1122_3344_5566_7788, dpl=3).encode()

    low, high = struct.unpack("<QQ", raw)
    assert low & 0xFFFF == 0x7788
    assert low >> 48 == 0x5566
    assert high == 0x1122_3344
    assert low >> 40 & 0xFF == 0xEE
    assert low >> 16 & 0xFFFF == KERNEL_CS


def test_ring3_code_segment_has_dpl3_and_long_mode():
    """A ring-3 code descriptor is present, DPL 3, a code segment, with L set and D/B clear."""
    desc = segment_descriptor(code=True, dpl=3)

    assert desc >> 47 & 1 == 1          # P
    assert desc >> 45 & 3 == 3          # DPL
    assert desc >> 43 & 1 == 1          # code
    assert desc >> 53 & 1 == 1          # L: 64-bit code
    assert desc >> 54 & 1 == 0          # D/B must be 0 when L is 1


def test_data_segment_has_no_long_mode_bit():
    """A data descriptor is not a code segment and has L clear."""
    desc = segment_descriptor(code=False, dpl=0)

    assert (desc >> 43 & 1, desc >> 53 & 1, desc >> 45 & 3) == (0, 0, 0)


def test_segment_descriptor_rejects_bad_dpl():
    """A DPL outside 0..3 is a caller error."""
    with pytest.raises(VmkitError, match="DPL"):
        segment_descriptor(code=True, dpl=4)


def test_tss_descriptor_is_16_bytes_of_type_9():
    """The 64-bit TSS descriptor is 16 bytes, present, type 9 (available TSS), with the full base."""
    base = 0x1234_5678_9ABC

    raw = tss_descriptor(base)

    low, high = struct.unpack("<QQ", raw)
    assert len(raw) == 16
    assert low >> 40 & 0xF == 9
    assert low >> 47 & 1 == 1
    assert (low >> 16 & 0xFFFFFF) | (low >> 56 & 0xFF) << 24 | high << 32 == base


# -- GuestKernel validation ----------------------------------------------------------


@pytest.mark.parametrize("period", [0, 70000])
def test_guest_kernel_rejects_bad_timer_period(period):
    """timer_period must fit the 16-bit PIT reload register (1..65535)."""
    with pytest.raises(VmkitError, match="timer_period"):
        GuestKernel((programs.hello(),), timer_period=period)


def test_guest_kernel_rejects_no_programs():
    """A guest kernel with no program is refused."""
    with pytest.raises(VmkitError, match="at least one program"):
        GuestKernel(())


def test_guest_kernel_rejects_unknown_bug():
    """An unknown bug name is refused, naming the known ones."""
    with pytest.raises(VmkitError, match="broken_idt"):
        GuestKernel((programs.hello(),), bug="off_by_one")


def test_guest_kernel_rejects_too_many_programs():
    """More programs than memory can hold is refused."""
    with pytest.raises(VmkitError, match="do not fit"):
        GuestKernel((programs.hello(),) * 3, memory_size=0x40000)


# -- build ------------------------------------------------------------------------


def test_build_places_programs_at_their_base():
    """Program i is assembled at, and placed at, PROGRAM_BASE + i * PROGRAM_SPAN."""
    progs = (programs.hello(), programs.getpid(), programs.spinner())
    image = build(GuestKernel(progs))

    regions = dict(image.regions)

    for i, program in enumerate(progs):
        base = PROGRAM_BASE + i * PROGRAM_SPAN
        assert image.program_base(i) == base
        assert regions[base] == assemble(program.source, base)


def test_programs_are_in_guest_memory():
    """After boot, each program's code is in guest memory at its base."""
    progs = (programs.hello(), programs.getpid())
    guest = Guest(GuestKernel(progs))

    for i, program in enumerate(progs):
        code = assemble(program.source, PROGRAM_BASE + i * PROGRAM_SPAN)
        assert guest.vcpu.read(PROGRAM_BASE + i * PROGRAM_SPAN, len(code)) == code


def test_idt_syscall_gate_is_dpl3():
    """The IDT in guest memory has a present DPL-3 interrupt gate at 0x80 pointing at syscall_handler."""
    guest = Guest(GuestKernel((programs.hello(),)))

    gate = Gate.decode(guest.vcpu.read(IDT + 0x80 * 16, 16))

    assert gate == Gate(guest.image.symbols["syscall_handler"], KERNEL_CS, GateType.INTERRUPT, 3, True)


def test_idt_timer_gate_is_dpl0():
    """The IDT in guest memory has a present DPL-0 interrupt gate at 32 pointing at timer_handler."""
    guest = Guest(GuestKernel((programs.hello(),)))

    gate = Gate.decode(guest.vcpu.read(IDT + int(Vector.TIMER) * 16, 16))

    assert gate == Gate(guest.image.symbols["timer_handler"], KERNEL_CS, GateType.INTERRUPT, 0, True)


def test_unused_idt_entries_are_not_present():
    """Vectors the kernel does not handle have no present gate."""
    guest = Guest(GuestKernel((programs.hello(),)))

    gate = Gate.decode(guest.vcpu.read(IDT + 0x81 * 16, 16))

    assert gate.present is False


def test_tss_rsp0_is_the_kernel_stack():
    """The TSS in guest memory holds the kernel stack top as RSP0."""
    guest = Guest(GuestKernel((programs.hello(),)))

    assert guest.vcpu.read_u64(TSS + TSS_RSP0) == guest.image.stack


def test_gdt_has_tss_descriptor_last():
    """The boot image's GDT holds null, 4 flat segments, then the 16-byte TSS descriptor."""
    image = build(GuestKernel((programs.hello(),)))

    assert len(image.gdt) == 5 * 8 + 16
    assert image.gdt[40:] == tss_descriptor(TSS)


def test_program_assembly_error_names_the_program():
    """A program that does not assemble raises AssemblyError naming the program and the line."""
    kernel = GuestKernel((programs.hello(), Program("broken", "nop\nbogus rax")))

    with pytest.raises(AssemblyError, match="broken") as info:
        build(kernel)

    assert info.value.line == 2


def test_hello_with_accented_text_assembles():
    """hello() with accented French text assembles, its message stored as UTF-8."""
    program = programs.hello(text="Ça marche déjà")

    code = assemble(program.source, PROGRAM_BASE)

    assert code.endswith("Ça marche déjà\n".encode())


# -- programs ----------------------------------------------------------------------


@pytest.mark.parametrize("letter", ["AB", "", "\n"])
def test_worker_rejects_bad_letter(letter):
    """worker needs exactly one printable character."""
    with pytest.raises(VmkitError, match="letter"):
        programs.worker("w", letter)


def test_privileged_rejects_unknown_instruction():
    """privileged() only knows the instructions of PRIVILEGED."""
    with pytest.raises(VmkitError, match="unknown privileged"):
        programs.privileged("rdtsc")


def test_vmx_probe_rejects_unknown_instruction():
    """vmx_probe() refuses a mnemonic that is not a VMX instruction."""
    with pytest.raises(VmkitError, match="VMX"):
        programs.vmx_probe("nop")


@pytest.mark.parametrize(
    "program",
    [
        programs.worker("w", "W"),
        programs.spinner(),
        programs.hello(),
        programs.getpid(),
        programs.wild_pointer(),
        programs.cpuid_probe(),
        *(programs.privileged(name) for name in programs.PRIVILEGED),
        *(programs.vmx_probe(m) for m in ("vmxon", "vmcall", "vmlaunch", "vmread")),
    ],
    ids=lambda p: p.name,
)
def test_every_program_assembles(program):
    """Every program the course ships assembles to non-empty code."""
    code = assemble(program.source, PROGRAM_BASE)

    assert code


@pytest.mark.parametrize("kwargs", [dict(timer_period=100.5), dict(timer_period="100"), dict(timer_period=None),
                                    dict(memory_size=1 << 40), dict(memory_size=0x100000 * 1.0),
                                    dict(memory_size=0x100800)])
def test_guest_kernel_refuses_bad_numbers(kwargs):
    """Wrong types or sizes of timer_period and memory_size are caller mistakes, said as such."""
    with pytest.raises(VmkitError):
        GuestKernel((programs.hello(),), **kwargs)


@pytest.mark.parametrize("programs_", [("mov rax, 1",), "hello", (None,)])
def test_guest_kernel_needs_programs(programs_):
    """programs must be Program objects, not assembly text."""
    with pytest.raises(VmkitError, match="tuple of Program"):
        GuestKernel(programs_)


@pytest.mark.parametrize(("name", "source"), [("", "nop"), ("x", None), ("x", b"nop")])
def test_program_needs_a_name_and_text(name, source):
    """A Program is a non-empty name and assembly text."""
    with pytest.raises(VmkitError):
        Program(name, source)


def test_guest_kernel_caps_programs_at_99():
    """Pids print with two digits, so a kernel runs at most 99 programs."""
    with pytest.raises(VmkitError, match="at most 99"):
        GuestKernel((programs.hello(),) * 100, memory_size=64 << 20)


@pytest.mark.parametrize("build_program", [
    lambda: programs.worker("w", "a", work=0), lambda: programs.worker("w", "a", rounds=0),
    lambda: programs.sleeper("s", "a", rounds=0), lambda: programs.hello(text=5),
    lambda: programs.worker("w", 5), lambda: programs.sleeper("s", "s", ticks="2"),
    lambda: programs.wild_pointer("x")])
def test_program_builders_check_their_arguments(build_program):
    """Program builders refuse zero loops (they would run 2**64 turns) and wrong types."""
    with pytest.raises(VmkitError):
        build_program()
