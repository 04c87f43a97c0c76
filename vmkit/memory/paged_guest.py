"""Chapter 1's guests with paging on: each process in its own address space, and an EPT per VM.

``GuestKernel(paging=True)`` makes the loader build a page table per process
(the kernel's 128 KiB supervisor-only, the process's own region user) and the
kernel loads each process's CR3 when it switches. Here our walker becomes
unicorn's MMU (``VCPU.set_translator``): on bare metal with ``paging.walk``,
in a VM with the two-dimensional walk through the VM's EPT. The VMM backs
guest-physical memory lazily: the first touch of a page is an EPT violation,
exit 48 in the hypervisor's trace, after which it maps the frame (identity:
gpa = hpa, so unicorn's memory window is the VM's memory) and the access is
retried. Deliberately simple: one VCPU per VM, an identity EPT, no huge pages.
Source: Intel SDM Vol. 3A ch. 4 (paging), Vol. 3C ch. 28 (EPT).
Taught in course/02_memory/02_two_dimensional_walk.ipynb.
"""

from __future__ import annotations

from vmkit.core import VmkitError
from vmkit.cpu.hypervisor import VM, Hypervisor
from vmkit.cpu.kernel import GuestKernel
from vmkit.cpu.machine import Machine
from vmkit.memory.ept import EPT, EPTMisconfiguration, EPTViolation
from vmkit.memory.nested import GuestPhysicalMemory, walk_2d
from vmkit.memory.paging import PTE, Access, GeneralProtection, PageFault, walk
from vmkit.memory.physical import FRAME, PhysicalMemory


def _access(kind: str, user: bool) -> Access:
    return Access(write=kind == "write", user=user, fetch=kind == "fetch")


def _answer(result, leaf_entry: int | None, kind: str, hpa: int | None, rights):
    """What the translator tells unicorn: the page and rights, or the fault."""
    if isinstance(result, PageFault):
        return ("#PF", result.error_code)
    if isinstance(result, GeneralProtection):
        return ("#GP",)
    # write permission only once the leaf is dirty: the first write comes back to the walker,
    # which sets D as the processor does
    writable = rights.writable and bool(leaf_entry & PTE.D or kind == "write")
    return (hpa & ~(FRAME - 1), writable, rights.executable)


def paging_machine(kernel: GuestKernel) -> Machine:
    """A bare-metal Machine whose MMU is ``paging.walk`` over the kernel's per-process tables."""
    if not isinstance(kernel, GuestKernel) or not kernel.paging:
        raise VmkitError("paging_machine needs GuestKernel(..., paging=True)")
    machine = Machine(kernel)
    memory = PhysicalMemory(kernel.memory_size, name="machine memory")
    machine.vcpu.share_memory(memory._bytes)
    machine.walks = 0

    def translate(address: int, kind: str, user: bool):
        machine.walks += 1
        result = walk(memory, machine.vcpu.reg("cr3"), address, _access(kind, user))
        leaf = result.references[-1].entry if result.references else 0
        return _answer(result.result, leaf, kind, getattr(result.result, "pa", None), result.result)

    machine.vcpu.set_translator(translate)
    return machine


class PagingHypervisor(Hypervisor):
    """The chapter-1 hypervisor with an EPT per VM; its guests run with paging on."""

    def create_vm(self, name: str, kernel: GuestKernel) -> VM:
        if not isinstance(kernel, GuestKernel) or not kernel.paging:
            raise VmkitError("a PagingHypervisor runs GuestKernel(..., paging=True) guests")
        vm = super().create_vm(name, kernel)
        size = kernel.memory_size
        host = PhysicalMemory(size + (1 << 20), name=f"host memory of {name}")
        for _ in range(size // FRAME):  # the VM's own frames come first (identity EPT)
            host.alloc_frame()
        ept = EPT(host)
        guest = GuestPhysicalMemory(host, ept, size)
        vm.guest.vcpu.share_memory(host._bytes)
        vm.ept, vm.host, vm.guest_memory, vm.walks = ept, host, guest, 0

        def back(gpa: int) -> None:
            page = gpa & ~(FRAME - 1)
            if page >= size:
                raise VmkitError(f"gpa {gpa:#x} is outside the VM's {size:#x} bytes")
            ept.map(page, page)
            guest._backing[page // FRAME] = page

        vm.back_page = back
        for address, data in vm.guest.image.regions:  # what the loader wrote is backed at boot
            for page in range(address & ~(FRAME - 1), address + len(data), FRAME):
                if page // FRAME not in guest._backing:
                    back(page)

        def translate(address: int, kind: str, user: bool):
            vm.walks += 1
            result = walk_2d(guest, vm.guest.vcpu.reg("cr3"), address, _access(kind, user))
            outcome = result.result
            if isinstance(outcome, EPTViolation):
                return ("EPT", outcome.gpa)
            # this VMM only ever writes valid EPT entries: a misconfiguration would be its bug
            assert not isinstance(outcome, EPTMisconfiguration), outcome
            if not result.ok:
                return _answer(outcome, 0, kind, None, None)
            leaf = next(s.guest for s in reversed(result.steps) if s.guest is not None).entry
            return _answer(outcome, leaf, kind, outcome.hpa, outcome.guest)

        vm.guest.vcpu.set_translator(translate)
        return vm
