"""Tests for vmkit.cpu.scenarios: the storylines of course/01_cpu/03_timers_multiplexing.ipynb and its exercise."""

import pytest

from vmkit.cpu.hypervisor import Hypervisor, HypervisorConfig
from vmkit.cpu.kernel import GuestKernel
from vmkit.cpu.programs import cpuid_probe, hello
from vmkit.cpu.scenarios import IOExitExercise, single_machine, two_vms
from vmkit.cpu.trace import share
from vmkit.cpu.vmx import ExitReason, IOQualification

IDLE_TEXT = "kernel: all done, halt\n"


@pytest.fixture(scope="module")
def greedy():
    """The notebook's three greedy runs, one per timer mode."""
    return {timers: two_vms(timers=timers, greedy=True) for timers in ("single-hypervisor", "single-guest", "vt")}


# -- one timer: the conflict; two timers: VT-x ---------------------------------------


def test_single_hypervisor_timer_starves_the_guests_other_program(greedy):
    """Timer owned by the hypervisor: in vm1, B never runs behind the spinner."""
    assert greedy["single-hypervisor"].vm("vm1").console == ""


def test_single_hypervisor_timer_still_shares_the_cpu_between_vms(greedy):
    """Timer owned by the hypervisor: vm2 still gets the CPU and prints."""
    assert greedy["single-hypervisor"].vm("vm2").console != ""


def test_single_guest_timer_starves_the_other_vm(greedy):
    """Timer owned by the guest: the hypervisor never takes the CPU back, vm2 prints nothing."""
    assert greedy["single-guest"].vm("vm2").console == ""


def test_single_guest_timer_lets_guest_schedule_its_programs(greedy):
    """Timer owned by the guest: vm1's kernel preempts its spinner and B prints."""
    assert "B" in greedy["single-guest"].vm("vm1").console


def test_single_guest_vm2_never_entered(greedy):
    """Timer owned by the guest: vm2 never appears in the spans."""
    assert not [s for s in greedy["single-guest"].spans() if s.vm == "vm2"]


def test_vt_timers_let_both_vms_progress(greedy):
    """With VT-x's two timers both VMs print, and B runs in vm1 despite the spinner."""
    hv = greedy["vt"]

    assert "B" in hv.vm("vm1").console
    assert hv.vm("vm2").console != ""


def test_vt_greedy_vm_is_preempted_by_the_preemption_timer(greedy):
    """With VT-x, vm1's spinner is taken back by exit 52."""
    assert any(e.vm == "vm1" and e.reason is ExitReason.PREEMPTION_TIMER for e in greedy["vt"].exits)


def test_two_vms_non_greedy_prints_every_letter():
    """Without the spinner, every worker of both VMs prints its letter."""
    hv = two_vms()

    assert {"A", "B"} <= set(hv.vm("vm1").console)
    assert {"C", "D"} <= set(hv.vm("vm2").console)


def test_two_vms_runs_for_the_duration():
    """two_vms stops after ``duration`` instructions (the workers are not finished)."""
    hv = two_vms(duration=300_000)

    assert hv.now == 300_000


# -- determinism ----------------------------------------------------------------------


def test_two_vms_is_deterministic():
    """Two runs with the same arguments give the same exits, consoles and spans."""
    a = two_vms(greedy=True, duration=400_000)
    b = two_vms(greedy=True, duration=400_000)

    assert a.exits == b.exits
    assert [vm.console for vm in a.vms] == [vm.console for vm in b.vms]
    assert a.spans() == b.spans()


def test_two_vms_depends_on_its_timers():
    """Changing the guest's timer period changes the trace."""
    a = two_vms(period=20_000, duration=200_000)
    b = two_vms(period=10_000, duration=200_000)

    assert a.exits != b.exits


def test_two_vms_shares_sum_to_duration():
    """share() of the notebook's shares cell sums to the simulated duration."""
    hv = two_vms(duration=300_000)

    assert sum(share(hv.spans()).values()) == hv.now == 300_000


# -- bare metal --------------------------------------------------------------------------


def test_cpuid_on_bare_metal_has_no_signature():
    """On bare metal the hypervisor leaf is empty: no 'vmkitvmkitvm'."""
    machine = single_machine((cpuid_probe(),))

    assert "vmkitvmkitvm" not in machine.console
    assert machine.console.endswith(IDLE_TEXT)


def test_cpuid_in_vm_has_the_signature():
    """The same program in a VM prints the hypervisor's signature."""
    hv = Hypervisor(HypervisorConfig())
    hv.create_vm("vm", GuestKernel((cpuid_probe(),)))

    assert "vmkitvmkitvm" in hv.run(200_000).vm("vm").console


# -- the exercise ---------------------------------------------------------------------------


def com1_exits(text):
    hv = Hypervisor(HypervisorConfig())
    hv.create_vm("vm", GuestKernel((hello(text=text),)))
    hv.run(1_000_000)
    return sum(1 for e in hv.exits if e.reason is ExitReason.IO_INSTRUCTION
               and IOQualification.decode(e.qualification).port == 0x3F8)


def test_exercise_same_seed_same_prompt():
    """Two exercises of one seed ask the same question."""
    assert IOExitExercise(3).prompt() == IOExitExercise(3).prompt()


def test_exercise_seeds_vary_the_text():
    """Different seeds give different texts."""
    assert len({IOExitExercise(seed).text for seed in range(8)}) > 1


def test_exercise_prompt_quotes_the_text_in_french():
    """The prompt names the text and asks for the COM1 exits, in French."""
    ex = IOExitExercise(0)

    assert f"« {ex.text} »" in ex.prompt()
    assert "Combien de sorties IO_INSTRUCTION" in ex.prompt()


def test_exercise_solution_counts_text_newline_and_kernel_message():
    """The solution is one exit per byte: the text, its newline, the kernel's last line."""
    ex = IOExitExercise(0)

    assert ex.solution() == len(ex.text.encode()) + 1 + len(IDLE_TEXT)


def test_exercise_solution_is_the_number_of_com1_exits():
    """The solution equals the COM1 exits of a VM that prints the text."""
    ex = IOExitExercise(1)

    assert ex.solution() == com1_exits(ex.text)


def test_exercise_accepts_the_solution():
    """check() accepts the right count."""
    ex = IOExitExercise(2)

    assert ex.check(ex.solution()).correct


def test_exercise_rejects_a_wrong_count_with_explanation():
    """check() rejects a wrong count as too large, without the right one, with a hint, in French."""
    ex = IOExitExercise(2)

    feedback = ex.check(ex.solution() + 1)

    assert not feedback.correct
    assert "trop grand" in feedback.message and str(ex.solution()) not in feedback.message
    assert feedback.hint == IOExitExercise.hint


def test_exercise_rejects_a_non_integer_in_french():
    """check('12') says the answer is an integer, in French."""
    feedback = IOExitExercise(0).check("12")

    assert feedback.correct is None
    assert "sans guillemets" in feedback.message
