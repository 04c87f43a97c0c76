"""Assemble and disassemble real x86-64 machine code.

keystone-engine assembles (Intel syntax), capstone disassembles; both are the
tools of the Unicorn family. Source follows NASM's conventions: one
instruction per line, ``;`` starts a comment, ``name:`` defines a label.
Taught in course/01_cpu/01_modes_privileges.ipynb.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from vmkit.core import VmkitError, expect_int

_LABEL = re.compile(r"^\s*([A-Za-z_.$][\w.$]*)\s*:")


class AssemblyError(VmkitError):
    """The assembler refused a line; ``.line`` is its 1-based number."""

    def __init__(self, line: int, text: str, reason: str):
        self.line = line
        self.text = text
        self.reason = reason
        super().__init__(f"line {line}: {reason}: {text.strip()!r}")


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction."""

    address: int
    size: int
    mnemonic: str
    op_str: str
    raw: bytes

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()

    def __str__(self) -> str:
        return f"{self.address:#08x}  {self.raw.hex(' '):<24} {self.text}"


@lru_cache(maxsize=1)
def _keystone():
    from keystone import KS_ARCH_X86, KS_MODE_64, Ks

    return Ks(KS_ARCH_X86, KS_MODE_64)


@lru_cache(maxsize=1)
def _capstone():
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    return Cs(CS_ARCH_X86, CS_MODE_64)


_ESCAPES = {"n": 10, "t": 9, "r": 13, "0": 0, "\\": 92, '"': 34, "'": 39}
_STRING_DIRECTIVE = re.compile(r"\.(ascii|asciz|string)\s+")


def _literal(number: int, line: str, i: int) -> tuple[bytes, int]:
    """Read the string literal opening at ``line[i]``; return its UTF-8 bytes and the index after it."""
    data, i = bytearray(), i + 1
    while i < len(line):
        char = line[i]
        if char == '"':
            return bytes(data), i + 1
        if char == "\\":
            escape = line[i + 1:i + 2]
            if escape not in _ESCAPES:
                raise AssemblyError(number, line, f"unknown escape \\{escape} in a string")
            data.append(_ESCAPES[escape])
            i += 2
        else:
            data += char.encode("utf-8")
            i += 1
    raise AssemblyError(number, line, "unterminated string")


def _prepare(number: int, line: str) -> str:
    """Cut the ``;`` comment and turn ``.ascii "..."`` into ``.byte`` of its UTF-8 bytes.

    keystone encodes its input as ASCII and never returns on an unterminated
    string, so vmkit reads string literals itself.
    """
    out, i = [], 0
    while i < len(line) and line[i] != ";":
        directive = _STRING_DIRECTIVE.match(line, i)
        if directive:
            data, i = _literal(number, line, directive.end()) if line[directive.end():directive.end() + 1] == '"' \
                else (None, i)
            if data is None:
                raise AssemblyError(number, line, f".{directive.group(1)} needs a string in double quotes")
            if directive.group(1) != "ascii":
                data += b"\0"
            out.append(".byte " + ", ".join(f"{b:#04x}" for b in data) if data else "")
            continue
        if line[i] == '"':
            raise AssemblyError(number, line, "a string belongs after .ascii, .asciz or .string")
        out.append(line[i])
        i += 1
    text = "".join(out).rstrip()
    if not text.isascii():
        raise AssemblyError(number, line, "non-ASCII character outside a string")
    return text


def _strip(source: str) -> list[str]:
    return [_prepare(number, line) for number, line in enumerate(source.splitlines(), start=1)]


def _reason(exc: Exception) -> str:
    # KsError's text is "Invalid mnemonic (KS_ERR_ASM_MNEMONICFAIL)"
    return str(exc).split(" (KS_ERR", 1)[0]


def assemble(source: str, address: int = 0) -> bytes:
    """Assemble x86-64 source (Intel syntax) placed at ``address``.

    Raises:
        AssemblyError: with the number of the first line the assembler refuses.
    """
    from keystone import KsError

    if not isinstance(source, str):
        raise VmkitError(f"assemble() takes assembly text (a str), not {type(source).__name__}")
    expect_int(address, "address")
    lines = _strip(source)
    text = "\n".join(lines)
    if not text.strip():
        return b""
    try:
        encoding, _ = _keystone().asm(text, address)
    except KsError as exc:
        raise _locate(lines, address, exc) from None
    for number, line in enumerate(lines, start=1):
        if _ABSOLUTE.search(line):
            _check_absolute(number, line)
    return bytes(encoding or b"")


_ABSOLUTE = re.compile(r"\[\s*(0x[0-9a-fA-F]+|\d+)\s*\]")


def _check_absolute(number: int, line: str) -> None:
    """Refuse a ``[number]`` operand that keystone 0.9.2 encodes wrongly.

    keystone encodes an absolute address as RIP-relative, and for some
    instructions (``mov rbx, [0x1000]``) forgets to subtract the instruction's
    address. A correct encoding reaches the same target wherever the line sits;
    a wrong one moves with it, which is how the bug is told apart.
    """
    body = _LABEL.sub("", line).strip()
    targets = set()
    for base in (0x10000, 0x20000):
        try:
            insn = disassemble(bytes(_keystone().asm(body, base)[0]), base, 1)[0]
        except Exception:
            return  # not a single instruction: nothing to compare
        match = re.search(r"\[rip ([+-]) (0x[0-9a-f]+|\d+)\]", insn.op_str)
        if not match:
            return  # encoded as a true absolute (moffs): fine
        disp = int(match.group(2), 0) * (1 if match.group(1) == "+" else -1)
        targets.add(base + insn.size + disp)
    if len(targets) > 1:
        raise AssemblyError(number, line, "keystone 0.9.2 mis-encodes this absolute address "
                            "(as RIP-relative without subtracting the instruction's address); "
                            "load the address into a register first, or use a label")


def _locate(lines: list[str], address: int, exc: Exception) -> AssemblyError:
    """Find the line keystone refuses: keystone reports no line numbers."""
    from keystone import KsError

    labels = [m.group(1) + ":" for m in map(_LABEL.match, lines) if m]
    for number, line in enumerate(lines, start=1):
        body = _LABEL.sub("", line).strip()
        if not body:
            continue
        try:
            _keystone().asm("\n".join(labels + [body]), address)
        except KsError as line_exc:
            return AssemblyError(number, line, _reason(line_exc))
    return AssemblyError(len(lines), lines[-1] if lines else "", _reason(exc))


def disassemble(code: bytes, address: int = 0, count: int = 0) -> list[Instruction]:
    """Decode ``code`` placed at ``address`` (at most ``count`` instructions if > 0)."""
    if not isinstance(code, (bytes, bytearray, memoryview)):
        raise VmkitError(f"disassemble() takes machine code (bytes), not {type(code).__name__}")
    expect_int(address, "address")
    expect_int(count, "count")
    return [
        Instruction(i.address, i.size, i.mnemonic, i.op_str, bytes(i.bytes))
        for i in _capstone().disasm(bytes(code), address, count)
    ]
