"""Chapter 1 benchmarks: the price of vmkit's CPU virtualization, against raw unicorn.

(a) Throughput. The same user loop (a guest with two ``worker`` programs)
runs four ways: as bare code in one unicorn ``emu_start`` (the baseline: no
kernel, no slicing); in unicorn sliced with ``emu_start(count=N)`` (unicorn
then counts instructions with an internal hook: this isolates its cost); on
vmkit's bare ``Machine`` (guest kernel, PIT, interrupt delivery in Python); and
in a VM of vmkit's ``Hypervisor`` with several VMX-preemption timer quanta.

(b) The round trip of one VM exit: a program executes CPUID in a loop, and
CPUID always exits (SDM Vol. 3C §25.1.2). Wall time per CPUID under the
hypervisor, on the bare Machine (where CPUID also ends a slice), and in raw
unicorn with a CPUID hook (with and without stopping the emulation).

Wall-clock time is read here, and only here (vmkit itself runs on simulated time).
"""

from __future__ import annotations

import time

from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_64, Uc
from unicorn.x86_const import UC_X86_INS_CPUID, UC_X86_REG_RIP, UC_X86_REG_RSP

from bench import REPEAT, best_of
from vmkit.cpu import programs
from vmkit.cpu.asm import assemble
from vmkit.cpu.hypervisor import Hypervisor, HypervisorConfig
from vmkit.cpu.kernel import GuestKernel, Program
from vmkit.cpu.machine import Machine

WORK, ROUNDS = 50_000, 100         # per worker: loop turns per letter, letters
GUEST_TIMER = 50_000              # the guest's PIT period, in instructions
QUANTA = (1_000, 10_000, 100_000)  # VMX-preemption timer values
SLICES = (1_000, 10_000, 100_000)  # emu_start(count=N)
CPUIDS = 2_000
BASE = 0x1000
LIMIT = 10_000_000_000            # "run to completion" for vmkit runs


def _loop_source(work: int, rounds: int) -> str:
    # the workers' own loop, both programs back to back, without the write(2) calls
    return f"""
    mov r12, {2 * rounds}
round:
    mov rcx, {work}
compute:
    add rbx, rcx
    dec rcx
    jnz compute
    dec r12
    jnz round
done:
"""


def _bare_uc(code: bytes) -> Uc:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x100000)
    uc.mem_write(BASE, code)
    uc.reg_write(UC_X86_REG_RSP, 0x80000)
    return uc


def raw_loop(slice_: int | None = None):
    """The user loop in one bare Uc; with ``slice_``, run in emu_start(count=slice_) pieces."""
    code = assemble(_loop_source(WORK, ROUNDS), BASE)
    end = BASE + len(code)
    uc = _bare_uc(code)

    def run() -> int:
        if slice_ is None:
            uc.emu_start(BASE, end)
        else:
            pc = BASE
            while pc != end:
                uc.emu_start(pc, end, count=slice_)
                pc = uc.reg_read(UC_X86_REG_RIP)
        return 2 * ROUNDS * (3 * WORK + 3) + 1
    return run


def _workload() -> GuestKernel:
    workers = (programs.worker("A", "A", work=WORK, rounds=ROUNDS),
               programs.worker("B", "B", work=WORK, rounds=ROUNDS))
    return GuestKernel(workers, timer_period=GUEST_TIMER)


def machine_loop():
    machine = Machine(_workload())

    def run() -> int:
        machine.run(LIMIT)
        assert machine.state == "halted", machine.state
        return machine.now
    return run


def _guest_time(hv: Hypervisor) -> int:
    return sum(s.length for s in hv.spans() if s.holder not in ("hypervisor", "idle"))


def hypervisor_loop(quantum: int):
    hv = Hypervisor(HypervisorConfig(preemption_timer=quantum))
    hv.create_vm("vm0", _workload())

    def run() -> int:
        hv.run(LIMIT)
        assert hv.vms[0].state == "halted", hv.vms[0].state
        return _guest_time(hv)
    return run


def _cpuid_program() -> Program:
    return Program("cpuid-loop", f"""
    mov r12, {CPUIDS}
again:
    xor eax, eax
    cpuid
    dec r12
    jnz again
    mov rax, 60
    xor edi, edi
    int 0x80
""")


def cpuid_hypervisor():
    hv = Hypervisor(HypervisorConfig(preemption_timer=1_000_000))
    vm = hv.create_vm("vm0", GuestKernel((_cpuid_program(),), timer_period=0xFFFF))

    def run() -> int:
        hv.run(LIMIT)
        assert vm.state == "halted", vm.state
        return sum(1 for e in hv.exits if e.reason.name == "CPUID")
    return run


def cpuid_machine():
    machine = Machine(GuestKernel((_cpuid_program(),), timer_period=0xFFFF))

    def run() -> int:
        machine.run(LIMIT)
        assert machine.state == "halted", machine.state
        return sum(1 for e in machine.events if e.kind == "cpuid")
    return run


def cpuid_raw(stop: bool):
    """The CPUID loop in a bare Uc with a CPUID hook; ``stop``: emu_stop and restart each time."""
    code = assemble(f"    mov r12, {CPUIDS}\nagain:\n    xor eax, eax\n    cpuid\n    dec r12\n    jnz again\n", BASE)
    end = BASE + len(code)
    uc = _bare_uc(code)
    seen = []

    def on_cpuid(uc, _data):
        seen.append(1)
        if stop:
            uc.reg_write(UC_X86_REG_RIP, uc.reg_read(UC_X86_REG_RIP) + 2)
            uc.emu_stop()
        return 1  # skip the instruction: the "handler" answered

    uc.hook_add(UC_HOOK_INSN, on_cpuid, None, 1, 0, UC_X86_INS_CPUID)

    def run() -> int:
        pc = BASE
        while pc != end:
            uc.emu_start(pc, end)
            pc = uc.reg_read(UC_X86_REG_RIP)
        return len(seen)
    return run


def _row(name: str, seconds: float, count: int, raw: float | None, sliced: float | None = None) -> str:
    rate = count / seconds
    ratio = f"{rate / raw:>9.4f}" if raw else f"{'1':>9}"
    floor = f"{rate / sliced:>11.2f}" if sliced else f"{'':>11}"
    return f"{name:<44} {count:>10,} {seconds * 1e3:>10.1f} {rate / 1e6:>10.2f} {ratio} {floor}"


def throughput() -> None:
    print(f"(a) throughput: 2 workers x {ROUNDS} rounds x {WORK} turns; guest PIT every {GUEST_TIMER} instructions;"
          f" best of {REPEAT}")
    print("    'vs sliced' compares with raw unicorn counting instructions in slices of the same size:")
    print("    the price of determinism (unicorn's per-instruction count hook) is in that baseline.")
    print(f"{'run':<44} {'instr':>10} {'ms':>10} {'Minstr/s':>10} {'vs raw':>9} {'vs sliced':>11}")
    seconds, count = best_of(lambda: raw_loop())
    raw = count / seconds
    print(_row("raw unicorn, one emu_start", seconds, count, None))
    sliced = {}
    for n in SLICES:
        seconds, count = best_of(lambda n=n: raw_loop(n))
        sliced[n] = count / seconds
        print(_row(f"raw unicorn, emu_start(count={n:,})", seconds, count, raw))
    seconds, count = best_of(machine_loop)
    print(_row("vmkit Machine (bare metal, guest kernel)", seconds, count, raw, sliced[max(SLICES)]))
    for q in QUANTA:
        seconds, count = best_of(lambda q=q: hypervisor_loop(q))
        print(_row(f"vmkit Hypervisor, preemption timer {q:,}", seconds, count, raw, sliced[q]))


def exit_cost() -> None:
    print(f"\n(b) one exit round trip: a loop of {CPUIDS:,} CPUID; best of {REPEAT}")
    print(f"{'run':<44} {'exits':>10} {'ms':>10} {'us/exit':>10} {'vs hook':>9}")
    rows = [("raw unicorn, CPUID hook (no stop)", lambda: cpuid_raw(False)),
            ("raw unicorn, CPUID hook + emu_stop/restart", lambda: cpuid_raw(True)),
            ("vmkit Machine (CPUID ends a slice)", cpuid_machine),
            ("vmkit Hypervisor (CPUID VM exit)", cpuid_hypervisor)]
    baseline = None
    for name, run in rows:
        seconds, count = best_of(run)
        per = seconds / count * 1e6
        baseline = baseline or per
        print(f"{name:<44} {count:>10,} {seconds * 1e3:>10.1f} {per:>10.2f} {per / baseline:>9.1f}")


def main() -> None:
    start = time.perf_counter()
    throughput()
    exit_cost()
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
