"""Tests for vmkit.cpu.machine: the guest kernel running natively on one CPU (scenario tests)."""

import pytest

from vmkit.core import VmkitError
from vmkit.cpu import programs
from vmkit.cpu.kernel import GuestKernel, Program
from vmkit.cpu.machine import Machine

IDLE = "kernel: all done, halt\n"


def two_workers() -> Machine:
    """The storyline: workers A and B (3 rounds each) under a 500-instruction timer."""
    kernel = GuestKernel((programs.worker("A", "A", rounds=3), programs.worker("B", "B", rounds=3)),
                         timer_period=500)
    return Machine(kernel)


def test_two_workers_interleave_their_letters():
    """Under a 500-instruction timer, workers A and B alternate on the console, then the kernel halts."""
    machine = two_workers()

    machine.run(200_000)

    console = machine.console
    letters = console.removesuffix(IDLE)
    assert console.endswith(IDLE)
    assert sorted(letters) == list("AAABBB")
    assert "AB" in letters or "BA" in letters
    assert letters not in ("AAABBB", "BBBAAA")


def test_two_workers_all_exit_zero():
    """Both workers exit with status 0."""
    machine = two_workers()

    machine.run(200_000)

    assert [(p.pid, p.state, p.status) for p in machine.guest.processes()] == [
        (1, "exited", 0), (2, "exited", 0)]


def test_machine_halts_when_all_done():
    """When every program is done the kernel executes cli; hlt and the machine is halted."""
    machine = two_workers()

    machine.run(200_000)

    assert machine.state == "halted"
    assert machine.events[-1].kind == "halt"


def test_halted_machine_does_not_advance():
    """Running a halted machine again does not advance its clock."""
    machine = two_workers().run(200_000)
    now = machine.now

    machine.run(10_000)

    assert machine.now == now


def test_timer_interrupts_are_recorded():
    """The PIT is programmed with the kernel's period, and timer interrupts are recorded as events."""
    machine = two_workers()

    machine.run(200_000)

    texts = [e.text for e in machine.events]
    assert "PIT period = 500 instructions" in texts
    assert any(e.kind == "interrupt" and e.text.startswith("timer interrupt") for e in machine.events)


@pytest.mark.parametrize("instruction", list(programs.PRIVILEGED))
def test_privileged_instruction_at_ring3_is_killed_by_gp(instruction):
    """A privileged instruction at ring 3 raises #GP: the program is killed, the next one still finishes."""
    machine = Machine(GuestKernel((programs.privileged(instruction), programs.hello())))

    machine.run(100_000)

    first, second = machine.guest.processes()
    assert (first.state, first.status) == ("killed", 13)
    assert (second.state, second.status) == ("exited", 0)
    assert "kernel: #GP in pid 1, killed\n" in machine.console
    assert "Bonjour depuis l'anneau 3 !\n" in machine.console
    assert machine.state == "halted"


def test_getpid_prints_each_pid():
    """Each getpid program prints its own pid."""
    machine = Machine(GuestKernel((programs.getpid(), programs.getpid())))

    machine.run(100_000)

    assert machine.console == "pid = 1\npid = 2\n" + IDLE


def test_hello_prints_its_line():
    """hello prints its line through write(2) and exits with 0."""
    machine = Machine(GuestKernel((programs.hello(text="salut"),)))

    machine.run(100_000)

    assert machine.console == "salut\n" + IDLE
    assert machine.guest.processes()[0].status == 0


def test_wild_pointer_is_killed_by_pf():
    """A read outside memory at ring 3 raises #PF: the program is killed with status 14."""
    machine = Machine(GuestKernel((programs.wild_pointer(0x4000_0000),)))

    machine.run(100_000)

    process = machine.guest.processes()[0]
    assert (process.state, process.status) == ("killed", 14)
    assert "kernel: #PF in pid 1, killed\n" in machine.console


def test_wild_pointer_sets_cr2():
    """The #PF delivered for a wild pointer leaves the faulting address in CR2."""
    machine = Machine(GuestKernel((programs.wild_pointer(0x4000_0000),)))

    machine.run(100_000)

    assert machine.vcpu.reg("cr2") == 0x4000_0000


def test_vmxon_on_bare_metal_is_killed_by_ud():
    """vmxon on bare metal (no VMX) raises #UD: the program is killed with status 6."""
    machine = Machine(GuestKernel((programs.vmx_probe("vmxon"),)))

    machine.run(100_000)

    process = machine.guest.processes()[0]
    assert (process.state, process.status) == ("killed", 6)
    assert "kernel: #UD in pid 1, killed\n" in machine.console


def test_cpuid_on_bare_metal_reports_no_hypervisor():
    """On bare metal CPUID.1:ECX bit 31 is clear, so the probe says there is no hypervisor."""
    machine = Machine(GuestKernel((programs.cpuid_probe(),)))

    machine.run(100_000)

    assert machine.console == "no hypervisor\n" + IDLE
    assert any(e.kind == "cpuid" for e in machine.events)


def test_timer_preempts_a_spinner():
    """A spinner never yields, yet the worker next to it finishes: the timer takes the CPU back."""
    kernel = GuestKernel((programs.spinner(), programs.worker("W", "W", rounds=3)), timer_period=500)
    machine = Machine(kernel)

    machine.run(50_000)

    spinner, worker = machine.guest.processes()
    assert machine.console == "WWW"
    assert (worker.state, worker.status) == ("exited", 0)
    assert spinner.state == "runnable"
    assert machine.state == "running"


def test_broken_idt_triple_faults():
    """With the broken_idt bug the first interrupt escalates to a triple fault and the machine stops."""
    machine = Machine(GuestKernel((programs.hello(),), bug="broken_idt"))

    machine.run(100_000)

    assert machine.state == "triple fault"
    assert machine.events[-1].kind == "triple fault"
    assert "#GP -> #DF -> triple fault" in machine.events[-1].text


def test_runs_are_deterministic():
    """Two machines built from scratch record the same events, console and clock."""
    first = two_workers().run(200_000)

    second = two_workers().run(200_000)

    assert first.events == second.events
    assert first.console == second.console
    assert first.now == second.now


def test_run_is_resumable_in_chunks():
    """Running in many short chunks gives the same console and events as one long run."""
    whole = two_workers().run(200_000)
    chunked = two_workers()

    for _ in range(400):
        chunked.run(500)

    assert chunked.console == whole.console
    assert chunked.events == whole.events


def test_run_advances_at_most_the_budget():
    """run(n) on a running machine advances the clock by at most n instructions."""
    machine = Machine(GuestKernel((programs.spinner(),), timer_period=500))

    machine.run(1234)

    assert machine.now == 1234


def test_step_returns_one_step_per_instruction():
    """step(n) executes n instructions and returns n Steps with the time and the disassembled text."""
    machine = Machine(GuestKernel((programs.hello(),)))
    entry = machine.guest.image.entry

    steps = machine.step(5)

    assert len(steps) == 5
    assert [s.time for s in steps] == [1, 2, 3, 4, 5]
    assert steps[0].rip == entry
    assert steps[0].instruction.startswith("lidt")
    assert [s.instruction.split()[0] for s in steps[1:]] == ["mov", "ltr", "mov", "jmp"]
    assert all(s.cpl == 0 for s in steps)


def test_step_reaches_ring3():
    """Stepping through boot reaches the first program at ring 3, at its base address."""
    machine = Machine(GuestKernel((programs.hello(),)))

    steps = machine.step(200)

    user = [s for s in steps if s.cpl == 3]
    assert user[0].rip == machine.guest.image.program_base(0)


def test_spans_cover_time_without_gaps():
    """spans() tile [0, now]: they start at 0, end at now, and each starts where the previous ended."""
    machine = two_workers().run(200_000)

    spans = machine.spans()

    assert spans[0].start == 0
    assert spans[-1].end == machine.now
    assert all(a.end == b.start for a, b in zip(spans, spans[1:]))
    assert all(s.length > 0 for s in spans)


def test_spans_give_user_time_to_each_pid():
    """Both workers held the CPU for some time, and so did the kernel."""
    machine = two_workers().run(200_000)

    time = {}
    for span in machine.spans():
        time[span.holder] = time.get(span.holder, 0) + span.length

    assert time["pid 1"] > 0
    assert time["pid 2"] > 0
    assert time["kernel"] > 0


def test_run_rejects_negative_budget():
    """run(-1) is a caller error."""
    machine = Machine(GuestKernel((programs.hello(),)))

    with pytest.raises(VmkitError, match=">= 0"):
        machine.run(-1)


def _run_one(source: str) -> Machine:
    return Machine(GuestKernel((Program("p", source + "\n    mov rax, 60\n    int 0x80"),))).run(20_000)


@pytest.mark.parametrize("vector", [0, 6, 8, 13, 14, 32])
def test_int_n_through_a_dpl0_gate_from_ring3_is_a_gp(vector):
    """int n to a DPL-0 gate from ring 3 is #GP, handled serially: never #DF nor a triple fault."""
    machine = _run_one(f"int {vector}")

    (process,) = machine.guest.processes()
    assert (process.state, process.status) == ("killed", 13)
    assert machine.state == "halted"


@pytest.mark.parametrize(("instruction", "status"), [("syscall", 6), ("sysenter", 13), ("rdrand rax", 6),
                                                      ("rdseed rax", 6)])
def test_instructions_the_kernel_does_not_enable_fault(instruction, status):
    """SYSCALL (EFER.SCE = 0) is #UD, SYSENTER (no SYSENTER_CS) is #GP; RDRAND/RDSEED are absent: #UD."""
    (process,) = _run_one(instruction).guest.processes()

    assert (process.state, process.status) == ("killed", status)


def test_rdtsc_reads_simulated_time():
    """RDTSC answers the machine's simulated time, so two runs print the same bytes."""
    source = ("rdtsc\n    mov dword ptr [buf], eax\n    mov rax, 1\n    lea rdi, [buf]\n    mov rsi, 4\n"
              "    int 0x80\n    mov rax, 60\n    int 0x80\nbuf: .quad 0")
    consoles = [bytes(Machine(GuestKernel((Program("p", source),))).run(20_000).guest.devices.console)
                for _ in range(2)]

    assert consoles[0] == consoles[1]
    assert 0 < int.from_bytes(consoles[0][:4], "little") < 20_000


def _sleepy() -> Machine:
    kernel = GuestKernel((programs.sleeper("s", "s", ticks=3, rounds=3), programs.worker("W", "W", rounds=2),
                          programs.spinner()), timer_period=1_500)
    return Machine(kernel)


@pytest.mark.parametrize("chunk", [1, 7, 100, 4_999])
def test_many_small_runs_equal_one_big_run(chunk):
    """Any split of run() gives the same events, console and spans as one run of the same length."""
    total = 30_000
    whole = _sleepy().run(total)
    split = _sleepy()
    for _ in range(total // chunk):
        split.run(chunk)
    split.run(total - chunk * (total // chunk))

    assert (split.now, split.events, split.console) == (whole.now, whole.events, whole.console)
    assert split.spans() == whole.spans()


def test_run_never_passes_its_horizon_while_idle():
    """A kernel idling until its next tick does not carry the machine past the run's end."""
    machine = Machine(GuestKernel((programs.sleeper("s", "s", ticks=3, rounds=3),), timer_period=5_000))

    machine.run(500)

    assert machine.now == 500


def test_step_refuses_a_negative_count():
    """step(-1) is a caller mistake, as run(-1) is."""
    with pytest.raises(VmkitError):
        Machine(GuestKernel((programs.hello(),))).step(-1)


def test_printed_text_keeps_quotes_backslashes_newlines_and_accents():
    """hello(), worker() and privileged() print their text byte for byte, in UTF-8."""
    kernel = GuestKernel((programs.hello(text='a\nb "q" \\ é'), programs.worker("W", "é", rounds=1),
                          programs.privileged("cli")))

    console = Machine(kernel).run(200_000).console

    assert console.startswith('a\nb "q" \\ é\né' + "try: cli...\n")
