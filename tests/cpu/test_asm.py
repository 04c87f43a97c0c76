"""Tests for vmkit.cpu.asm: assembling and disassembling x86-64 source."""

import struct

import pytest

from vmkit.core import VmkitError
from vmkit.cpu.asm import AssemblyError, assemble, disassemble


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("nop", "90"),
        ("int 0x80", "cd80"),
        ("vmcall", "0f01c1"),
        ("vmxon [rax]", "f30fc730"),
        ("hlt", "f4"),
    ],
)
def test_assemble_known_instruction_bytes(source, expected):
    """assemble encodes well-known instructions to their architectural bytes."""
    code = assemble(source)

    assert code.hex() == expected


def test_label_resolves_at_given_address():
    """A label's value is its offset plus the address the code is assembled at."""
    source = "nop\nhere: .quad here"

    code = assemble(source, 0x4000)

    assert struct.unpack("<Q", code[1:9])[0] == 0x4001


def test_comments_are_ignored():
    """Text after ';' is a comment and changes nothing in the output."""
    plain = assemble("nop\nint 0x80")

    commented = assemble("; header comment\nnop ; first\n  ; indented comment\nint 0x80 ; second")

    assert commented == plain


def test_empty_source_assembles_to_nothing():
    """Source with only blank and comment lines assembles to no bytes."""
    code = assemble("\n   \n; nothing here\n")

    assert code == b""


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ("bogus", 1),
        ("nop\nbogus", 2),
        ("nop\n\n\nbogus rax", 4),
        ("; comment\n\n; another\nnop\nfrobnicate", 5),
        ("start:\n  nop ; c\n  mov rax, rbx\n\n  bad_op rax\n  nop", 5),
    ],
)
def test_invalid_mnemonic_reports_its_line(source, line):
    """An invalid mnemonic raises AssemblyError whose .line is the 1-based line number."""
    with pytest.raises(AssemblyError) as info:
        assemble(source)

    assert info.value.line == line


def test_assembly_error_is_a_vmkit_error():
    """AssemblyError is a caller mistake, so it derives from VmkitError and quotes the line."""
    with pytest.raises(VmkitError, match="bogus"):
        assemble("nop\nbogus")


def test_undefined_label_names_its_line():
    """A jump to an undefined label raises AssemblyError on the jump's line."""
    with pytest.raises(AssemblyError) as info:
        assemble("nop\n; comment\njmp nowhere\nnop")

    assert info.value.line == 3
    assert "nowhere" in info.value.text


def test_disassemble_round_trips_mnemonics():
    """Disassembling assembled code gives back the same mnemonics, in order."""
    code = assemble("mov rax, 1\nadd rax, rbx\ncpuid\nint 0x80\nhlt\nret", 0x1000)

    instructions = disassemble(code, 0x1000)

    assert [i.mnemonic for i in instructions] == ["mov", "add", "cpuid", "int", "hlt", "ret"]


def test_disassemble_addresses_and_sizes_tile_the_code():
    """Each decoded instruction starts where the previous one ended, covering every byte."""
    code = assemble("mov rax, 1\nnop\nvmcall\nint 0x80", 0x2000)

    instructions = disassemble(code, 0x2000)

    assert instructions[0].address == 0x2000
    assert all(a.address + a.size == b.address for a, b in zip(instructions, instructions[1:]))
    assert b"".join(i.raw for i in instructions) == code


def test_disassemble_count_limits_instructions():
    """disassemble with count=n decodes at most n instructions."""
    code = assemble("nop\nnop\nnop\nnop")

    instructions = disassemble(code, 0, count=2)

    assert len(instructions) == 2


def test_semicolon_inside_string_is_not_a_comment():
    """A ';' inside a quoted .ascii string is data, not the start of a comment."""
    code = assemble('.ascii "a;b" ; a comment')

    assert code == b"a;b"


def test_unterminated_string_is_an_assembly_error():
    """An unterminated string is refused with its line number (keystone alone would hang)."""
    with pytest.raises(AssemblyError) as info:
        assemble('nop\n.ascii "abc')

    assert info.value.line == 2


def test_non_ascii_outside_a_string_is_an_assembly_error():
    """Non-ASCII text outside a string literal is refused, not passed to keystone."""
    with pytest.raises(AssemblyError) as info:
        assemble("mov rax, é")

    assert "non-ASCII" in info.value.reason


def test_non_ascii_string_assembles_as_utf8():
    """A non-ASCII .ascii string (French text) assembles to its UTF-8 bytes."""
    code = assemble('.ascii "déjà"')

    assert code == "déjà".encode()


def test_absolute_operand_keystone_would_misencode_is_refused_with_its_line():
    """keystone 0.9.2 encodes `mov rbx, [0x10000000]` relative to the instruction: refused, line named."""
    with pytest.raises(AssemblyError) as info:
        assemble("nop\nmov rbx, qword ptr [0x10000000]", 0x400000)

    assert info.value.line == 2 and "register" in info.value.reason


def test_absolute_operands_keystone_encodes_right_are_accepted():
    """The moffs form (rax) and correctly relocated RIP-relative forms assemble to the absolute target."""
    from vmkit.cpu.asm import disassemble

    code = assemble("add rbx, qword ptr [0x4008]", 0x400000)
    insn = disassemble(code, 0x400000)[0]

    assert insn.address + insn.size + int(insn.op_str.split("rip - ")[1].rstrip("]"), 0) * -1 == 0x4008
