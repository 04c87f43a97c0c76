"""Chapter 1, CPU virtualization: real x86-64 code under a hypervisor with VT-x.

unicorn executes the guest's instructions; vmkit models VMX operation (the
VMCS, VM entries and exits), the guest's interrupt delivery, its devices and
the hypervisor. Notebooks: course/01_cpu/.
"""

from vmkit.cpu.asm import AssemblyError, Instruction, assemble, disassemble
from vmkit.cpu.vmx import VMX, VMCSField, ExitReason, VMXError

__all__ = ["assemble", "disassemble", "AssemblyError", "Instruction",
           "ExitReason", "VMXError", "VMX", "VMCSField"]
