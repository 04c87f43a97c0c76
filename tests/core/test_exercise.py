"""Tests for vmkit.core.exercise: seeded exercises and their French feedback."""

import random

import pytest

from vmkit.core import Exercise, Feedback


class Sum(Exercise):
    """A toy exercise: add two numbers drawn from the seed."""

    hint: str = "Additionnez les deux nombres."

    def _generate(self, rng: random.Random) -> None:
        self.a, self.b = rng.randrange(1000), rng.randrange(1000)

    def prompt(self) -> str:
        return f"Combien font {self.a} + {self.b} ?"

    def solution(self) -> int:
        return self.a + self.b


def test_same_seed_same_prompt():
    """Two exercises built from the same seed ask the same question."""
    first, second = Sum(seed=7), Sum(seed=7)

    assert first.prompt() == second.prompt()
    assert first.solution() == second.solution()


def test_different_seeds_differ():
    """Different seeds give different questions (over a few seeds)."""
    prompts = {Sum(seed=s).prompt() for s in range(5)}

    assert len(prompts) > 1


def test_right_answer_is_correct():
    """check(solution) returns a correct Feedback that says 'Juste'."""
    exercise = Sum(seed=3)

    feedback = exercise.check(exercise.solution())

    assert feedback.correct is True
    assert str(feedback).startswith("Juste")


def test_wrong_answer_is_incorrect_with_hint():
    """check(wrong) returns an incorrect Feedback in French, says why, keeps the answer secret, adds the hint."""
    exercise = Sum(seed=3)
    wrong = exercise.solution() + 1

    feedback = exercise.check(wrong)

    text = str(feedback)
    assert feedback.correct is False
    assert text.startswith("Pas tout à fait")
    assert "trop grand" in text
    assert str(exercise.solution()) not in text.replace(str(wrong), "")
    assert "Indice : Additionnez les deux nombres." in text


def test_none_answer_asks_for_an_answer():
    """The notebooks' placeholder None asks the student to answer instead of judging."""
    feedback = Sum(seed=3).check(None)

    assert feedback.correct is None and str(feedback).startswith("À vous : remplacez None")


def test_wrong_type_answer_says_which_type():
    """A string where an integer is expected is refused with the expected type, in French."""
    feedback = Sum(seed=3).check("12")

    assert feedback.correct is None and "sans guillemets" in feedback.message


def test_float_answer_asks_for_an_integer():
    """12.0 is refused as not an integer, without judging it wrong."""
    feedback = Sum(seed=3).check(12.0)

    assert feedback.correct is None and "sans partie décimale" in feedback.message


def test_bool_is_not_an_integer_answer():
    """True is not accepted as the integer 1."""
    feedback = Sum(seed=3).check(True)

    assert not feedback.correct and "nombre entier" in feedback.message


def test_feedback_without_hint_has_no_hint_line():
    """An incorrect Feedback without a hint does not print an 'Indice' line."""
    feedback = Feedback(False, "Non.")

    assert str(feedback) == "Pas tout à fait. Non."


def test_base_exercise_requires_generate():
    """Exercise itself cannot be instantiated: subclasses must define _generate."""
    with pytest.raises(NotImplementedError):
        Exercise(seed=0)


def test_repr_shows_class_and_seed():
    """repr names the exercise class and its seed."""
    assert repr(Sum(seed=42)) == "Sum(seed=42)"
