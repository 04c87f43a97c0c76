"""Tests for vmkit.cpu.vcpu: running guest code in slices and delivering events through the IDT."""

import pytest

from vmkit.core import VmkitError
from vmkit.cpu.asm import assemble
from vmkit.cpu.guest import Guest
from vmkit.cpu.kernel import GuestKernel, Program, build
from vmkit.cpu.programs import hello
from vmkit.cpu.vcpu import VCPU, StopKind
from vmkit.cpu.x86 import KERNEL_CS, KERNEL_DS, RFLAGS, Gate

MEMORY = 0x100000
CODE = 0x10000
STACK = 0x9000
IDT = 0x2000
HANDLER = 0x30000
GDT_BYTES = build(GuestKernel((hello(),))).gdt


def ring0_cpu(source: str = "nop") -> VCPU:
    """A ring-0 VCPU with the guest kernel's GDT, ``source`` at CODE and RIP on it."""
    vcpu = VCPU(MEMORY, gdt=0x1000, gdt_bytes=GDT_BYTES)
    vcpu.write(CODE, assemble(source, CODE))
    vcpu.set_reg("rip", CODE)
    vcpu.set_reg("rsp", STACK)
    return vcpu


def with_idt(limit: int, gates: dict[int, Gate]) -> VCPU:
    """A ring-0 VCPU that has executed ``lidt`` for an IDT at IDT holding ``gates``."""
    vcpu = ring0_cpu(f"lidt [rip+idtr]\nnop\nidtr: .word {limit:#x}\n.quad {IDT:#x}")
    for vector, gate in gates.items():
        vcpu.write(IDT + vector * 16, gate.encode())
    vcpu.run(1)
    return vcpu


def first_ring3_stop(source: str):
    """Boot the guest kernel with one program ``source`` and run to its first stop at ring 3."""
    guest = Guest(GuestKernel((Program("p", source),)))
    for _ in range(100):
        stop = guest.vcpu.run(1000)
        if stop.cpl == 3:
            return guest, stop
        assert stop.kind is StopKind.IO, stop  # the kernel programs the PIT while booting
        guest.skip(stop)
    raise AssertionError("the program never ran")


def test_boot_state_is_ring0_on_kernel_segments():
    """A VCPU built with a GDT starts at ring 0 with the kernel's code and stack selectors."""
    vcpu = ring0_cpu()

    assert (vcpu.cpl, vcpu.reg("cs"), vcpu.reg("ss")) == (0, KERNEL_CS, KERNEL_DS)


def test_memory_size_must_be_page_multiple():
    """A memory size that is not a positive multiple of 4096 is refused."""
    with pytest.raises(VmkitError, match="4096"):
        VCPU(0x1234)


def test_budget_stop_retires_exactly_the_budget():
    """Running an endless loop with budget n stops with a BUDGET stop after exactly n instructions."""
    vcpu = ring0_cpu("loop:\n    inc rax\n    jmp loop")

    stop = vcpu.run(1001)

    assert stop.kind is StopKind.BUDGET
    assert stop.retired == 1001
    assert vcpu.reg("rax") == 501


def test_zero_budget_runs_nothing():
    """A budget of 0 returns a BUDGET stop with nothing retired and RIP unchanged."""
    vcpu = ring0_cpu("inc rax")

    stop = vcpu.run(0)

    assert (stop.kind, stop.retired, vcpu.rip, vcpu.reg("rax")) == (StopKind.BUDGET, 0, CODE, 0)


def test_out_stop_reports_port_value_size_and_rip():
    """An OUT stops the slice at the out instruction, with its port, value, size and the count before it."""
    vcpu = ring0_cpu("nop\nnop\nmov al, 0x41\nmov dx, 0x3f8\nout dx, al\nnop")
    out_address = CODE + len(assemble("nop\nnop\nmov al, 0x41\nmov dx, 0x3f8"))

    stop = vcpu.run(100)

    assert stop.kind is StopKind.IO
    assert (stop.port, stop.value, stop.size, stop.direction) == (0x3F8, 0x41, 1, "out")
    assert stop.rip == out_address == vcpu.rip
    assert stop.retired == 4
    assert stop.mnemonic == "out"


def test_cpuid_stop():
    """CPUID stops the slice with a CPUID stop at the cpuid instruction, which is 2 bytes long."""
    vcpu = ring0_cpu("nop\nmov eax, 0\ncpuid\nnop")
    cpuid_address = CODE + len(assemble("nop\nmov eax, 0"))

    stop = vcpu.run(100)

    assert (stop.kind, stop.rip, stop.length, stop.retired) == (StopKind.CPUID, cpuid_address, 2, 2)


def test_hlt_at_ring0_stops_at_the_hlt():
    """HLT at ring 0 gives a HLT stop whose RIP is the hlt itself, after the instructions before it."""
    vcpu = ring0_cpu("nop\nnop\nhlt\nnop")

    stop = vcpu.run(100)

    assert (stop.kind, stop.rip, stop.retired, stop.cpl) == (StopKind.HLT, CODE + 2, 2, 0)
    assert vcpu.rip == CODE + 2


def test_software_interrupt_stop():
    """int 0x80 stops with a software INTERRUPT stop of vector 0x80 at the int instruction."""
    vcpu = ring0_cpu("nop\nint 0x80")

    stop = vcpu.run(100)

    assert (stop.kind, stop.vector, stop.software, stop.rip, stop.length) == (
        StopKind.INTERRUPT, 0x80, True, CODE + 1, 2)


def test_read_outside_memory_gives_memory_stop():
    """A load beyond the machine's memory ends the slice with a MEMORY read stop, not an exception."""
    vcpu = ring0_cpu("mov rax, 0x40000000\nmov rbx, qword ptr [rax]")
    load_address = CODE + len(assemble("mov rax, 0x40000000"))

    stop = vcpu.run(100)

    assert stop.kind is StopKind.MEMORY
    assert (stop.access, stop.address, stop.rip, stop.retired) == ("read", 0x4000_0000, load_address, 1)


def test_write_outside_memory_gives_memory_stop():
    """A store beyond the machine's memory ends the slice with a MEMORY write stop."""
    vcpu = ring0_cpu("mov rax, 0x40000000\nmov qword ptr [rax], rbx")

    stop = vcpu.run(100)

    assert (stop.kind, stop.access, stop.address) == (StopKind.MEMORY, "write", 0x4000_0000)


def test_fetch_outside_memory_gives_memory_stop():
    """Jumping beyond the machine's memory ends the slice with a MEMORY fetch stop at that address."""
    vcpu = ring0_cpu("mov rax, 0x40000000\njmp rax")

    stop = vcpu.run(100)

    assert (stop.kind, stop.access, stop.address, stop.rip) == (
        StopKind.MEMORY, "fetch", 0x4000_0000, 0x4000_0000)


@pytest.mark.parametrize("mnemonic", ["vmcall", "ud2", "vmxon"])
def test_invalid_opcode_gives_invalid_stop_with_mnemonic(mnemonic):
    """An opcode unicorn refuses gives an INVALID stop (#UD) naming the instruction, at its address."""
    source = {"vmcall": "vmcall", "ud2": "ud2", "vmxon": "vmxon [rax]"}[mnemonic]
    vcpu = ring0_cpu(f"nop\n{source}")

    stop = vcpu.run(100)

    assert (stop.kind, stop.mnemonic, stop.vector, stop.rip) == (StopKind.INVALID, mnemonic, 6, CODE + 1)
    assert stop.length == len(assemble(source))


def test_deliver_at_ring0_pushes_frame_and_jumps_to_handler():
    """Delivering through a hand-built IDT pushes SS, RSP, RFLAGS, CS, RIP on the aligned stack and jumps."""
    vcpu = with_idt(0xFFF, {0x30: Gate(HANDLER)})
    vcpu.set_reg("rflags", 0x202)
    vcpu.set_reg("rsp", STACK + 8)
    rip = vcpu.rip

    delivery = vcpu.deliver(0x30, external=True)

    top = STACK - 5 * 8  # the new stack is aligned down to 16 bytes first
    assert delivery.triple_fault is False
    assert (delivery.chain, delivery.from_cpl, delivery.to_cpl, delivery.handler) == ((0x30,), 0, 0, HANDLER)
    assert (vcpu.rip, vcpu.reg("rsp"), delivery.stack) == (HANDLER, top, top)
    in_memory = [vcpu.read_u64(top + 8 * i) for i in range(5)]
    assert in_memory == [rip, KERNEL_CS, 0x202, STACK + 8, KERNEL_DS]


def test_deliver_through_interrupt_gate_clears_if():
    """An interrupt gate clears IF on entry."""
    vcpu = with_idt(0xFFF, {0x30: Gate(HANDLER)})
    vcpu.set_reg("rflags", 0x202)

    vcpu.deliver(0x30, external=True)

    assert not vcpu.reg("rflags") & RFLAGS.IF


def test_deliver_with_error_code_pushes_it_last():
    """A #GP delivered with an error code pushes it below RIP, at the new stack top."""
    vcpu = with_idt(0xFFF, {13: Gate(HANDLER)})

    delivery = vcpu.deliver(13, error_code=0x28)

    assert len(delivery.frame) == 6
    assert vcpu.read_u64(vcpu.reg("rsp")) == 0x28


def test_deliver_beyond_idt_limit_triple_faults():
    """With an IDT too small for the vector, delivery escalates #GP then #DF then a triple fault."""
    vcpu = with_idt(0x10, {})

    delivery = vcpu.deliver(32, external=True)

    assert delivery.triple_fault is True
    assert delivery.chain == (32, 13, 8)


def test_deliver_rejects_out_of_range_vector():
    """A vector outside 0..255 is a caller error."""
    vcpu = ring0_cpu()

    with pytest.raises(VmkitError, match="vector must be <= 255"):
        vcpu.deliver(256)


def test_read_outside_memory_raises():
    """Reading host-side outside the machine's memory raises VmkitError."""
    vcpu = ring0_cpu()

    with pytest.raises(VmkitError, match="outside"):
        vcpu.read(MEMORY - 4, 8)


def test_write_outside_memory_raises():
    """Writing host-side outside the machine's memory raises VmkitError."""
    vcpu = ring0_cpu()

    with pytest.raises(VmkitError, match="outside"):
        vcpu.write(-1, b"\x00")


def test_unknown_register_raises():
    """Reading a register by an unknown name raises VmkitError listing the known ones."""
    vcpu = ring0_cpu()

    with pytest.raises(VmkitError, match="unknown register"):
        vcpu.reg("xyz")


def test_write_u64_read_u64_round_trip():
    """A 64-bit value written to guest memory reads back unchanged."""
    vcpu = ring0_cpu()

    vcpu.write_u64(0x8000, 0xDEAD_BEEF_CAFE_F00D)

    assert vcpu.read_u64(0x8000) == 0xDEAD_BEEF_CAFE_F00D


def test_privileged_instruction_at_ring3_faults():
    """cli at ring 3 (CPL > IOPL) stops with #GP at the cli, not as an ordinary instruction."""
    _, stop = first_ring3_stop("nop\ncli\nnop")

    assert (stop.kind, stop.vector, stop.software, stop.cpl) == (StopKind.INTERRUPT, 13, False, 3)


def test_out_at_ring3_faults():
    """OUT at ring 3 with IOPL 0 stops with #GP (vector 13), like any IOPL-sensitive instruction."""
    _, stop = first_ring3_stop("mov al, 0x41\nout 0x80, al\nnop")

    assert (stop.kind, stop.vector, stop.cpl) == (StopKind.INTERRUPT, 13, 3)


def test_deliver_from_ring3_switches_to_rsp0():
    """Delivering from ring 3 enters ring 0 on the TSS's RSP0 stack and pushes the user SS:RSP."""
    guest, stop = first_ring3_stop("nop\nint 0x80")
    vcpu = guest.vcpu
    user_rsp = vcpu.reg("rsp")
    vcpu.set_reg("rip", stop.rip + stop.length)

    delivery = vcpu.deliver(0x80, software=True)

    assert (delivery.from_cpl, delivery.to_cpl, vcpu.cpl) == (3, 0, 0)
    assert delivery.stack == guest.image.stack - 5 * 8
    assert delivery.frame[1] == user_rsp


def test_deliver_from_ring3_preserves_cr2():
    """CR2 set before delivering a #PF from ring 3 still holds the faulting address in the handler."""
    guest, _ = first_ring3_stop("nop\nint 0x80")
    vcpu = guest.vcpu
    vcpu.set_reg("cr2", 0x4000_0000)

    vcpu.deliver(14, error_code=4)

    assert vcpu.reg("cr2") == 0x4000_0000
