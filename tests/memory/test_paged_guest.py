"""vmkit.memory.paged_guest: chapter 1's guests with paging on, natively and under an EPT."""

import pytest

from vmkit.core import VmkitError
from vmkit.cpu.hypervisor import HypervisorConfig
from vmkit.cpu.kernel import GuestKernel, Program
from vmkit.cpu.programs import hello, worker
from vmkit.cpu.vmx import ExitReason
from vmkit.memory.paged_guest import PagingHypervisor, paging_machine

SNOOP = Program("snoop", "mov rax, 0x20000\n mov rbx, qword ptr [rax]\n mov rax, 60\n xor edi, edi\n int 0x80")


def _kernel(paging=True):
    return GuestKernel((worker("A", "A", rounds=3), worker("B", "B", rounds=3), SNOOP, hello()),
                       timer_period=3_000, paging=paging)


def test_paged_machine_runs_the_same_programs():
    """With paging on, the workers and hello still run to the end on bare metal."""
    machine = paging_machine(_kernel()).run(300_000)

    assert machine.state == "halted"
    assert machine.console.count("A") >= 3 and "Bonjour" in machine.console


def test_a_process_cannot_read_another_ones_memory():
    """Each process has its own address space: reading program A's region is a #PF that kills it."""
    machine = paging_machine(_kernel()).run(300_000)

    snoop = machine.guest.processes()[2]
    assert (snoop.state, snoop.status) == ("killed", 14)


def test_without_paging_the_same_snoop_succeeds():
    """Chapter 1's flat memory has no protection between programs: the snoop reads and exits."""
    from vmkit.cpu.machine import Machine

    machine = Machine(_kernel(paging=False)).run(300_000)

    assert machine.guest.processes()[2].state == "exited"


def test_vm_backs_guest_memory_lazily_with_ept_violations():
    """Under the hypervisor, pages the loader did not write are backed on first touch: exit 48."""
    hv = PagingHypervisor(HypervisorConfig())
    vm = hv.create_vm("vm", _kernel())

    hv.run(3_000_000)

    violations = [e for e in hv.exits if e.reason is ExitReason.EPT_VIOLATION]
    assert vm.state == "halted" and violations
    assert vm.guest.processes()[2].state == "killed"


def test_paging_machine_needs_a_paging_kernel():
    """A kernel without paging is refused with a clear message."""
    with pytest.raises(VmkitError, match="paging=True"):
        paging_machine(_kernel(paging=False))
