"""vmkit.memory.exercises: seeded, solved by running the walkers."""

import pytest

from vmkit.memory.exercises import NativeReferencesExercise, PageFaultExercise, ReferencesExercise

SEEDS = range(25)


@pytest.mark.parametrize("seed", SEEDS)
def test_references_solution_matches_the_formula(seed):
    """The walker's count equals the native count or (n+1)(m+1)-1 with the levels really walked."""
    ex = ReferencesExercise(seed)
    n = ex.guest_levels - (ex.guest_page != 4096)
    if ex.ept_levels is None:
        assert ex.solution() == n
    else:
        m = ex.ept_levels - (ex.ept_page != 4096)
        assert ex.solution() == (n + 1) * (m + 1) - 1


@pytest.mark.parametrize("seed", SEEDS)
def test_page_fault_solution_is_right_and_checkable(seed):
    """The solution checks as right; None is not judged; a wrong number is explained bit by bit."""
    ex = PageFaultExercise(seed)

    assert ex.check(ex.solution()).correct
    assert ex.check(None).correct is None
    assert "voudrait dire" in ex.check(ex.solution() ^ 2).message


def test_page_fault_codes_for_known_cases():
    """A user write to a read-only page is P|W|U = 7; to an absent page, W|U = 6."""
    ex = PageFaultExercise(0)
    ex.scenario, ex.access_text = "lecture seule", "une écriture par un programme"
    assert ex.solution() == 7
    ex.scenario = "absent"
    assert ex.solution() == 6


def test_same_seed_same_prompt():
    """Exercises are seeded."""
    assert ReferencesExercise(3).prompt() == ReferencesExercise(3).prompt()
    assert PageFaultExercise(3).prompt() == PageFaultExercise(3).prompt()


def test_native_references_exercise_stays_on_bare_metal():
    """The first notebook's variant never asks about an EPT."""
    assert all(NativeReferencesExercise(s).ept_levels is None for s in range(20))
    assert "machine nue" in NativeReferencesExercise(0).prompt()
