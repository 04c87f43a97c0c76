"""The exercise pattern every chapter uses (OSTEP's seed-and-solve interface).

An exercise is generated from a seed: ``prompt()`` states it in French,
``solution()`` gives the answer, ``check(answer)`` returns a :class:`Feedback`
that says, in French, right, or wrong and why, with a hint. Subclasses define
``_generate(rng)`` (draw the parameters), ``prompt``, ``solution`` and
``_explain(answer)`` (why a wrong answer is wrong).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Feedback:
    """The verdict on one answer, in French."""

    correct: bool
    message: str
    hint: str = ""

    def __str__(self) -> str:
        if self.correct:
            return f"Juste ! {self.message}".rstrip()
        text = f"Pas tout à fait. {self.message}".rstrip()
        if self.hint:
            text += f"\nIndice : {self.hint}"
        return text

    def _repr_pretty_(self, printer, cycle) -> None:  # IPython display
        printer.text(str(self))


class Exercise:
    """A seeded exercise: same seed, same question, same answer."""

    hint: str = ""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._generate(random.Random(seed))

    def _generate(self, rng: random.Random) -> None:
        raise NotImplementedError

    def prompt(self) -> str:
        raise NotImplementedError

    def solution(self) -> Any:
        raise NotImplementedError

    def _same(self, answer: Any) -> bool:
        return answer == self.solution()

    def _explain(self, answer: Any) -> str:
        return f"La réponse attendue est {self.solution()!r}, pas {answer!r}."

    def check(self, answer: Any) -> Feedback:
        """Compare an answer with the solution and explain, in French."""
        if self._same(answer):
            return Feedback(True, "")
        return Feedback(False, self._explain(answer), self.hint)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"
