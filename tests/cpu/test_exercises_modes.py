"""Exercises and storyline of course/01_cpu/01_modes_privileges.ipynb."""

import pytest

from vmkit.cpu import programs
from vmkit.cpu.exercises import PrivilegeExercise, TimerExercise
from vmkit.cpu.kernel import GuestKernel
from vmkit.cpu.machine import Machine

PRIVILEGED = {"hlt", "cli", "mov cr3", "lidt", "out", "wrmsr"}


def _privilege(instruction: str) -> PrivilegeExercise:
    exercise = PrivilegeExercise(seed=0)
    exercise.instruction = instruction
    return exercise


def test_privilege_exercise_is_seeded():
    """The same seed asks about the same instruction."""
    assert PrivilegeExercise(seed=3).prompt() == PrivilegeExercise(seed=3).prompt()


@pytest.mark.parametrize("instruction", sorted(PrivilegeExercise.CANDIDATES))
def test_privilege_solution_matches_the_sdm(instruction):
    """The solution found by running at ring 3 is True exactly for the privileged instructions."""
    assert _privilege(instruction).solution() is (instruction in PRIVILEGED)


def test_privilege_check_explains_a_wrong_answer():
    """A wrong answer gets a French explanation and the hint; the right one is accepted."""
    exercise = _privilege("add")
    assert exercise.check(False).correct
    feedback = exercise.check(True)
    assert not feedback.correct and "permise" in feedback.message and feedback.hint


@pytest.mark.parametrize("seed", range(6))
def test_timer_solution_matches_the_formula(seed):
    """Counting timer interrupts in a run gives (N - t0) // period."""
    exercise = TimerExercise(seed=seed)
    t0 = next(e.time for e in exercise.run(50).events if e.kind == "io")
    assert exercise.solution() == (exercise.instructions - t0) // exercise.period
    assert exercise.check(exercise.solution()).correct


def test_timer_prompt_states_the_parameters():
    """The prompt gives the period, the start of the PIT and the number of instructions."""
    exercise = TimerExercise(seed=1)
    text = exercise.prompt()
    machine = exercise.run(100)
    pit = next(e.time for e in machine.events if e.kind == "io")
    assert str(exercise.period) in text and str(exercise.instructions) in text and f"instruction {pit}" in text


def test_storyline_privileged_instruction_is_killed_by_gp():
    """hlt at ring 3: #GP to the kernel's handler, the program killed with status 13."""
    machine = Machine(GuestKernel((programs.privileged("hlt"),), timer_period=500))
    steps = machine.step(200)
    hlt = next(s for s in steps if s.cpl == 3 and s.instruction == "hlt")
    assert "#GP: ring 3 -> ring 0" in hlt.event
    machine.run(20_000)
    assert "kernel: #GP in pid 1, killed" in machine.console
    assert [(p.state, p.status) for p in machine.guest.processes()] == [("killed", 13)]


def test_storyline_system_call_goes_to_ring_0_and_back():
    """int 0x80 enters ring 0 and iretq returns to ring 3, after the int."""
    steps = Machine(GuestKernel((programs.getpid(),))).step(200)
    at = next(i for i, s in enumerate(steps) if s.instruction == "int 0x80")
    back = next(i for i, s in enumerate(steps) if i > at and s.cpl == 3)
    assert steps[at].cpl == 3 and {s.cpl for s in steps[at + 1:back]} == {0}
    assert steps[back - 1].instruction == "iretq"


def test_storyline_timer_interleaves_two_workers():
    """With a 500-instruction PIT, A and B alternate and every tick is due at t0 + k * 500."""
    workers = (programs.worker("A", "A"), programs.worker("B", "B"))
    machine = Machine(GuestKernel(workers, timer_period=500)).run(20_000)
    assert machine.console.startswith("ABABABABABAB")
    ticks = [e.time for e in machine.events if e.kind == "interrupt" and e.text.startswith("timer interrupt")]
    assert all(0 <= t - (9 + k * 500) < 100 for k, t in enumerate(ticks, start=1))
