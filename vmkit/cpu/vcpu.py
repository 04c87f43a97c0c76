"""A virtual CPU: unicorn executes the guest's instructions, vmkit does the rest.

Unicorn (QEMU's TCG) runs real x86-64 code, checks privileges (CPL from the
segment registers) and executes ``iretq``, ``lidt``, ``ltr``. It does not
deliver interrupts through the guest's IDT: it hands them to a hook. So
delivery is modelled here as SDM Vol. 3A §6.14 describes it: read the 64-bit
gate, check its DPL, switch to the TSS's RSP0 when the privilege changes,
push SS, RSP, RFLAGS, CS, RIP (and the error code), clear IF for an interrupt
gate; a fault during delivery escalates to a double fault, and a fault while
delivering that to a triple fault (Table 6-5).

unicorn cannot hook MOV to CR3, nor (from Python) RDMSR/WRMSR: ``watch``
stops before the guest kernel's own ones, which is where ring-0 code runs them.

Time is counted in instructions: unicorn's own counter for ``emu_start``'s
``count`` (``uc_struct.emu_counter``) is read to know how many instructions a
slice ran even when it stops early. Nothing in the guest can reach the host:
guest-physical memory is a unicorn mapping and an access outside it stops the
slice with a MEMORY stop, never a Python crash.
Taught in course/01_cpu/01_modes_privileges.ipynb.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache

from vmkit.core import VmkitError, expect_int
from vmkit.cpu.asm import Instruction, disassemble
from vmkit.cpu.x86 import (
    CONTRIBUTORY,
    ERROR_CODE_VECTORS,
    KERNEL_CS,
    KERNEL_DS,
    RFLAGS,
    TSS_IOMAP_BASE,
    TSS_RSP0,
    Gate,
    GateType,
    Vector,
)

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_END = 0xFFFF_FFFF_FFFF_FFFF  # emu_start's "until": never reached


class StopKind(Enum):
    """Why a slice of guest execution ended."""

    BUDGET = "budget"          # the instruction budget ran out (a timer)
    INTERRUPT = "interrupt"    # int n, or an exception the CPU raised
    IO = "io"                  # in/out
    CPUID = "cpuid"
    RDTSC = "rdtsc"            # the time-stamp counter: answered from simulated time
    HLT = "hlt"
    INVALID = "invalid"        # an opcode unicorn refuses (VMX instructions among them)
    CR_ACCESS = "cr access"    # a watched MOV to CR3 (see VCPU.watch)
    MSR = "msr"                # a watched RDMSR (direction "in") or WRMSR ("out")
    EPT_VIOLATION = "ept violation"  # the translator found no EPT backing (address = gpa)
    MEMORY = "memory"          # an access outside the machine's memory


@dataclass(frozen=True)
class Stop:
    """The end of one slice: what happened, where, after how many instructions."""

    kind: StopKind
    retired: int
    rip: int
    cpl: int
    length: int = 0
    vector: int | None = None
    software: bool = False
    port: int | None = None
    size: int | None = None
    direction: str | None = None
    value: int | None = None
    address: int | None = None
    access: str | None = None
    mnemonic: str = ""
    register: int | None = None  # the GPR operand (0 RAX ... 15 R15), for MOV CR
    error_code: int | None = None  # a #PF's error code, when a translator computed it


@dataclass(frozen=True)
class Delivery:
    """What the CPU did to deliver one event through the IDT."""

    chain: tuple[int, ...]         # vectors tried, e.g. (32, 13, 8) before a triple fault
    triple_fault: bool
    from_cpl: int
    to_cpl: int | None = None
    handler: int | None = None
    stack: int | None = None
    frame: tuple[int, ...] = field(default=())


@lru_cache(maxsize=1)
def _counter_offset() -> int:
    """Locate ``emu_counter`` in unicorn's ``uc_struct`` by calibration.

    unicorn counts the instructions of ``emu_start(count=n)`` in this field
    and exposes no API to read it. Two runs of known length tell its offset;
    the field sits next to ``emu_count`` (the requested n).
    """
    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc

    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x1000)
    uc.mem_write(0, b"\x90" * 0xFF0 + b"\xeb\xfe")  # nops, then jmp $
    base = uc._uch.value
    seen = []
    for n in (1234, 777):
        uc.emu_start(0, _END, count=n)
        seen.append(ctypes.string_at(base, 8192))
    for off in range(0, 8192 - 16, 8):
        a = struct.unpack_from("<QQ", seen[0], off)
        b = struct.unpack_from("<QQ", seen[1], off)
        if a == (1235, 1234) and b == (778, 777):
            return off
    raise VmkitError(
        "cannot find unicorn's instruction counter; vmkit needs unicorn 2.1 "
        "(pip install 'unicorn>=2.1,<2.2')"
    )


class VCPU:
    """One x86-64 logical processor with its guest-physical memory.

    ``memory_size`` bytes are mapped from address 0. The boot state is what a
    boot loader leaves: 64-bit mode, ring 0, the GDT at ``gdt`` loaded.
    """

    def __init__(self, memory_size: int = 0x100000, *, gdt: int = 0x1000, gdt_bytes: bytes = b""):
        from unicorn import (
            UC_ARCH_X86, UC_HOOK_INSN, UC_HOOK_INSN_INVALID, UC_HOOK_INTR,
            UC_HOOK_MEM_UNMAPPED, UC_MODE_64, Uc,
        )
        from unicorn import x86_const as X

        expect_int(memory_size, "memory_size", minimum=0x1000, maximum=64 << 20)
        if memory_size % 0x1000:
            raise VmkitError(f"memory_size must be a multiple of 4096, not {memory_size}")
        if gdt_bytes and gdt + len(gdt_bytes) > memory_size:
            raise VmkitError(f"the GDT at {gdt:#x} does not fit in {memory_size:#x} bytes of memory")
        self._X = X
        self.memory_size = memory_size
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        # Nehalem: no RDRAND/RDSEED, whose host randomness would break determinism
        # (they raise #UD, as on a CPU without them)
        self.uc.ctl_set_cpu_model(X.UC_CPU_X86_NEHALEM)
        self.uc.mem_map(0, memory_size)
        self._offset = _counter_offset()
        self._base = self.uc._uch.value
        from unicorn.unicorn_py3.unicorn import uclib

        self._uclib, self._handle = uclib, self.uc._uch
        self._buffer = ctypes.c_uint64(0)
        self._buffer_ref = ctypes.byref(self._buffer)
        self._stop: Stop | None = None
        if gdt_bytes:
            self.uc.mem_write(gdt, gdt_bytes)
            self.uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt, len(gdt_bytes) - 1, 0))
            self.uc.reg_write(X.UC_X86_REG_SS, KERNEL_DS)
            self.uc.reg_write(X.UC_X86_REG_CS, KERNEL_CS)
        # The ring-0 register file: unicorn derives the CPL from the segment
        # caches, which reg_write cannot lower; restoring this context is how
        # interrupt delivery enters ring 0 (see deliver()).
        self._ring0 = self.uc.context_save()
        self._ring0_system: list | None = None
        self.trapping: set[StopKind] = set()  # watched instructions that stop a slice now
        self._shared = None  # the ctypes view of memory shared with a page walker, if any
        self._undo: list[tuple[str, int]] = []
        self._regid = {name: getattr(X, f"UC_X86_REG_{name.upper()}") for name in GPRS + ("rip", "rflags", "cs", "ss", "ds", "es", "cr0", "cr2", "cr3", "cr4")}
        self.uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        self.uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        self.uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        self.uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        self.uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        self.uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSENTER)
        self._hook_rdtsc()
        self.uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        self.uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)

    # -- registers and memory -------------------------------------------------

    # Registers go through unicorn's C API (uc_reg_read/uc_reg_write) directly:
    # the Python binding's dispatch costs about 5 us per call, and the
    # hypervisor reads registers on every exit. All registers named here fit
    # in 64 bits (segment selectors are 16-bit: the buffer is zeroed first).

    def reg(self, name: str) -> int:
        """Read a register by its lower-case name (rax, rip, cs, cr3, ...)."""
        self._buffer.value = 0
        status = self._uclib.uc_reg_read(self._handle, self._id(name), self._buffer_ref)
        if status:
            from unicorn import UcError
            raise UcError(status)
        return self._buffer.value

    def set_reg(self, name: str, value: int) -> None:
        regid = self._id(name)
        expect_int(value, f"the value of {name}", minimum=None)
        if name in ("cs", "ss", "ds", "es"):
            self.uc.reg_write(regid, value)  # selector loads: keep the binding's checks
            return
        self._buffer.value = value & _END
        status = self._uclib.uc_reg_write(self._handle, regid, self._buffer_ref)
        if status:
            from unicorn import UcError
            raise UcError(status)

    def _id(self, name: str) -> int:
        try:
            return self._regid[name]
        except KeyError:
            raise VmkitError(f"unknown register {name!r}; known: {', '.join(self._regid)}") from None

    def registers(self) -> dict[str, int]:
        """The general-purpose registers, RIP, RFLAGS, CS and SS."""
        return {name: self.reg(name) for name in GPRS + ("rip", "rflags", "cs", "ss")}

    @property
    def rip(self) -> int:
        return self.reg("rip")

    @property
    def cpl(self) -> int:
        """The current privilege level: the RPL of CS (SDM 5.5)."""
        return self.reg("cs") & 3

    def idtr(self) -> tuple[int, int]:
        _, base, limit, _ = self.uc.reg_read(self._X.UC_X86_REG_IDTR)
        return base, limit

    def read(self, address: int, size: int) -> bytes:
        """Read guest-physical memory; outside the machine is a caller error."""
        self._check_range(address, size)
        if self._shared is not None:  # with a translator, unicorn's mem_read would take it as virtual
            return bytes(self._shared[address:address + size])
        return bytes(self.uc.mem_read(address, size))

    def write(self, address: int, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise VmkitError(f"write() takes bytes, not {type(data).__name__}")
        self._check_range(address, len(data))
        if self._shared is not None:
            self._shared[address:address + len(data)] = bytes(data)
            return
        self.uc.mem_write(address, bytes(data))

    def read_u64(self, address: int) -> int:
        return struct.unpack("<Q", self.read(address, 8))[0]

    def write_u64(self, address: int, value: int) -> None:
        expect_int(value, "value", minimum=None)
        self.write(address, struct.pack("<Q", value & _END))

    def _check_range(self, address: int, size: int) -> None:
        expect_int(address, "address", minimum=None)
        expect_int(size, "size")
        if address < 0 or address + size > self.memory_size:
            raise VmkitError(
                f"{address:#x}..{address + size:#x} is outside this machine's "
                f"memory (0..{self.memory_size:#x})"
            )

    def disassemble_at(self, address: int, count: int = 1) -> list[Instruction]:
        expect_int(count, "count", minimum=1)
        end = min(address + 15 * count, self.memory_size)
        return disassemble(self.read(address, end - address), address, count)

    # -- running ----------------------------------------------------------------

    def _count(self) -> int:
        return struct.unpack("<Q", ctypes.string_at(self._base + self._offset, 8))[0]

    def run(self, budget: int) -> Stop:
        """Run at most ``budget`` instructions; return why and where it stopped."""
        from unicorn import UcError

        expect_int(budget, "budget", minimum=None)
        if budget <= 0:
            return Stop(StopKind.BUDGET, 0, self.rip, self.cpl)
        self._stop = None
        try:
            self.uc.emu_start(self.rip, _END, count=budget)
        except UcError:
            if self._stop is None:
                raise
        if self._stop is not None:
            stop = self._stop
            for name, value in self._undo:  # a watched instruction ran with its block: undo it
                self.set_reg(name, value)
            self._undo = []
            self.set_reg("rip", stop.rip)
            return stop
        retired = self._count()
        if retired > budget:
            return Stop(StopKind.BUDGET, budget, self.rip, self.cpl)
        # unicorn returns early without a hook only on hlt (at CPL 0; at CPL 3
        # hlt raises #GP). RIP is left after the hlt; report the hlt itself.
        rip = self.rip - 1
        self.set_reg("rip", rip)
        return Stop(StopKind.HLT, retired - 1, rip, self.cpl, length=1, mnemonic="hlt")

    def _record(self, stop: Stop) -> None:
        if self._stop is None:
            self._stop = stop
        self.uc.emu_stop()

    def _on_interrupt(self, uc, intno, _data):
        rip = self.rip
        before = self.read(rip - 2, 2) if rip >= 2 else b""
        counted = self._count()
        if before == bytes([0xCD, intno]) or (intno == 3 and before[-1:] == b"\xcc"):
            length = 2 if before[0] == 0xCD else 1
            self._record(Stop(StopKind.INTERRUPT, counted, rip - length, self.cpl,
                              length=length, vector=intno, software=True, mnemonic="int"))
        else:  # a fault: RIP is the faulting instruction, which did not retire
            self._record(Stop(StopKind.INTERRUPT, counted - 1, rip, self.cpl, vector=intno))

    def _io_allowed(self, port: int, size: int) -> bool:
        """SDM Vol. 1 §19.5: CPL <= IOPL, or every port's bit clear in the TSS I/O bitmap.

        unicorn's IN/OUT hooks run before this check, so vmkit makes it.
        """
        if self.cpl <= (self.reg("rflags") >> 12) & 3:
            return True
        _, base, limit, _ = self.uc.reg_read(self._X.UC_X86_REG_TR)
        if limit < 0x67 or base + 0x68 > self.memory_size:
            return False
        iomap = struct.unpack("<H", self.read(base + TSS_IOMAP_BASE, 2))[0]
        first, last = iomap + port // 8, iomap + (port + size - 1) // 8
        if last + 1 > limit:  # the CPU reads two bytes; outside the TSS means #GP
            return False
        bits = int.from_bytes(self.read(base + first, last - first + 1), "little")
        mask = ((1 << size) - 1) << (port % 8)
        return not bits & mask

    def _io(self, port, size, direction, value):
        # inside instruction hooks RIP is the hooked instruction's own address
        rip = self.rip
        if not self._io_allowed(port, size):
            self._record(Stop(StopKind.INTERRUPT, self._count() - 1, rip, self.cpl, vector=int(Vector.GP)))
            return
        insn = self.disassemble_at(rip, 1)[0]
        self._record(Stop(StopKind.IO, self._count() - 1, rip, self.cpl,
                          length=insn.size, port=port, size=size, direction=direction,
                          value=value, mnemonic=insn.mnemonic))

    def _on_out(self, uc, port, size, value, _data):
        self._io(port, size, "out", value)

    def _on_in(self, uc, port, size, _data):
        self._io(port, size, "in", None)
        return 0  # the handler writes the real value into RAX before resuming

    def _on_cpuid(self, uc, _data):
        self._record(Stop(StopKind.CPUID, self._count() - 1, self.rip, self.cpl,
                          length=2, mnemonic="cpuid"))
        return 1  # skip: the handler writes RAX..RDX

    # -- paging: an outside translator is the MMU (chapter 2) --------------------------

    def share_memory(self, buffer: bytearray) -> None:
        """Back guest memory with ``buffer`` (the same bytes a page walker reads), keeping its contents."""
        import ctypes as c

        from unicorn import UC_PROT_ALL

        if len(buffer) < self.memory_size:
            raise VmkitError(f"the buffer needs at least {self.memory_size:#x} bytes, not {len(buffer):#x}")
        buffer[:self.memory_size] = self.uc.mem_read(0, self.memory_size)
        self.uc.mem_unmap(0, self.memory_size)
        self._shared = (c.c_char * self.memory_size).from_buffer(buffer)
        self.uc.mem_map_ptr(0, self.memory_size, UC_PROT_ALL, c.addressof(self._shared))

    def set_translator(self, translate) -> None:
        """Make ``translate(address, access, user)`` the MMU: unicorn asks it for each page.

        It returns ``(physical_page, writable, executable)``, or ``("#PF", error_code)``, or
        ``("EPT", gpa)``; a fault stops the slice before the access, as the CPU would.
        """
        from unicorn import UC_HOOK_TLB_FILL, UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE, UC_TLB_VIRTUAL

        kinds = {16: "read", 17: "write", 18: "fetch"}  # UC_MEM_READ, UC_MEM_WRITE, UC_MEM_FETCH

        def fill(uc, address, access, entry, _data):
            if address >> 12 == _END >> 12:
                # unicorn translates emu_start's "until" address (the last page) to watch for
                # it; no guest code lives there: answer without walking
                entry.paddr, entry.perms = 0, UC_PROT_READ | UC_PROT_EXEC
                return True
            kind = kinds.get(access, "read")
            answer = translate(address, kind, self.cpl == 3)
            if answer[0] == "#PF":
                self._record(Stop(StopKind.INTERRUPT, self._count() - 1, self.rip, self.cpl,
                                  vector=int(Vector.PF), address=address, access=kind,
                                  error_code=answer[1]))
                return False
            if answer[0] == "#GP":  # a non-canonical address
                self._record(Stop(StopKind.INTERRUPT, self._count() - 1, self.rip, self.cpl,
                                  vector=int(Vector.GP)))
                return False
            if answer[0] == "EPT":
                self._record(Stop(StopKind.EPT_VIOLATION, self._count() - 1, self.rip, self.cpl,
                                  address=answer[1], access=kind))
                return False
            page, writable, executable = answer
            entry.paddr = page
            entry.perms = UC_PROT_READ | (UC_PROT_WRITE if writable else 0) | (UC_PROT_EXEC if executable else 0)
            return True

        self.uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        self._translator = fill  # keep the callback alive
        self.uc.hook_add(UC_HOOK_TLB_FILL, fill)

    def watch(self, address: int, kind: StopKind, mnemonic: str, *, register: int | None = None,
              direction: str | None = None) -> None:
        """Stop before the instruction at ``address`` whenever ``self.trapping`` holds ``kind``.

        unicorn cannot hook MOV to CR3, RDMSR or WRMSR (its Python binding, for
        the MSRs), so the guest kernel's own ones are watched: each starts a
        translation block, a block hook sees it, and since the block runs to
        its end before unicorn stops, run() undoes the instruction (it ends its
        block) and reports the stop at its address, as a VM exit would be.
        """
        from unicorn import UC_HOOK_BLOCK

        insn = self.disassemble_at(address, 1)[0]

        def before(uc, _address, _size, _data):
            if kind not in self.trapping or self._stop is not None:
                return
            self._undo = [(name, self.reg(name)) for name in ("rip", "rax", "rdx", "cr3")]
            self._record(Stop(kind, self._count(), address, self.cpl, length=insn.size,
                              mnemonic=mnemonic, register=register, direction=direction))

        self.uc.hook_add(UC_HOOK_BLOCK, before, None, address, address)

    def _hook_rdtsc(self) -> None:
        # unicorn's RDTSC returns the host's clock. The C API can hook it, its
        # Python binding does not expose it: register through the same path.
        import ctypes as c

        from unicorn import UC_HOOK_INSN
        from unicorn.unicorn_py3.arch import intel
        from unicorn.unicorn_py3.unicorn import uccallback

        @uccallback(self.uc, intel.HOOK_INSN_CPUID_CFUNC)
        def on_rdtsc(uc, _key):
            self._record(Stop(StopKind.RDTSC, self._count() - 1, self.rip, self.cpl,
                              length=2, mnemonic="rdtsc"))
            return 1

        self._rdtsc_callback = on_rdtsc  # keep it alive as long as the hook
        self.uc._Uc__do_hook_add(UC_HOOK_INSN, on_rdtsc, 1, 0, c.c_int(self._X.UC_X86_INS_RDTSC))

    def _on_syscall(self, uc, _data):
        # unicorn hands SYSCALL/SYSENTER to a hook instead of executing them. Our
        # guest kernel enables neither: SYSCALL with EFER.SCE = 0 is #UD, SYSENTER
        # with IA32_SYSENTER_CS = 0 is #GP(0) (SDM Vol. 2B).
        rip = self.rip
        insn = self.disassemble_at(rip, 1)
        if not insn or insn[0].mnemonic not in ("syscall", "sysenter"):
            rip -= 2
        mnemonic = self.disassemble_at(rip, 1)[0].mnemonic
        vector = Vector.UD if mnemonic == "syscall" else Vector.GP
        self._record(Stop(StopKind.INTERRUPT, self._count() - 1, rip, self.cpl, vector=int(vector),
                          mnemonic=mnemonic))

    def _on_invalid(self, uc, _data):
        rip = self.rip
        try:
            insn = self.disassemble_at(rip, 1)
        except VmkitError:
            insn = []
        mnemonic = insn[0].mnemonic if insn else "(undecodable)"
        size = insn[0].size if insn else 0
        if mnemonic == "int":  # unicorn reports "int 6" as an invalid opcode
            self._record(Stop(StopKind.INTERRUPT, self._count(), rip, self.cpl, length=size,
                              vector=int(insn[0].op_str, 0), software=True, mnemonic="int"))
            return True
        self._record(Stop(StopKind.INVALID, self._count() - 1, rip, self.cpl,
                          length=size, vector=int(Vector.UD), mnemonic=mnemonic))
        return True

    def _on_unmapped(self, uc, access, address, size, value, _data):
        from unicorn import UC_MEM_FETCH_UNMAPPED, UC_MEM_WRITE_UNMAPPED

        kind = {UC_MEM_FETCH_UNMAPPED: "fetch", UC_MEM_WRITE_UNMAPPED: "write"}.get(access, "read")
        rip = address if kind == "fetch" else self.rip
        self._record(Stop(StopKind.MEMORY, max(self._count() - 1, 0), rip, self.cpl,
                          address=address, access=kind, size=size))
        return False

    # -- interrupt delivery (SDM Vol. 3A §6.14) -------------------------------------

    def deliver(self, vector: int, *, error_code: int | None = None, software: bool = False,
                external: bool = False) -> Delivery:
        """Deliver an interrupt or exception through the guest's IDT, as the CPU does.

        The return address pushed is the current RIP: for a fault, the faulting
        instruction; for int n or an external interrupt, the next one.
        """
        expect_int(vector, "vector", maximum=255)
        from_cpl = self.cpl
        chain = [vector]
        if error_code is None and vector in ERROR_CODE_VECTORS and not software and not external:
            error_code = 0
        while True:
            result = self._try_deliver(vector, error_code, software, external)
            if isinstance(result, Delivery):
                return Delivery(tuple(chain), False, from_cpl, result.to_cpl,
                                result.handler, result.stack, result.frame)
            fault, code = result
            if vector == Vector.DF and not software:
                return Delivery(tuple(chain), True, from_cpl)
            # int n is not an exception: a fault while delivering it is handled
            # serially, like a benign event (SDM Vol. 3A §6.15, Table 6-5)
            first_bad = not software and (vector in CONTRIBUTORY or vector == Vector.PF)
            second_bad = fault in CONTRIBUTORY or (vector == Vector.PF and fault == Vector.PF)
            if first_bad and second_bad:
                vector, error_code = int(Vector.DF), 0   # Table 6-5
            else:
                vector, error_code = fault, code          # handled serially
            chain.append(vector)
            software = external = False

    def _try_deliver(self, vector, error_code, software, external):
        idt_base, idt_limit = self.idtr()
        # error code for a descriptor fault: index, IDT bit 1, EXT bit 0
        code = vector << 3 | 2 | (0 if software else 1 if external else 0)
        if vector * 16 + 15 > idt_limit or idt_base + vector * 16 + 16 > self.memory_size:
            return (int(Vector.GP), code)
        gate = Gate.decode(self.read(idt_base + vector * 16, 16))
        if gate.type not in (GateType.INTERRUPT, GateType.TRAP):
            return (int(Vector.GP), code)
        cpl = self.cpl
        if software and gate.dpl < cpl:
            return (int(Vector.GP), code)
        if not gate.present:
            return (int(Vector.NP), code)
        target_dpl = self._code_segment_dpl(gate.selector)
        if target_dpl is None:
            return (int(Vector.GP), gate.selector & ~3)
        rsp = self.reg("rsp")
        if target_dpl < cpl:
            _, tr_base, _, _ = self.uc.reg_read(self._X.UC_X86_REG_TR)
            if tr_base + TSS_RSP0 + 8 > self.memory_size:
                return (int(Vector.TS), 0)
            new_rsp = struct.unpack("<Q", self.read(tr_base + TSS_RSP0, 8))[0]
        else:
            new_rsp = rsp
        new_rsp &= ~0xF  # 64-bit mode aligns the new stack (SDM 6.14.2)
        frame = [self.reg("ss"), rsp, self.reg("rflags"), self.reg("cs"), self.rip]
        if error_code is not None:
            frame.append(error_code)
        top = new_rsp - 8 * len(frame)
        if top < 0 or new_rsp > self.memory_size:
            return (int(Vector.SS), 0)
        # the frame is pushed SS first, so memory holds it in reverse order
        self.write(top, b"".join(struct.pack("<Q", v & _END) for v in reversed(frame)))
        rflags = self.reg("rflags") & ~(RFLAGS.TF | RFLAGS.NT | RFLAGS.RF | RFLAGS.VM)
        if gate.type == GateType.INTERRUPT:
            rflags &= ~RFLAGS.IF
        if target_dpl < cpl:
            self._enter_ring0()
        self.set_reg("rsp", top)
        self.set_reg("rflags", rflags)
        self.set_reg("rip", gate.offset)
        return Delivery((vector,), False, cpl, target_dpl, gate.offset, top, tuple(frame))

    def _code_segment_dpl(self, selector: int) -> int | None:
        _, gdt_base, gdt_limit, _ = self.uc.reg_read(self._X.UC_X86_REG_GDTR)
        index = selector & ~7
        if index == 0 or index + 7 > gdt_limit:
            return None
        desc = struct.unpack("<Q", self.read(gdt_base + index, 8))[0]
        present, code = desc >> 47 & 1, desc >> 43 & 1
        if not (present and code):
            return None
        return desc >> 45 & 3

    def _enter_ring0(self) -> None:
        X = self._X
        system = (X.UC_X86_REG_GDTR, X.UC_X86_REG_IDTR, X.UC_X86_REG_TR,
                  X.UC_X86_REG_CR0, X.UC_X86_REG_CR2, X.UC_X86_REG_CR3, X.UC_X86_REG_CR4)
        keep = [self.uc.reg_read(self._regid[name]) for name in GPRS]
        state = [self.uc.reg_read(r) for r in system]
        self.uc.context_restore(self._ring0)
        if self._ring0_system is None:
            self._ring0_system = [self.uc.reg_read(r) for r in system]
        # rewrite only what the guest changed since boot: control-register
        # writes flush unicorn's TLB
        for reg, value, boot in zip(system, state, self._ring0_system):
            if value != boot:
                self.uc.reg_write(reg, value)
        for name, value in zip(GPRS, keep):
            self.uc.reg_write(self._regid[name], value)
