"""vmkit.io.typology: the slides' five device kinds and their examples."""

import pytest

from vmkit.core import VmkitError
from vmkit.io.typology import EXAMPLES, KINDS, DeviceKind, examples, kind_of


@pytest.mark.parametrize("name, kind", [
    ("screen", DeviceKind.DEDICATED),
    ("keyboard", DeviceKind.DEDICATED),
    ("disk", DeviceKind.PARTITIONED),
    ("network card", DeviceKind.SHARED),
    ("printer", DeviceKind.SPOOLED),
    ("virtual switch between VMs", DeviceKind.NONEXISTENT),
])
def test_slide_examples_have_the_slides_kind(name, kind):
    """Every example the slide gives is classified as the slide classifies it."""
    assert kind_of(name) is kind


def test_kinds_keep_the_slides_order_and_words():
    """The five kinds come in the slide's order, named with its French words."""
    assert [k.value for k in DeviceKind] == ["dédié", "partitionné", "partagé", "spoolé",
                                             "inexistant"]


def test_every_kind_has_a_slide_example_and_a_real_world_one():
    """Each kind has the slide's example and at least one more from today's hardware."""
    for kind in DeviceKind:
        found = examples(kind)
        assert any(ex.on_slide for ex in found) and any(not ex.on_slide for ex in found), kind


def test_only_a_dedicated_device_serves_one_vm_at_a_time():
    """Dedicated is the one kind where a physical device belongs to a single VM."""
    assert [k for k, info in KINDS.items() if info.vms_at_once == "1"] == [DeviceKind.DEDICATED]


def test_only_a_nonexistent_device_has_no_physical_device():
    """A virtual switch is software alone; every other kind multiplexes real hardware."""
    assert [k for k, info in KINDS.items() if not info.physical_device] == [DeviceKind.NONEXISTENT]


def test_spooled_printer_is_shared_in_practice():
    """The slide's aside: printers are mostly reached over the network, hence shared."""
    printer = next(ex for ex in EXAMPLES if ex.name == "printer")
    assert printer.in_practice is DeviceKind.SHARED


def test_examples_filter_by_the_french_word():
    """examples('partagé') is the same list as examples(DeviceKind.SHARED)."""
    assert examples("partagé") == examples(DeviceKind.SHARED) != []


def test_unknown_kind_lists_the_kinds():
    """A misspelt kind is refused with the five valid words."""
    with pytest.raises(VmkitError, match="inexistant"):
        examples("partage")


def test_unknown_device_lists_the_examples():
    """kind_of an unknown name says which names exist."""
    with pytest.raises(VmkitError, match="'disk'"):
        kind_of("floppy")


def test_every_example_has_a_french_label():
    """The course's table shows French names: every example has one."""
    assert [ex.label for ex in EXAMPLES if ex.name == "disk"] == ["disque"]
    assert all(ex.label for ex in EXAMPLES)


def test_a_new_example_without_a_label_shows_its_name():
    """An example built by a student has no French label yet: the table shows its name."""
    from vmkit.io.typology import DeviceExample
    assert DeviceExample("tape", DeviceKind.DEDICATED, "x").label == "tape"
