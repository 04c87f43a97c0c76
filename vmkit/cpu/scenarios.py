"""The scenarios of the timers notebook, ready to run, and their exercise.

Each function builds a hypervisor with the same two VMs (two programs each),
runs it and returns it, so a notebook cell, a widget and a test replay the
same storyline. Taught in course/01_cpu/03_timers_multiplexing.ipynb.
"""

from __future__ import annotations

import random

from vmkit.core import Exercise
from vmkit.cpu.hypervisor import Hypervisor, HypervisorConfig
from vmkit.cpu.kernel import GuestKernel, Program
from vmkit.cpu.machine import Machine
from vmkit.cpu.programs import hello, spinner, worker
from vmkit.cpu.vmx import ExitReason, IOQualification


def two_vms(period: int = 20_000, quantum: int = 50_000, duration: int = 600_000, *,
            timers: str = "vt", greedy: bool = False, seed: int = 0) -> Hypervisor:
    """Two VMs of two workers each; ``greedy`` replaces vm1's first worker by a spinner."""
    hv = Hypervisor(HypervisorConfig(preemption_timer=quantum, timers=timers), seed=seed)
    first = spinner("spin") if greedy else worker("A", "A", work=20_000, rounds=6)
    hv.create_vm("vm1", GuestKernel((first, worker("B", "B", work=20_000, rounds=6)), timer_period=period))
    hv.create_vm("vm2", GuestKernel((worker("C", "C", work=20_000, rounds=6),
                                     worker("D", "D", work=20_000, rounds=6)), timer_period=period))
    return hv.run(duration)


def single_machine(programs: tuple[Program, ...], period: int = 20_000, duration: int = 300_000) -> Machine:
    """The same programs on bare metal, for comparison."""
    return Machine(GuestKernel(programs, timer_period=period)).run(duration)


class IOExitExercise(Exercise):
    """How many I/O exits on COM1 does printing a message cost?"""

    hint = ("chaque octet écrit par le noyau sur le port série est une instruction OUT, "
            "et chaque OUT est une sortie de VM ; n'oubliez ni le saut de ligne ni le "
            "message final du noyau.")

    def _generate(self, rng: random.Random) -> None:
        words = ["Salut", "Bonjour", "Hello", "VMX", "Ring 3", "Coucou", "Hyperviseur"]
        self.text = " ".join(rng.sample(words, rng.randint(1, 3)))

    def prompt(self) -> str:
        return (f"Dans une VM, le programme hello écrit « {self.text} » (puis un saut de ligne) "
                f"avec l'appel système write, puis se termine ; le noyau écrit alors 'kernel: all done, halt' "
                f"et un saut de ligne. Combien de sorties IO_INSTRUCTION portent sur le port 0x3F8 ?")

    def solution(self) -> int:
        hv = Hypervisor(HypervisorConfig())
        hv.create_vm("vm", GuestKernel((hello(text=self.text),)))
        hv.run(1_000_000)
        return sum(1 for e in hv.exits if e.reason is ExitReason.IO_INSTRUCTION
                   and IOQualification.decode(e.qualification).port == 0x3F8)

    def _congrats(self) -> str:
        return "Une sortie par octet : c'est pourquoi une console émulée est lente."
