"""Seeded exercises of chapter 2: count a walk's references, find a page fault's error code.

Each solution is computed by building the tables and running the walker,
never typed in (vmkit.core.Exercise). Taught in course/02_memory/.
"""

from __future__ import annotations

import random

from vmkit.core import Exercise
from vmkit.memory.nested import nested_setup, walk_2d
from vmkit.memory.paging import (
    FETCH, READ, USER_READ, USER_WRITE, WRITE, AddressSpace, PageFault, walk,
)
from vmkit.memory.physical import PhysicalMemory

GVA = 0x0000_7F12_3456_7ABC
LARGE = 2 << 20
NATIVE_HINT = "une entrée lue par niveau de table parcouru ; une grande page arrête la marche plus tôt."


class ReferencesExercise(Exercise):
    """How many paging-structure references does one cold translation make?"""

    hint = ("chaque entrée de table de l'invité est à une adresse physique invitée, qu'il faut "
            "d'abord traduire par l'EPT ; l'adresse physique invitée finale aussi.")

    def _generate(self, rng: random.Random) -> None:
        self.guest_levels = rng.choice((4, 5))
        self.ept_levels = rng.choice((None, 4, 5))
        self.guest_page = rng.choice((4096, LARGE))
        self.ept_page = rng.choice((4096, LARGE)) if self.ept_levels else None
        if self.ept_levels is None:
            self.hint = NATIVE_HINT

    def prompt(self) -> str:
        page = "4 Kio" if self.guest_page == 4096 else "2 Mio"
        where = ("sur la machine nue (pas d'EPT)" if self.ept_levels is None else
                 f"dans une VM, avec une EPT à {self.ept_levels} niveaux et des pages EPT de "
                 + ("4 Kio" if self.ept_page == 4096 else "2 Mio"))
        return (f"Un programme lit une adresse virtuelle ; ses tables de pages ont "
                f"{self.guest_levels} niveaux et l'adresse tombe dans une page de {page}, {where}. "
                "Les TLB et les caches de la marche sont vides. Combien d'entrées de tables le "
                "processeur lit-il pour traduire l'adresse (sans compter la lecture de la donnée) ?")

    def solution(self) -> int:
        gva = GVA % (1 << 47)
        if self.ept_levels is None:
            mem = PhysicalMemory(1 << 24)
            space = AddressSpace(mem, levels=self.guest_levels)
            data = LARGE * 3 if self.guest_page == LARGE else mem.alloc_frame() * 4096
            space.map(gva & ~(self.guest_page - 1), data, size=self.guest_page)
            return walk(mem, space.cr3, gva, READ, levels=self.guest_levels).memory_references
        host, ept, guest, space = nested_setup(guest_levels=self.guest_levels, ept_levels=self.ept_levels,
                                               ept_page_size=self.ept_page)
        if self.guest_page == LARGE:
            data = LARGE
            guest.back(data, LARGE)
        else:
            data = guest.alloc_frame() * 4096
        space.map(gva & ~(self.guest_page - 1), data, size=self.guest_page)
        return walk_2d(guest, space.cr3, gva, READ, levels=self.guest_levels).memory_references

    def _congrats(self) -> str:
        if self.ept_levels is None:
            return "Une entrée par niveau parcouru."
        return "(n + 1) × (m + 1) - 1, avec n et m les niveaux réellement parcourus de chaque côté."


class NativeReferencesExercise(ReferencesExercise):
    """The same question on bare metal only (no EPT), for the first notebook."""

    hint = NATIVE_HINT

    def _generate(self, rng: random.Random) -> None:
        self.guest_levels = rng.choice((4, 5))
        self.ept_levels = None
        self.guest_page = rng.choice((4096, LARGE))
        self.ept_page = None


# (name, access, how the mapping is made) for the page-fault exercise
_SCENARIOS = {
    "absent": "aucune page n'est installée à cette adresse",
    "lecture seule": "la page est installée en lecture seule (RW = 0)",
    "superviseur": "la page est installée pour le noyau seulement (US = 0)",
    "non exécutable": "la page est installée non exécutable (NX = 1)",
    "présente": "la page est installée en lecture-écriture, pour tous, exécutable",
}
_ACCESSES = {"une lecture en mode noyau": READ, "une écriture en mode noyau": WRITE,
             "une lecture par un programme": USER_READ, "une écriture par un programme": USER_WRITE,
             "l'exécution d'une instruction en mode noyau": FETCH}


class PageFaultExercise(Exercise):
    """Which error code does the processor push for this access (0 if it does not fault)?"""

    hint = ("le code d'erreur (#PF) additionne : P = 1 si la page était présente (faute de "
            "protection), W = 2 pour une écriture, U = 4 pour un accès utilisateur, "
            "RSVD = 8, I/D = 16 pour une exécution (NX actif).")

    def _generate(self, rng: random.Random) -> None:
        # mostly accesses that fault (the point of the exercise), sometimes one that does not
        want_fault = rng.random() < 0.8
        while True:
            self.scenario = rng.choice(sorted(_SCENARIOS))
            self.access_text = rng.choice(sorted(_ACCESSES))
            if (self.solution() != 0) == want_fault:
                break

    def prompt(self) -> str:
        return (f"Sur une machine x86-64 (CR0.WP = 1, EFER.NXE = 1), {_SCENARIOS[self.scenario]}. "
                f"Le processeur traduit l'adresse pour {self.access_text}. Quel code d'erreur "
                "pousse-t-il avec la #PF ? Répondez 0 si l'accès ne fait pas de faute.")

    def walk(self):
        mem = PhysicalMemory(1 << 22)
        space = AddressSpace(mem)
        page = GVA % (1 << 47) & ~0xFFF
        options = {"lecture seule": dict(writable=False), "superviseur": dict(user=False),
                   "non exécutable": dict(executable=False), "présente": {}}
        if self.scenario != "absent":
            space.map(page, mem.alloc_frame() * 4096, **options[self.scenario])
        return walk(mem, space.cr3, page | 0xABC, _ACCESSES[self.access_text])

    def solution(self) -> int:
        result = self.walk().result
        return result.error_code if isinstance(result, PageFault) else 0

    def _explain(self, answer: int) -> str:
        if not 0 <= answer < 32:
            return "seuls les bits 0 à 4 comptent ici : répondez par un nombre entre 0 et 31."
        if answer == 0:
            return "0 voudrait dire : pas de faute. Cet accès en fait-il une ?"
        bits = [name for name, bit in (("P", 1), ("W", 2), ("U", 4), ("RSVD", 8), ("I/D", 16))
                if answer & bit]
        return f"{answer} voudrait dire {' + '.join(bits)} : revoyez chaque bit un par un."

    def _congrats(self) -> str:
        result = self.walk().result
        if not isinstance(result, PageFault):
            return "Pas de faute."
        text = result.explain()
        if result.error_code & 16:
            text += " ; I/D = 1 car c'est une exécution et EFER.NXE = 1"
        return text + "."
