"""vmkit.memory.paged: a real program whose accesses go through our walker (unicorn's TLB fills)."""

import pytest

from vmkit.core import VmkitError
from vmkit.memory.paged import DATA, PagedProgram

TOUCH_16_PAGES = f"""
    mov rcx, 16
    mov rbx, {DATA:#x}
fill:
    mov qword ptr [rbx], rcx
    add rbx, 4096
    dec rcx
    jnz fill
    nop
"""


def test_native_run_walks_once_per_page_with_four_references():
    """Natively, each page the program touches is one TLB fill: one 4-reference walk."""
    program = PagedProgram(TOUCH_16_PAGES, nested=False)

    run = program.run()

    assert len(run.fills) == 17 and run.references == 17 * 4  # 1 code page + 16 data pages
    assert program.read_data(15 * 4096, 8) == (1).to_bytes(8, "little")


def test_nested_run_backs_guest_pages_lazily_on_ept_violations():
    """In a VM, the first touch of each data page is an EPT violation; the VMM backs it; the program goes on."""
    program = PagedProgram(TOUCH_16_PAGES, nested=True)

    run = program.run()

    assert run.ept_violations == 16
    assert program.read_data(0, 8) == (16).to_bytes(8, "little")
    assert all(f.references == 24 for f in run.fills if not f.lazily_backed)


def test_access_outside_the_guest_mapping_is_a_page_fault():
    """A program reading an unmapped address stops with the guest's page fault recorded."""
    program = PagedProgram("mov rax, 0x50000000\nmov rbx, qword ptr [rax]\nnop", nested=False)

    run = program.run()

    assert run.page_fault is not None and run.page_fault.gva == 0x5000_0000


def test_empty_program_is_refused():
    """An empty program is a caller mistake."""
    with pytest.raises(VmkitError):
        PagedProgram("; nothing")


@pytest.mark.parametrize("nested", [False, True])
def test_a_read_then_a_write_sets_the_dirty_bit(nested):
    """A page first read, then written, ends up with D set in the guest's leaf entry."""
    # addresses through a register: keystone mis-encodes absolute [disp32] operands (ARCHITECTURE.md)
    program = PagedProgram(f"mov rax, {DATA:#x}\nmov rbx, qword ptr [rax]\nmov qword ptr [rax], 5\nnop",
                           nested=nested)

    program.run()

    from vmkit.memory.paging import PTE
    assert program.space.entries(DATA)[-1].entry & PTE.D


def test_read_data_crosses_a_page_boundary():
    """An 8-byte value straddling two pages reads back whole."""
    program = PagedProgram(f"mov rax, 0x8877665544332211\nmov rbx, {DATA + 0xFFC:#x}\n"
                           "mov qword ptr [rbx], rax\nnop", nested=True)

    program.run()

    assert program.read_data(0xFFC, 8) == (0x8877665544332211).to_bytes(8, "little")


@pytest.mark.parametrize(("source", "field"), [
    ("mov rax, 0x8000000000000000\nmov rbx, qword ptr [rax]\nnop", "general_protection"),
    ("int3\nnop", "stopped"), ("ud2\nnop", "stopped")])
def test_other_faults_are_recorded_not_raised(source, field):
    """A non-canonical access, int3 or ud2 stops the program with a record, never a raw UcError."""
    run = PagedProgram(source, nested=False).run()

    assert getattr(run, field) is not None
