"""Tests for vmkit.io.grants: grant table v1 entries, the guest's side and the hypervisor's."""

import pytest

from vmkit.core import VmkitError
from vmkit.io.grants import (
    GNTST_bad_gntref,
    GNTST_bad_handle,
    GNTST_general_error,
    GNTST_okay,
    GTF_permit_access,
    GTF_readonly,
    GTF_reading,
    GTF_writing,
    GrantEntryV1,
    GrantError,
    GrantOp,
    GrantTable,
)

FRONT, BACK, OTHER = 1, 0, 7
FRAME = 0x1234


def granted(readonly=False):
    table = GrantTable(owner_domid=FRONT, size=8)
    table.grant_access(3, BACK, FRAME, readonly=readonly)
    return table


def test_status_values_are_xens():
    """The GNTST_* values are those of grant_table.h."""
    from vmkit.io import grants
    assert [grants.GNTST_okay, grants.GNTST_general_error, grants.GNTST_bad_domain,
            grants.GNTST_bad_gntref, grants.GNTST_bad_handle, grants.GNTST_bad_virt_addr,
            grants.GNTST_bad_dev_addr, grants.GNTST_no_device_space,
            grants.GNTST_permission_denied, grants.GNTST_bad_page, grants.GNTST_bad_copy_arg,
            grants.GNTST_address_too_big, grants.GNTST_eagain] == list(range(0, -13, -1))


def test_flag_bits_are_xens():
    """Entry types sit in bits 1:0 and the subflags in bits 2, 3 and 4."""
    from vmkit.io import grants
    assert (grants.GTF_invalid, grants.GTF_permit_access, grants.GTF_accept_transfer,
            grants.GTF_transitive) == (0, 1, 2, 3)
    assert (GTF_readonly, GTF_reading, GTF_writing) == (4, 8, 16)


def test_new_table_is_all_invalid():
    """A fresh table holds only invalid, zeroed entries."""
    assert GrantTable(FRONT, size=4).entries == [GrantEntryV1(0, 0, 0)] * 4


def test_grant_access_writes_the_entry():
    """grant_access fills domid, frame and a permit_access type."""
    assert granted().entries[3] == GrantEntryV1(GTF_permit_access, BACK, FRAME)


def test_grant_access_readonly_sets_gtf_readonly():
    """A read-only grant carries GTF_readonly."""
    assert granted(readonly=True).entries[3].flags == GTF_permit_access | GTF_readonly


def test_grant_access_refuses_a_busy_ref():
    """Granting a ref that is still granted raises instead of overwriting it."""
    table = granted()
    with pytest.raises(GrantError):
        table.grant_access(3, OTHER, FRAME + 1)
    assert table.entries[3].domid == BACK


def test_grant_access_refuses_a_ref_out_of_range():
    """The owner gets a GrantError, a VmkitError, for a ref past the table."""
    with pytest.raises(VmkitError):
        GrantTable(FRONT, size=8).grant_access(8, BACK, FRAME)


def test_map_returns_okay_and_the_frame():
    """The granted domain maps the ref and learns the frame."""
    assert granted().map_grant_ref(3, BACK, False) == (GNTST_okay, FRAME)


def test_map_writable_sets_reading_and_writing():
    """A writable mapping sets GTF_reading and GTF_writing."""
    table = granted()
    table.map_grant_ref(3, BACK, False)
    assert table.entries[3].flags == GTF_permit_access | GTF_reading | GTF_writing


def test_map_readonly_sets_only_reading():
    """A read-only mapping sets GTF_reading alone."""
    table = granted()
    table.map_grant_ref(3, BACK, True)
    assert table.entries[3].flags == GTF_permit_access | GTF_reading


def test_map_out_of_range_ref_is_bad_gntref():
    """A ref past the table answers GNTST_bad_gntref."""
    assert granted().map_grant_ref(8, BACK, False) == (GNTST_bad_gntref, None)


def test_map_negative_ref_is_bad_gntref():
    """A negative ref answers GNTST_bad_gntref instead of indexing from the end."""
    assert granted().map_grant_ref(-1, BACK, False) == (GNTST_bad_gntref, None)


def test_map_invalid_entry_is_general_error():
    """An entry never granted fails Xen's "Bad flags or dom" check: GNTST_general_error."""
    assert granted().map_grant_ref(2, BACK, False) == (GNTST_general_error, None)


def test_map_by_the_wrong_domain_is_general_error():
    """A domain other than the grantee gets GNTST_general_error and no frame."""
    table = granted()
    assert table.map_grant_ref(3, OTHER, True) == (GNTST_general_error, None)
    assert not table.entries[3].in_use


def test_write_map_of_readonly_grant_is_general_error():
    """Write-pinning a read-only grant fails and leaves the flags alone."""
    table = granted(readonly=True)
    assert table.map_grant_ref(3, BACK, False) == (GNTST_general_error, None)
    assert table.entries[3].flags == GTF_permit_access | GTF_readonly


def test_readonly_map_of_readonly_grant_succeeds():
    """A read-only grant can be mapped read-only."""
    assert granted(readonly=True).map_grant_ref(3, BACK, True) == (GNTST_okay, FRAME)


def test_unmap_last_mapping_clears_the_flags():
    """Unmapping the only mapping clears GTF_reading and GTF_writing."""
    table = granted()
    table.map_grant_ref(3, BACK, False)
    assert table.unmap_grant_ref(3, BACK) == GNTST_okay
    assert table.entries[3].flags == GTF_permit_access


def test_unmap_keeps_reading_while_another_mapping_lives():
    """With two mappings, the first unmap leaves GTF_reading set."""
    table = granted()
    table.map_grant_ref(3, BACK, True)
    table.map_grant_ref(3, BACK, False)
    table.unmap_grant_ref(3, BACK, readonly=False)
    assert table.entries[3].flags == GTF_permit_access | GTF_reading


def test_double_unmap_is_bad_handle():
    """Unmapping twice answers GNTST_bad_handle the second time."""
    table = granted()
    table.map_grant_ref(3, BACK, False)
    table.unmap_grant_ref(3, BACK)
    assert table.unmap_grant_ref(3, BACK) == GNTST_bad_handle


def test_unmap_out_of_range_is_bad_gntref():
    """Unmapping a ref past the table answers GNTST_bad_gntref."""
    assert granted().unmap_grant_ref(99, BACK) == GNTST_bad_gntref


def test_end_access_refused_while_mapped():
    """Revoking a mapped grant returns False and leaves the entry as it was."""
    table = granted()
    table.map_grant_ref(3, BACK, False)
    before = table.entries[3]
    assert table.end_access(3) is False
    assert table.entries[3] == before
    assert table.revokes_refused == 1


def test_end_access_after_unmap_succeeds():
    """Once unmapped, the grant is revoked and its type is invalid again."""
    table = granted()
    table.map_grant_ref(3, BACK, False)
    table.unmap_grant_ref(3, BACK)
    assert table.end_access(3) is True
    assert table.entries[3].type == 0


def test_map_after_end_access_fails():
    """A revoked grant can no longer be mapped."""
    table = granted()
    table.end_access(3)
    assert table.map_grant_ref(3, BACK, False) == (GNTST_general_error, None)


def test_ref_can_be_granted_again_after_end_access():
    """end_access frees the ref for a new grant."""
    table = granted()
    table.end_access(3)
    table.grant_access(3, OTHER, FRAME + 1)
    assert table.map_grant_ref(3, OTHER, False) == (GNTST_okay, FRAME + 1)


def test_copy_checks_access_and_leaves_flags():
    """A write copy through a writable grant succeeds without leaving the entry in use."""
    table = granted()
    assert table.copy(3, BACK, write=True) == GNTST_okay
    assert not table.entries[3].in_use


def test_copy_write_into_readonly_grant_fails():
    """A write copy through a read-only grant answers GNTST_general_error."""
    assert granted(readonly=True).copy(3, BACK, write=True) == GNTST_general_error


def test_counters_count_operations_and_failures():
    """The counters tally grants, maps, unmaps, copies and failed operations."""
    table = granted()
    table.map_grant_ref(3, BACK, False)
    table.map_grant_ref(5, BACK, False)
    table.unmap_grant_ref(3, BACK)
    table.copy(3, BACK)
    assert (table.grants_issued, table.maps, table.unmaps, table.copies, table.failures) == (
        1, 1, 1, 1, 1)


def test_log_records_each_operation_in_order():
    """The log is the trace of operations with their statuses."""
    table = granted()
    table.map_grant_ref(9, BACK, False)
    table.map_grant_ref(3, BACK, False)
    assert table.log == [GrantOp("grant_access", 3, BACK, GNTST_okay),
                         GrantOp("map_grant_ref", 9, BACK, GNTST_bad_gntref),
                         GrantOp("map_grant_ref", 3, BACK, GNTST_okay)]


def test_every_grant_returned_after_the_handshake():
    """After map, unmap and end_access no ref is mapped and no entry is granted."""
    table = granted()
    table.map_grant_ref(3, BACK, False)
    table.unmap_grant_ref(3, BACK)
    table.end_access(3)
    assert table.mapped_refs() == []
    assert all(e.type == 0 for e in table.entries)
