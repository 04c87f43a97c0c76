"""Tests for the VT-x exercises of vmkit.cpu.exercises: seeded, checked by the model."""

import pytest

from vmkit.cpu.exercises import IOQualificationExercise, VMXErrorExercise
from vmkit.cpu.exercises import _STEPS as STEPS
from vmkit.cpu.vmx import VMX, IOQualification, VMXError

EXERCISES = (VMXErrorExercise, IOQualificationExercise)
SEEDS = range(21)


def run_on_model(steps):
    """Replay the prompt's steps on a fresh VMX; the last one's error number, 0 if it succeeds."""
    vmx = VMX()
    vmx.set_cr4_vmxe(True)
    vmx.allocate_vmcs(0x2000)
    for step in steps[:-1]:
        STEPS[step](vmx)
    try:
        STEPS[steps[-1]](vmx)
    except VMXError as err:
        return err.number
    return 0


@pytest.mark.parametrize("cls", EXERCISES)
def test_same_seed_same_prompt(cls):
    """Two exercises built from one seed ask the same question with the same answer."""
    assert cls(7).prompt() == cls(7).prompt()
    assert cls(7).solution() == cls(7).solution()


@pytest.mark.parametrize("cls", EXERCISES)
def test_seeds_vary_the_question(cls):
    """Different seeds give more than one distinct question."""
    assert len({cls(seed).prompt() for seed in SEEDS}) > 5


@pytest.mark.parametrize("cls", EXERCISES)
@pytest.mark.parametrize("seed", SEEDS)
def test_solution_passes_check(cls, seed):
    """The solution is accepted with the French congratulation."""
    exercise = cls(seed)
    feedback = exercise.check(exercise.solution())
    assert feedback.correct
    assert str(feedback).startswith("Juste !")


def test_vmx_error_wrong_answer_explained_in_french():
    """A wrong error number is rejected with its own meaning, where the CPU stands, and a hint, not the answer."""
    exercise = next(VMXErrorExercise(s) for s in SEEDS if VMXErrorExercise(s).solution() == 5)
    feedback = exercise.check(4)
    assert not feedback.correct
    assert "L'erreur 4 signifierait : VMLAUNCH avec un VMCS" in feedback.message
    assert "Juste avant la dernière instruction" in feedback.message
    assert "VMRESUME avec un VMCS qui n'est pas « launched »" not in feedback.message
    assert "Indice" in str(feedback)


def test_vmx_error_non_integer_answer_is_explained():
    """A non-integer answer asks for an integer instead of crashing."""
    feedback = VMXErrorExercise(0).check("quatre")
    assert not feedback.correct
    assert "chaîne de caractères" in feedback.message


@pytest.mark.parametrize("seed", SEEDS)
def test_vmx_error_solution_matches_model(seed):
    """The solution is what the VMX model returns when it runs the prompt's steps."""
    exercise = VMXErrorExercise(seed)
    assert exercise.solution() == run_on_model(exercise.steps)
    for i, step in enumerate(exercise.steps, start=1):
        assert f"  {i}. {step}" in exercise.prompt()


def test_vmx_error_answers_include_errors_and_successes():
    """Over the seeds, some sequences fail (several numbers) and some succeed."""
    answers = {VMXErrorExercise(seed).solution() for seed in range(60)}
    assert 0 in answers
    assert len(answers - {0}) >= 4


@pytest.mark.parametrize("seed", SEEDS)
def test_io_solution_matches_model(seed):
    """The solution is IOQualification.encode() of the drawn instruction, and decodes back."""
    exercise = IOQualificationExercise(seed)
    q = exercise.qualification
    assert exercise.solution() == q.encode()
    assert IOQualification.decode(exercise.solution()) == q
    assert f"{q.port:#x}" in exercise.prompt()


def test_io_instruction_uses_immediate_or_dx():
    """The prompt's instruction names DX exactly when the port is not an immediate."""
    for seed in SEEDS:
        exercise = IOQualificationExercise(seed)
        assert ("dx" in exercise.instruction()) != exercise.qualification.immediate


def test_io_wrong_answer_names_the_differing_bits():
    """A wrong qualification is explained field by field, in French."""
    exercise = IOQualificationExercise(0)
    wrong = exercise.solution() ^ (1 << 3)  # flip the direction bit
    feedback = exercise.check(wrong)
    assert not feedback.correct
    assert "bit 3 (direction, 1 = IN)" in feedback.message
    assert "port" not in feedback.message.split("champ erroné")[1]
    assert feedback.hint


def test_io_non_integer_answer_is_explained():
    """A non-integer answer asks for an integer."""
    feedback = IOQualificationExercise(0).check("0x3f8")
    assert feedback.correct is None and "sans guillemets" in feedback.message
