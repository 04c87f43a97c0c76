"""The exercise pattern every chapter uses (OSTEP's seed-and-solve interface).

An exercise is generated from a seed: ``prompt()`` states it in French,
``solution()`` gives the answer, ``check(answer)`` returns a :class:`Feedback`
that says, in French, right, or wrong and why, with a hint. A wrong answer's
feedback never gives the solution away: only ``solution()`` does, and
notebooks keep it in a cell tagged ``solution``.

Subclasses define ``_generate(rng)`` (draw the parameters), ``prompt``,
``solution``, ``answer_type`` (``int`` or ``bool``) and ``_explain(answer)``
(why a well-typed wrong answer is wrong).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Feedback:
    """The verdict on one answer, in French; ``correct`` is None while there is no answer yet."""

    correct: bool | None
    message: str
    hint: str = ""

    def __str__(self) -> str:
        if self.correct:
            return f"Juste ! {self.message[:1].upper()}{self.message[1:]}".rstrip()
        opening = "À vous :" if self.correct is None else "Pas tout à fait."
        text = f"{opening} {self.message}".rstrip()
        if self.hint:
            text += f"\nIndice : {self.hint}"
        return text

    def _repr_pretty_(self, printer, cycle) -> None:  # IPython display
        printer.text(str(self))


class Exercise:
    """A seeded exercise: same seed, same question, same answer."""

    hint: str = ""
    answer_type: type = int

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._generate(random.Random(seed))

    def _generate(self, rng: random.Random) -> None:
        raise NotImplementedError

    def prompt(self) -> str:
        raise NotImplementedError

    def solution(self) -> Any:
        raise NotImplementedError

    def _explain(self, answer: Any) -> str:
        """Why a wrong answer is wrong, without giving the solution."""
        if self.answer_type is int:
            return f"{answer} est trop {'grand' if answer > self.solution() else 'petit'}."
        return "Ce n'est pas la réponse attendue."

    def _congrats(self) -> str:
        """What a right answer confirms (may explain the solution)."""
        return ""

    def _type_problem(self, answer: Any) -> str | None:
        if self.answer_type is bool and not isinstance(answer, bool):
            if isinstance(answer, str):
                return "votre réponse est une chaîne de caractères : écrivez True ou False, sans guillemets."
            return f"répondez True ou False, pas {answer!r}."
        if self.answer_type is int and (not isinstance(answer, int) or isinstance(answer, bool)):
            if isinstance(answer, str):
                return ("votre réponse est une chaîne de caractères : écrivez le nombre sans guillemets "
                        "(17 ou 0x3F8).")
            if isinstance(answer, float):
                return f"la réponse est un nombre entier, sans partie décimale, pas {answer!r}."
            return f"répondez par un nombre entier (par exemple 12 ou 0x3F8), pas {answer!r}."
        return None

    def check(self, answer: Any) -> Feedback:
        """Compare an answer with the solution and explain, in French."""
        if answer is None:
            return Feedback(None, "remplacez None par votre réponse, puis relancez cette cellule.", self.hint)
        problem = self._type_problem(answer)
        if problem:  # not yet an answer to judge
            return Feedback(None, problem, self.hint)
        if answer == self.solution():
            return Feedback(True, self._congrats())
        return Feedback(False, self._explain(answer), self.hint)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"
