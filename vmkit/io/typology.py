"""The slides' device typology: how a hypervisor can give devices to its VMs.

Five kinds, in the slides' order (Machines Virtuelles, "Typologie des
périphériques"): dedicated, partitioned, shared, spooled, nonexistent. Each
kind says how many VMs use one physical device at a time and what unit is
multiplexed among them; each example names the real technology that does it.
The model is data: ``vmkit.viz.typology_table`` draws it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from vmkit.core import VmkitError


class DeviceKind(Enum):
    """The slides' five kinds; values are the slides' French words."""

    DEDICATED = "dédié"
    PARTITIONED = "partitionné"
    SHARED = "partagé"
    SPOOLED = "spoolé"
    NONEXISTENT = "inexistant"


@dataclass(frozen=True)
class KindInfo:
    """What a kind means for the hypervisor."""

    kind: DeviceKind
    vms_at_once: str        # "1" or "n": VMs using one physical device at the same time
    multiplexed_unit: str   # what the hypervisor hands out (French, for the table)
    physical_device: bool   # False only for nonexistent devices: software alone


KINDS: dict[DeviceKind, KindInfo] = {
    DeviceKind.DEDICATED: KindInfo(DeviceKind.DEDICATED, "1", "le périphérique entier", True),
    DeviceKind.PARTITIONED: KindInfo(
        DeviceKind.PARTITIONED, "n", "une tranche disjointe (blocs, secteurs)", True),
    DeviceKind.SHARED: KindInfo(
        DeviceKind.SHARED, "n", "des tranches de temps (paquets, requêtes)", True),
    DeviceKind.SPOOLED: KindInfo(
        DeviceKind.SPOOLED, "n", "des travaux entiers (fichiers du spooler)", True),
    DeviceKind.NONEXISTENT: KindInfo(DeviceKind.NONEXISTENT, "n", "rien : émulé en logiciel", False),
}


@dataclass(frozen=True)
class DeviceExample:
    """One device, the kind it is given to VMs as, and the real technology doing it."""

    name: str               # the identifier kind_of() takes
    kind: DeviceKind
    technology: str         # French: shown in the course's table
    on_slide: bool = False
    in_practice: DeviceKind | None = None   # where the slide says practice differs

    @property
    def label(self) -> str:
        """The device's French name, as the course's table shows it."""
        return LABELS.get(self.name, self.name)


EXAMPLES: tuple[DeviceExample, ...] = (
    DeviceExample("screen", DeviceKind.DEDICATED,
                  "la console d'une VM à la fois (fenêtre VirtualBox/VMware, vfb de Xen)", on_slide=True),
    DeviceExample("keyboard", DeviceKind.DEDICATED,
                  "le focus clavier va à une VM ; une touche hôte le reprend", on_slide=True),
    DeviceExample("PCI device assigned to one VM", DeviceKind.DEDICATED,
                  "assignation directe : remappage DMA VT-d (vmkit.io.iommu), VFIO"),
    DeviceExample("disk", DeviceKind.PARTITIONED,
                  "une partition, un volume logique LVM ou un fichier image par VM", on_slide=True),
    DeviceExample("NVMe SSD", DeviceKind.PARTITIONED, "des namespaces NVMe, un par VM"),
    DeviceExample("network card", DeviceKind.SHARED,
                  "les paquets de toutes les VM multiplexés : netfront/netback de Xen, virtio-net",
                  on_slide=True),
    DeviceExample("network card with SR-IOV", DeviceKind.SHARED,
                  "la carte offre elle-même des fonctions virtuelles, une par VM (vmkit.io.iommu)"),
    DeviceExample("GPU", DeviceKind.SHARED,
                  "des GPU virtuels en tranches de temps (NVIDIA vGPU, Intel GVT-g)"),
    DeviceExample("printer", DeviceKind.SPOOLED,
                  "des travaux d'impression entiers en file dans un spooler (CUPS, spouleur Windows)",
                  on_slide=True, in_practice=DeviceKind.SHARED),
    DeviceExample("host printer seen from a VM", DeviceKind.SPOOLED,
                  "l'invité imprime dans une file ; les travaux passent à l'imprimante de l'hôte "
                  "(impression virtuelle VMware, ThinPrint)"),
    DeviceExample("virtual switch between VMs", DeviceKind.NONEXISTENT,
                  "pont Linux, Open vSwitch, interfaces vif de Xen dans Dom0", on_slide=True),
    DeviceExample("VM-to-VM serial line", DeviceKind.NONEXISTENT,
                  "un tube entre deux UART émulés (chardev QEMU, host pipe VirtualBox)"),
)


LABELS = {
    "screen": "écran",
    "keyboard": "clavier",
    "PCI device assigned to one VM": "périphérique PCI assigné à une VM",
    "disk": "disque",
    "NVMe SSD": "SSD NVMe",
    "network card": "carte réseau",
    "network card with SR-IOV": "carte réseau SR-IOV",
    "GPU": "GPU",
    "printer": "imprimante",
    "host printer seen from a VM": "imprimante de l'hôte vue d'une VM",
    "virtual switch between VMs": "switch virtuel entre VM",
    "VM-to-VM serial line": "liaison série entre deux VM",
}


def kind_of(name: str) -> DeviceKind:
    """The kind ``name`` (an example's name) is given to VMs as."""
    for ex in EXAMPLES:
        if ex.name == name:
            return ex.kind
    known = ", ".join(repr(ex.name) for ex in EXAMPLES)
    raise VmkitError(f"no device example named {name!r}; known: {known}")


def examples(kind: DeviceKind | str | None = None) -> list[DeviceExample]:
    """The examples of one kind (a DeviceKind or its French word), or all of them."""
    if kind is None:
        return list(EXAMPLES)
    if not isinstance(kind, DeviceKind):
        try:
            kind = DeviceKind(kind)
        except ValueError:
            words = ", ".join(repr(k.value) for k in DeviceKind)
            raise VmkitError(f"no device kind {kind!r}; kinds: {words}") from None
    return [ex for ex in EXAMPLES if ex.kind is kind]
