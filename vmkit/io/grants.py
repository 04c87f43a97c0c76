"""Xen grant tables, version 1: how a guest lets another domain map one of its frames.

What a front end (blkfront, netfront) does to share a ring page or a data buffer with the back
end, as xen/include/public/grant_table.h defines it, with the hypervisor's checks from
xen/common/grant_table.c (``map_grant_ref``, ``_set_status_v1``). One entry, 8 bytes::

    struct grant_entry_v1 {
        uint16_t flags;    bits 1:0 type, bit 2 GTF_readonly (guest), bits 3-4 GTF_reading,
                           GTF_writing (set by Xen while the frame is mapped)
        domid_t  domid;    the domain allowed to map the frame
        uint32_t frame;    the granted frame
    };

The granting guest writes its table (``grant_access``, ``end_access``); the hypervisor reads it
when another domain asks to map (``map_grant_ref``, ``unmap_grant_ref``, ``copy``). Hypervisor
operations never raise for a bad request: they return a GNTST_* status, as the hypercall does.
Deliberately simple: one table per owner, no handles (a mapping is named by its ref, mapping
domain and access mode), no v2 entries, no real copying of bytes.
Taught in course/03_io/02_xen_split_drivers.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vmkit.core import VmkitError, expect_int

GRANT_REF = int   # grant_ref_t, uint32_t

# Entry type, bits 1:0 of flags.
GTF_invalid = 0
GTF_permit_access = 1
GTF_accept_transfer = 2
GTF_transitive = 3
GTF_type_mask = 3
# Subflags of a permit_access entry.
GTF_readonly = 1 << 2   # guest: the mapping domain may only read
GTF_reading = 1 << 3    # Xen: the frame is mapped (read or write)
GTF_writing = 1 << 4    # Xen: the frame is mapped writable

# GNTTABOP_* hypercall sub-operations.
GNTTABOP_map_grant_ref = 0
GNTTABOP_unmap_grant_ref = 1
GNTTABOP_setup_table = 2
GNTTABOP_dump_table = 3
GNTTABOP_transfer = 4
GNTTABOP_copy = 5
GNTTABOP_query_size = 6

# GNTST_* statuses a grant operation returns.
GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_gntref = -3
GNTST_bad_handle = -4
GNTST_bad_virt_addr = -5
GNTST_bad_dev_addr = -6
GNTST_no_device_space = -7
GNTST_permission_denied = -8
GNTST_bad_page = -9
GNTST_bad_copy_arg = -10
GNTST_address_too_big = -11
GNTST_eagain = -12

DOMID_MAX = 0xFFFF   # domid_t is uint16_t
FRAME_MAX = (1 << 32) - 1


class GrantError(VmkitError):
    """The granting guest misused its own table (a ref out of range, or still granted)."""


@dataclass(frozen=True)
class GrantEntryV1:
    """One ``grant_entry_v1``: ``flags``, then the ``domid`` allowed to map ``frame``."""

    flags: int = GTF_invalid
    domid: int = 0
    frame: int = 0

    @property
    def type(self) -> int:
        """The entry type, bits 1:0 of ``flags`` (GTF_invalid ... GTF_transitive)."""
        return self.flags & GTF_type_mask

    @property
    def in_use(self) -> bool:
        """Whether Xen marks the frame as mapped (GTF_reading or GTF_writing)."""
        return bool(self.flags & (GTF_reading | GTF_writing))


@dataclass(frozen=True)
class GrantOp:
    """One recorded operation on the table: its name, ref, the other domain, and its status."""

    op: str
    ref: int
    domid: int
    status: int


class GrantTable:
    """A guest's grant table of ``size`` v1 entries, and the hypervisor's view of who maps what."""

    def __init__(self, owner_domid: int, size: int = 32):
        self.owner_domid = expect_int(owner_domid, "owner_domid", maximum=DOMID_MAX)
        self.size = expect_int(size, "size", minimum=1, maximum=FRAME_MAX)
        self.entries: list[GrantEntryV1] = [GrantEntryV1() for _ in range(size)]
        # Xen's active entries: per ref, one (mapping_domid, readonly) per live mapping.
        self.mappings: dict[GRANT_REF, list[tuple[int, bool]]] = {}
        self.log: list[GrantOp] = []
        self.grants_issued = 0
        self.revokes = 0
        self.revokes_refused = 0
        self.maps = 0
        self.unmaps = 0
        self.copies = 0
        self.failures = 0   # hypervisor operations that returned a status other than okay

    def _guest_ref(self, ref: int) -> GRANT_REF:
        """Check a ref the owner passes about its own table."""
        if not isinstance(ref, int) or isinstance(ref, bool) or not 0 <= ref < self.size:
            raise GrantError(f"ref must be an int in 0..{self.size - 1}, not {ref!r}; "
                             f"the table has {self.size} entries")
        return ref

    def grant_access(self, ref: GRANT_REF, domid: int, frame: int, readonly: bool = False) -> None:
        """Let ``domid`` map ``frame`` through entry ``ref`` (gnttab_grant_foreign_access_ref).

        Raises:
            GrantError: ``ref`` is out of range, or still granted (``end_access`` it first).
        """
        self._guest_ref(ref)
        expect_int(domid, "domid", maximum=DOMID_MAX)
        expect_int(frame, "frame", maximum=FRAME_MAX)
        if self.entries[ref].type != GTF_invalid:
            raise GrantError(f"ref {ref} is still granted ({self.entries[ref]}); "
                             f"end_access({ref}) before granting it again")
        # The protocol of grant_table.h: domid, then frame, then wmb(), then flags. Xen reads
        # flags first, so it never sees a valid type with a stale domid or frame.
        entry = replace(self.entries[ref], domid=domid)
        entry = replace(entry, frame=frame)
        self.entries[ref] = replace(
            entry, flags=GTF_permit_access | (GTF_readonly if readonly else 0))
        self.grants_issued += 1
        self.log.append(GrantOp("grant_access", ref, domid, GNTST_okay))

    def end_access(self, ref: GRANT_REF) -> bool:
        """Revoke ``ref``; False, and nothing changed, while the frame is still mapped.

        As gnttab_end_foreign_access_ref: read flags, refuse if GTF_reading or GTF_writing
        is set, else cmpxchg them to 0. Revoking an already invalid entry succeeds.
        """
        self._guest_ref(ref)
        entry = self.entries[ref]
        if entry.in_use:
            self.revokes_refused += 1
            self.log.append(GrantOp("end_access", ref, entry.domid, GNTST_general_error))
            return False
        self.entries[ref] = replace(entry, flags=GTF_invalid)
        self.revokes += 1
        self.log.append(GrantOp("end_access", ref, entry.domid, GNTST_okay))
        return True

    def _check(self, ref: int, domid: int, readonly: bool) -> int:
        """The hypervisor's checks before a map or a copy (map_grant_ref, _set_status_v1)."""
        if not isinstance(ref, int) or isinstance(ref, bool) or not 0 <= ref < self.size:
            return GNTST_bad_gntref          # "Bad ref" (ref >= nr_grant_entries)
        entry = self.entries[ref]
        if entry.type != GTF_permit_access or entry.domid != domid:
            return GNTST_general_error       # "Bad flags or dom": Xen's status for both
        if not readonly and entry.flags & GTF_readonly:
            return GNTST_general_error       # "Attempt to write-pin a r/o grant entry"
        return GNTST_okay

    def _record(self, op: str, ref: int, domid: int, status: int) -> int:
        if status != GNTST_okay:
            self.failures += 1
        self.log.append(GrantOp(op, ref, domid, status))
        return status

    def _update_flags(self, ref: GRANT_REF) -> None:
        """GTF_reading while any mapping lives, GTF_writing while a writable one does."""
        live = self.mappings.get(ref, [])
        flags = self.entries[ref].flags & ~(GTF_reading | GTF_writing)
        if live:
            flags |= GTF_reading
        if any(not ro for _, ro in live):
            flags |= GTF_writing
        self.entries[ref] = replace(self.entries[ref], flags=flags)

    def map_grant_ref(self, ref: GRANT_REF, mapping_domid: int,
                      readonly_requested: bool = False) -> tuple[int, int | None]:
        """GNTTABOP_map_grant_ref from ``mapping_domid``: (GNTST_okay, frame) or (status, None)."""
        status = self._check(ref, mapping_domid, readonly_requested)
        if status != GNTST_okay:
            return self._record("map_grant_ref", ref, mapping_domid, status), None
        self.mappings.setdefault(ref, []).append((mapping_domid, bool(readonly_requested)))
        self._update_flags(ref)
        self.maps += 1
        self._record("map_grant_ref", ref, mapping_domid, GNTST_okay)
        return GNTST_okay, self.entries[ref].frame

    def unmap_grant_ref(self, ref: GRANT_REF, mapping_domid: int,
                        readonly: bool = False) -> int:
        """GNTTABOP_unmap_grant_ref: drop one mapping of ``ref`` by ``mapping_domid``.

        Returns GNTST_bad_gntref for a ref out of range and GNTST_bad_handle when no such
        mapping exists (a double unmap), as Xen does for a stale handle.
        """
        if not isinstance(ref, int) or isinstance(ref, bool) or not 0 <= ref < self.size:
            return self._record("unmap_grant_ref", ref, mapping_domid, GNTST_bad_gntref)
        live = self.mappings.get(ref, [])
        key = (mapping_domid, bool(readonly))
        if key not in live:
            return self._record("unmap_grant_ref", ref, mapping_domid, GNTST_bad_handle)
        live.remove(key)
        if not live:
            del self.mappings[ref]
        self._update_flags(ref)
        self.unmaps += 1
        return self._record("unmap_grant_ref", ref, mapping_domid, GNTST_okay)

    def copy(self, ref: GRANT_REF, copying_domid: int, write: bool = False) -> int:
        """GNTTABOP_copy through ``ref`` by ``copying_domid``: same checks as a map, no mapping.

        Xen pins the entry only for the copy's duration, so the flags end as they started.
        """
        status = self._check(ref, copying_domid, readonly=not write)
        if status == GNTST_okay:
            self.copies += 1
        return self._record("copy", ref, copying_domid, status)

    def mapped_refs(self) -> list[GRANT_REF]:
        """The refs some domain still maps, in order: empty once every mapping is returned."""
        return sorted(self.mappings)

    def __repr__(self) -> str:
        granted = sum(e.type != GTF_invalid for e in self.entries)
        return (f"GrantTable(owner_domid={self.owner_domid}, size={self.size}, "
                f"granted={granted}, mapped={len(self.mappings)})")
