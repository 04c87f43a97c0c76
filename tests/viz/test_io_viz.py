"""vmkit.viz.io: the device typology table and its drop-down."""

from vmkit.io.typology import EXAMPLES, DeviceKind, examples
from vmkit.viz.io import explore_typology, typology_table


def test_table_has_one_row_per_example():
    """Unfiltered, the table lists every example once."""
    assert typology_table().data.count("<tr>") == len(EXAMPLES) + 1   # + the header row


def test_table_marks_the_printer_as_shared_in_practice():
    """The spooled printer's row carries the slide's 'in practice, shared' aside."""
    assert "spoolé (en pratique : partagé)" in typology_table(DeviceKind.SPOOLED).data


def test_choosing_a_kind_in_the_dropdown_filters_the_table():
    """Picking 'partitionné' leaves only the partitioned examples in the HTML widget."""
    box = explore_typology()
    choice, table = box.children
    choice.value = DeviceKind.PARTITIONED
    assert table.value.count("<tr>") == len(examples(DeviceKind.PARTITIONED)) + 1
    assert "disque" in table.value and "carte réseau" not in table.value
