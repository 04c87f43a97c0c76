"""Seeded exercises for the CPU chapter: same seed, same question, same answer.

Each class is a ``vmkit.core.Exercise``: ``prompt()`` asks in French,
``solution()`` answers, ``check(answer)`` explains in French. Answers are
computed by the models themselves (``vmkit.cpu.vmx``), never written by hand.

VMXErrorExercise and IOQualificationExercise are taught in
course/01_cpu/02_vtx_lifecycle.ipynb (Intel SDM Vol. 3C, 30.4 and 27.2.1).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from vmkit.core import Exercise, VmkitError
from vmkit.cpu.vmx import (
    HOST_STATE_64,
    VM_INSTRUCTION_ERROR_TEXT,
    VMX,
    ExitReason,
    IOQualification,
    VMCSField,
    VMXError,
    VMXSnapshot,
)

_VMXON_REGION = 0x1000
_VMCS_REGION = 0x2000


def _write_host_state(vmx: VMX) -> None:
    for encoding, value in HOST_STATE_64.items():
        vmx.vmwrite(encoding, value)


# What the VMM may execute, as the prompt writes it. The odd ones out are there
# for their errors: 3 and 10 (the VMXON region is no VMCS), 9 (misaligned),
# 12 (0x0001 is the "high" half of a 16-bit field, which does not exist), 13.
_STEPS: dict[str, Callable[[VMX], object]] = {
    "VMXON 0x1000": lambda v: v.vmxon(_VMXON_REGION),
    "VMCLEAR 0x2000": lambda v: v.vmclear(_VMCS_REGION),
    "VMCLEAR 0x1000": lambda v: v.vmclear(_VMXON_REGION),
    "VMPTRLD 0x2000": lambda v: v.vmptrld(_VMCS_REGION),
    "VMPTRLD 0x1000": lambda v: v.vmptrld(_VMXON_REGION),
    "VMPTRLD 0x2004": lambda v: v.vmptrld(_VMCS_REGION + 4),
    "VMWRITE de l'état hôte (HOST_STATE_64)": _write_host_state,
    "VMWRITE VM_EXIT_REASON, 0": lambda v: v.vmwrite(VMCSField.VM_EXIT_REASON, 0),
    "VMWRITE 0x0001, 0": lambda v: v.vmwrite(0x0001, 0),
    "VMLAUNCH": lambda v: v.vmlaunch(),
    "VMRESUME": lambda v: v.vmresume(),
    "VM exit (CPUID)": lambda v: v.vm_exit(ExitReason.CPUID),
    "VMXOFF": lambda v: v.vmxoff(),
}


def _replay(steps: list[str]) -> tuple[VMX, VMXSnapshot, VMXError | None] | None:
    """Run ``steps`` on a fresh VMX; None unless every step but the last succeeds.

    Returns the model, its snapshot before the last step and the last step's
    error (None when it succeeded). A last step that is a caller mistake for
    the model (a VMM instruction in non-root operation) also gives None.
    """
    vmx = VMX()
    vmx.set_cr4_vmxe(True)
    vmx.allocate_vmcs(_VMCS_REGION)
    for step in steps[:-1]:
        try:
            _STEPS[step](vmx)
        except VmkitError:
            return None
    before = vmx.snapshot()
    try:
        _STEPS[steps[-1]](vmx)
    except VMXError as err:
        return vmx, before, err
    except VmkitError:
        return None
    return vmx, before, None


class VMXErrorExercise(Exercise):
    """Which VM-instruction error does the last instruction of a sequence return?"""

    hint = ("suivez pas à pas l'état du processeur (off, root, non-root), le VMCS courant "
            "et son launch state (clear ou launched) ; VM_INSTRUCTION_ERROR_TEXT donne les numéros.")

    def _generate(self, rng: random.Random) -> None:
        # Mostly errors, which are the point, each number as likely; sometimes a success.
        want_error = rng.random() < 0.85
        while True:  # draw prefixes until one can end the way we want
            steps = _draw_prefix(rng)
            failing, passing = _last_steps(steps)
            if want_error and failing:
                steps.append(rng.choice(failing[rng.choice(sorted(failing))]))
                break
            if not want_error and passing:
                steps.append(rng.choice(passing))
                break
        self.steps = tuple(steps)
        outcome = _replay(steps)
        assert outcome is not None
        _, self._before, self._error = outcome

    def prompt(self) -> str:
        lines = "\n".join(f"  {i}. {step}" for i, step in enumerate(self.steps, start=1))
        return ("Le processeur a CR4.VMXE = 1, et l'hyperviseur a préparé une région VMCS en "
                "0x2000 (identifiant de révision écrit). Il exécute, dans l'ordre :\n"
                f"{lines}\n"
                "Quel numéro d'erreur VM-instruction le CPU renvoie-t-il à la dernière "
                "instruction ? (0 si elle réussit)")

    def solution(self) -> int:
        return self._error.number if self._error else 0

    def _explain(self, answer: int) -> str:
        before = self._before
        vmcs = ("aucun VMCS courant" if before.current_vmcs is None else
                f"le VMCS courant est {before.current_vmcs:#x}, « {before.launch_state} »")
        where = f"Juste avant la dernière instruction, le processeur est en {before.state.value} ; {vmcs}."
        meaning = VM_INSTRUCTION_ERROR_TEXT.get(answer)
        said = (f"L'erreur {answer} signifierait : {meaning}." if meaning else
                "0 signifierait que la dernière instruction réussit." if answer == 0
                else f"{answer} n'est pas un numéro d'erreur VM-instruction de ce modèle.")
        return f"{said} {where}"

    def _congrats(self) -> str:
        if self._error is None:
            return "La dernière instruction réussit."
        n = self._error.number
        return f"Erreur {n} ({self._error.kind}) : {VM_INSTRUCTION_ERROR_TEXT[n]}."


def _draw_prefix(rng: random.Random) -> list[str]:
    """VMXON, then 1 to 5 more steps that all succeed, no step twice in a row."""
    steps = ["VMXON 0x1000"]
    for _ in range(rng.randint(1, 5)):
        fine = [s for s in _STEPS if s != steps[-1] and _succeeds(steps + [s])]
        steps.append(rng.choice(fine))
    return steps


def _last_steps(prefix: list[str]) -> tuple[dict[int, list[str]], list[str]]:
    """The steps that could end ``prefix``: failing ones by error number, and succeeding ones."""
    failing: dict[int, list[str]] = {}
    passing = []
    for step in _STEPS:
        outcome = _replay(prefix + [step])
        if outcome is None:
            continue
        error = outcome[2]
        if error is None:
            passing.append(step)
        elif error.kind == "VMfailValid":  # with no current VMCS, the number is stored nowhere
            failing.setdefault(error.number, []).append(step)
    return failing, passing


def _succeeds(steps: list[str]) -> bool:
    outcome = _replay(steps)
    return outcome is not None and outcome[2] is None


_IMMEDIATE_PORTS = (0x20, 0x21, 0x40, 0x43, 0x60, 0x64, 0x70, 0x71, 0x80)  # IN/OUT imm8
_DX_PORTS = (0x60, 0x64, 0x70, 0x71, 0x1F0, 0x1F7, 0x2F8, 0x378, 0x3D4, 0x3F8, 0x3FD, 0xCF8,
             0xCFC)
_ACCUMULATOR = {1: "al", 2: "ax", 4: "eax"}

# Table 27-5 field by field: what the field holds, its lowest bit, its mask.
_IO_FIELDS = (
    ("bits 2:0 (taille - 1)", 0, 0x7),
    ("bit 3 (direction, 1 = IN)", 3, 0x1),
    ("bit 4 (instruction de chaîne)", 4, 0x1),
    ("bit 5 (préfixe REP)", 5, 0x1),
    ("bit 6 (port en opérande immédiat)", 6, 0x1),
    ("bits 15:7 (réservés, à 0)", 7, 0x1FF),
    ("bits 31:16 (numéro de port)", 16, 0xFFFF),
    ("bits 63:32 (réservés, à 0)", 32, (1 << 32) - 1),
)


class IOQualificationExercise(Exercise):
    """Encode the exit qualification of an IN or OUT that caused a VM exit."""

    hint = ("construisez le nombre champ par champ : (taille - 1) | IN << 3 | immédiat << 6 "
            "| port << 16.")

    def _generate(self, rng: random.Random) -> None:
        size = rng.choice((1, 2, 4))
        direction = rng.choice(("in", "out"))
        immediate = rng.random() < 0.5
        port = rng.choice(_IMMEDIATE_PORTS if immediate else _DX_PORTS)
        self.qualification = IOQualification(size=size, direction=direction, string=False,
                                             rep=False, immediate=immediate, port=port)

    def instruction(self) -> str:
        """The guest's instruction in Intel syntax, e.g. ``out dx, al``."""
        q = self.qualification
        operand = f"{q.port:#x}" if q.immediate else "dx"
        accumulator = _ACCUMULATOR[q.size]
        return (f"in {accumulator}, {operand}" if q.direction == "in"
                else f"out {operand}, {accumulator}")

    def prompt(self) -> str:
        q = self.qualification
        dx = "" if q.immediate else f" avec DX = {q.port:#x}"
        return (f"L'invité exécute « {self.instruction()} »{dx}. L'hyperviseur a activé "
                "UNCONDITIONAL_IO_EXITING : sortie VM de raison 30 (IO_INSTRUCTION).\n"
                "Quelle qualification de sortie (EXIT_QUALIFICATION, un entier de 32 bits) "
                "le processeur range-t-il dans le VMCS ?\n"
                "Disposition (SDM Vol. 3C, tableau 27-5) : bits 2:0 taille - 1, bit 3 direction "
                "(1 = IN), bit 4 chaîne, bit 5 REP, bit 6 opérande immédiat, bits 31:16 port.")

    def solution(self) -> int:
        return self.qualification.encode()

    def _explain(self, answer: int) -> str:
        if answer < 0:
            return f"Une qualification de sortie est un entier positif ou nul, pas {answer}."
        expected = self.solution()
        wrong = [name for name, low, mask in _IO_FIELDS if (expected ^ answer) >> low & mask]
        if answer >> 64:
            wrong.append("au-delà du bit 63 (une qualification tient en 64 bits)")
        return f"{answer:#010x} : " + ("champ erroné : " if len(wrong) == 1 else "champs erronés : ") \
            + " ; ".join(wrong) + "."

    def _congrats(self) -> str:
        q = self.qualification
        return (f"taille {q.size} → {q.size - 1}, {q.direction.upper()} → bit 3 = {int(q.direction == 'in')}, "
                f"port {'immédiat' if q.immediate else 'dans DX'} → bit 6 = {int(q.immediate)}, "
                f"port {q.port:#x} → bits 31:16.")


class PrivilegeExercise(Exercise):
    """Does this instruction, executed at ring 3, raise a #GP? (01_modes_privileges.ipynb)

    The solution is not a table: it runs the instruction at ring 3 in a
    Machine and reads the guest kernel's process table (killed, status 13).
    """

    # name -> ring-3 source; the first six are privileged (CPL 0 only, SDM Vol. 3A §5.9;
    # out: CPL > IOPL and no I/O bitmap), the others are allowed to any program.
    CANDIDATES = {
        "hlt": "hlt",
        "cli": "cli",
        "mov cr3": "xor eax, eax\n    mov cr3, rax",
        "lidt": "lidt [rsp]",
        "wrmsr": "xor eax, eax\n    xor edx, edx\n    mov ecx, 0xC0000080\n    wrmsr",
        "out": "mov al, 0x41\n    out 0x80, al",
        "add": "add rax, rbx",
        "mov rax, rbx": "mov rax, rbx",
        "int 0x80": "mov rax, 39\n    int 0x80",
        "cpuid": "xor eax, eax\n    cpuid",
    }
    hint = ("seules les instructions qui touchent à l'état de toute la machine (interruptions, "
            "tables du CPU, registres de contrôle, MSR, ports d'E/S) sont réservées à l'anneau 0.")
    answer_type = bool

    def _generate(self, rng) -> None:
        self.instruction = rng.choice(sorted(self.CANDIDATES))

    def prompt(self) -> str:
        return (f"Un programme exécute « {self.instruction} » à l'anneau 3.\n"
                "Cette instruction, exécutée à l'anneau 3, provoque-t-elle une #GP ? "
                "Répondez True ou False.")

    def run(self):
        """Run the instruction in a one-program guest on bare metal; return the Machine."""
        from vmkit.cpu.kernel import GuestKernel, Program
        from vmkit.cpu.machine import Machine

        source = f"    {self.CANDIDATES[self.instruction]}\n    mov rax, 60\n    xor edi, edi\n    int 0x80\n"
        return Machine(GuestKernel((Program(self.instruction, source),))).run(5_000)

    def solution(self) -> bool:
        (process,) = self.run().guest.processes()
        return process.state == "killed" and process.status == 13

    def _explain(self, answer: bool) -> str:
        return self._congrats()

    def _congrats(self) -> str:
        # a yes/no question: any explanation gives the answer, so it is the explanation
        if self.solution():
            return (f"« {self.instruction} » est privilégiée : à l'anneau 3, le CPU lève #GP "
                    "et le noyau tue le programme.")
        return (f"« {self.instruction} » est permise à l'anneau 3 : le programme continue "
                "et se termine normalement.")


class TimerExercise(Exercise):
    """How many timer interrupts in the first N instructions? (01_modes_privileges.ipynb)

    The solution runs the guest and counts its timer interrupts; the formula
    (the kernel programs the PIT at instruction ``t0``, then one tick every
    ``period``) is what the student is expected to find.
    """

    hint = ("le premier tic ne tombe pas à l'instant où le PIT est programmé mais une période plus "
            "tard ; comptez les tics qui tiennent avant la limite.")

    def _generate(self, rng) -> None:
        self.period = rng.choice((300, 400, 500, 600, 800, 1_000))
        self.instructions = rng.randrange(4_000, 12_001, 500)
        self.programs = rng.randint(1, 3)

    def prompt(self) -> str:
        t0 = next(e.time for e in self.run(50).events if e.kind == "io")
        return (f"Le noyau invité programme son horloge (le PIT) à l'instruction {t0}, avec une période de "
                f"{self.period} instructions, puis fait tourner "
                + ("1 programme qui calcule" if self.programs == 1 else f"{self.programs} programmes qui calculent")
                + " sans jamais faire d'appel système.\n"
                f"Combien d'interruptions d'horloge pendant les {self.instructions} premières instructions ?")

    def run(self, instructions: int | None = None):
        """Run the guest (for the exercise's number of instructions by default); return the Machine."""
        from vmkit.cpu.kernel import GuestKernel
        from vmkit.cpu.machine import Machine
        from vmkit.cpu.programs import spinner

        kernel = GuestKernel(tuple(spinner(f"spin{i}") for i in range(self.programs)), timer_period=self.period)
        return Machine(kernel).run(self.instructions if instructions is None else instructions)

    def solution(self) -> int:
        return sum(1 for e in self.run().events
                   if e.kind == "interrupt" and e.text.startswith("timer interrupt"))

    def _congrats(self) -> str:
        return (f"Une interruption toutes les {self.period} instructions, à partir de l'instant "
                "où le PIT est programmé.")
