"""The Xen shared I/O ring: one page, two private views, and the notify/final-check discipline.

What Xen's split drivers (blkfront/blkback, netfront/netback) share to pass requests and
responses, as xen/include/public/io/ring.h defines it (Tim Deegan and Andrew Warfield, 2004),
with the block protocol's records from xen/include/public/io/blkif.h. The page layout::

    offset  0  req_prod   RING_IDX (uint32)    written by the front end
            4  req_event  RING_IDX             written by the back end
            8  rsp_prod   RING_IDX             written by the back end
           12  rsp_event  RING_IDX             written by the front end
           16  pvt (4 bytes) + __pad[44]
           64  ring[0], ring[1], ... ring[size-1]   union { request; response; }

Requests and responses share the slots: the back end writes response i over request i once it
has copied the request out. Indices are free-running 32-bit counters that wrap at 2**32; a slot
is ``index & (size - 1)``, which is why the size is rounded down to a power of two.

The macros become methods in snake case (``RING_FULL`` -> ``FrontRing.full()``,
``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`` -> ``FrontRing.push_requests_and_check_notify()``).
Deliberately simple: pure data, no threads, so the memory barriers (wmb/mb) are comments
marking where they would be; entries are Python objects, not bytes; a push that would overflow
the ring is refused with ``RingFull`` instead of silently overwriting, as the C macros would.
Taught in course/03_io/02_xen_split_drivers.ipynb.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from vmkit.core import VmkitError, expect_int

RING_IDX = int           # an unsigned 32-bit free-running counter
RING_IDX_MOD = 1 << 32   # RING_IDX arithmetic is modulo 2**32
PAGE_SIZE = 4096
SRING_HEADER = 64        # four RING_IDX, the 4-byte pvt union and __pad[44]

# sizeof(union {request; response;}) on x86-64, the unit ring_size() divides the page by.
BLKIF_ENTRY_SIZE = 112     # blkif_request: op, nr_segments, handle, pad, id, sector, 11 x 8
NETIF_TX_ENTRY_SIZE = 12   # netif_tx_request: gref, offset, flags, id, size
NETIF_RX_ENTRY_SIZE = 8    # netif_rx_request (id, pad, gref) and netif_rx_response are 8

# xen/include/public/io/blkif.h
BLKIF_OP_READ = 0
BLKIF_OP_WRITE = 1
BLKIF_OP_FLUSH_DISKCACHE = 3
BLKIF_MAX_SEGMENTS_PER_REQUEST = 11   # "carefully chosen so that sizeof(ring) <= PAGE_SIZE"
BLKIF_RSP_OKAY = 0
BLKIF_RSP_ERROR = -1
BLKIF_RSP_EOPNOTSUPP = -2
SECTOR_SIZE = 512
SECTORS_PER_FRAME = PAGE_SIZE // SECTOR_SIZE


class RingError(VmkitError):
    """A ring used out of protocol: taking from an empty ring, or answering no request."""


class RingFull(RingError):
    """The front end tried to push a request into a full ring; nothing was written."""


class RingOverflow(RingError):
    """The other end published a producer index claiming more than ``size`` entries in flight."""


def _idx(value: int) -> RING_IDX:
    """Reduce to a RING_IDX, as the C unsigned int arithmetic does."""
    return value % RING_IDX_MOD


def ring_size(entry_size: int) -> int:
    """How many entries of ``entry_size`` bytes one shared page holds (__RING_SIZE and __RD32)."""
    expect_int(entry_size, "entry_size", minimum=1, maximum=PAGE_SIZE - SRING_HEADER)
    fits = (PAGE_SIZE - SRING_HEADER) // entry_size
    return 1 << (fits.bit_length() - 1)   # round down to a power of two


class SharedRing:
    """The shared page: four producer/event indices and ``size`` slots (``struct NAME_sring``).

    A fresh page is zeroed, as the allocator hands it out; only ``FrontRing`` initialises it
    (SHARED_RING_INIT). Both ends read and write these fields, so neither may trust them.
    """

    def __init__(self, entry_size: int = BLKIF_ENTRY_SIZE):
        self.entry_size = entry_size
        self.size = ring_size(entry_size)
        self.req_prod: RING_IDX = 0
        self.req_event: RING_IDX = 0
        self.rsp_prod: RING_IDX = 0
        self.rsp_event: RING_IDX = 0
        self.ring: list[Any] = [None] * self.size

    def slot(self, index: RING_IDX) -> int:
        """The slot a free-running index lands in (the MASK_NAME_IDX of ring.h)."""
        return index & (self.size - 1)

    def __repr__(self) -> str:
        return (f"SharedRing(size={self.size}, req_prod={self.req_prod}, "
                f"req_event={self.req_event}, rsp_prod={self.rsp_prod}, "
                f"rsp_event={self.rsp_event})")


def _must_notify(new: RING_IDX, old: RING_IDX, event: RING_IDX) -> bool:
    """Whether ``event`` lies in the window (old, new], modulo 2**32 (the notify test of ring.h)."""
    return _idx(new - event) < _idx(new - old)


def _expect_sring(sring) -> SharedRing:
    if not isinstance(sring, SharedRing):
        raise VmkitError(f"a ring view attaches to a SharedRing, e.g. SharedRing(BLKIF_ENTRY_SIZE), "
                         f"not {sring!r}")
    return sring


class FrontRing:
    """The front end's private view, ``struct NAME_front_ring``: ``req_prod_pvt``, ``rsp_cons``.

    Creating it initialises the shared page (SHARED_RING_INIT: producers at ``start``, events
    one past) and attaches to it (FRONT_RING_ATTACH). Xen always starts at 0; ``start`` lets a
    lesson show the 32-bit wrap without four billion pushes.
    """

    def __init__(self, sring: SharedRing, start: RING_IDX = 0):
        _expect_sring(sring)
        start = expect_int(start, "start", maximum=RING_IDX_MOD - 1)
        sring.req_prod = sring.rsp_prod = start
        sring.req_event = sring.rsp_event = _idx(start + 1)
        sring.ring = [None] * sring.size
        self.sring = sring
        self.req_prod_pvt: RING_IDX = start
        self.rsp_cons: RING_IDX = start
        self.requests_pushed = 0
        self.notifications_sent = 0        # front -> back, when the notify test said so
        self.notifications_suppressed = 0  # publishes the back end did not need to hear about

    @property
    def size(self) -> int:
        """RING_SIZE: the number of slots."""
        return self.sring.size

    def free_requests(self) -> int:
        """RING_FREE_REQUESTS: slots not holding a request or an unconsumed response."""
        return self.size - _idx(self.req_prod_pvt - self.rsp_cons)

    def full(self) -> bool:
        """RING_FULL: no free slot for another request."""
        return self.free_requests() == 0

    def push_request(self, request: Any) -> None:
        """Write ``request`` into the next private slot; the back end sees it only once published.

        Raises:
            RingFull: the ring is full; nothing was written (check ``full()`` first).
        """
        if self.full():
            raise RingFull(
                f"ring full: {self.size} requests in flight (req_prod_pvt={self.req_prod_pvt}, "
                f"rsp_cons={self.rsp_cons}); take responses before pushing more")
        self.sring.ring[self.sring.slot(self.req_prod_pvt)] = request
        self.req_prod_pvt = _idx(self.req_prod_pvt + 1)
        self.requests_pushed += 1

    def push_requests_and_check_notify(self) -> bool:
        """Publish requests (req_prod = req_prod_pvt); True if the back end must be notified."""
        old, new = self.sring.req_prod, self.req_prod_pvt
        # wmb(): the back end must see the requests before the index that covers them.
        self.sring.req_prod = new
        # mb(): the back end must see the index before we read req_event.
        notify = _must_notify(new, old, self.sring.req_event)
        if notify:
            self.notifications_sent += 1
        elif new != old:
            self.notifications_suppressed += 1
        return notify

    def response_prod_overflow(self) -> bool:
        """RING_RESPONSE_PROD_OVERFLOW: the back end claims more than ``size`` responses."""
        return _idx(self.sring.rsp_prod - self.rsp_cons) > self.size

    def unconsumed_responses(self) -> int:
        """RING_HAS_UNCONSUMED_RESPONSES: published responses not yet taken."""
        return _idx(self.sring.rsp_prod - self.rsp_cons)

    def take_response(self) -> Any:
        """Take the next published response (RING_GET_RESPONSE, then rsp_cons++).

        Raises:
            RingOverflow: the back end published an impossible rsp_prod.
            RingError: no response is waiting (check ``unconsumed_responses()`` first).
        """
        if self.response_prod_overflow():
            raise RingOverflow(
                f"back end published rsp_prod={self.sring.rsp_prod} with rsp_cons="
                f"{self.rsp_cons}: more than {self.size} responses; disconnect this back end")
        if not self.unconsumed_responses():
            raise RingError("no unconsumed response; check unconsumed_responses() first")
        if self.unconsumed_responses() > _idx(self.req_prod_pvt - self.rsp_cons):
            # stricter than RING_RESPONSE_PROD_OVERFLOW: a response to a request never made
            # would make the slot count wrap, and the front end would overwrite its own requests
            raise RingOverflow(
                f"back end published rsp_prod={self.sring.rsp_prod}, more responses than the "
                f"{_idx(self.req_prod_pvt - self.rsp_cons)} requests outstanding; disconnect it")
        response = self.sring.ring[self.sring.slot(self.rsp_cons)]
        self.rsp_cons = _idx(self.rsp_cons + 1)
        return response

    def final_check_for_responses(self) -> bool:
        """RING_FINAL_CHECK_FOR_RESPONSES: re-arm rsp_event, then look again; False means sleep."""
        if self.unconsumed_responses():
            return True
        self.sring.rsp_event = _idx(self.rsp_cons + 1)  # notify me on the very next response
        # mb(): the back end must see rsp_event before we look at rsp_prod again.
        return self.unconsumed_responses() > 0

    def __repr__(self) -> str:
        return (f"FrontRing(size={self.size}, req_prod_pvt={self.req_prod_pvt}, "
                f"rsp_cons={self.rsp_cons})")


class BackRing:
    """The back end's private view, ``struct NAME_back_ring``: ``rsp_prod_pvt``, ``req_cons``.

    BACK_RING_ATTACH at the page's current rsp_prod (0 on a fresh ring, as BACK_RING_INIT);
    the back end never initialises the shared page.
    """

    def __init__(self, sring: SharedRing):
        self.sring = _expect_sring(sring)
        self.rsp_prod_pvt: RING_IDX = sring.rsp_prod
        self.req_cons: RING_IDX = sring.rsp_prod
        self.responses_pushed = 0
        self.notifications_sent = 0        # back -> front, when the notify test said so
        self.notifications_suppressed = 0

    @property
    def size(self) -> int:
        """RING_SIZE: the number of slots."""
        return self.sring.size

    def request_prod_overflow(self) -> bool:
        """RING_REQUEST_PROD_OVERFLOW: the front end claims over ``size`` requests in flight."""
        return _idx(self.sring.req_prod - self.rsp_prod_pvt) > self.size

    def unconsumed_requests(self) -> int:
        """RING_HAS_UNCONSUMED_REQUESTS: published requests we may take, capped by free slots.

        The min() guard: never count more requests than slots not holding our own responses,
        whatever req_prod the front end wrote.
        """
        req = _idx(self.sring.req_prod - self.req_cons)
        rsp = self.size - _idx(self.req_cons - self.rsp_prod_pvt)
        return min(req, rsp)

    def take_request(self) -> Any:
        """Copy the next published request out of the ring (RING_COPY_REQUEST), then req_cons++.

        The copy is the double-fetch defence: the front end can rewrite its slot at any time,
        so the back end validates and uses only its private copy.

        Raises:
            RingOverflow: the front end published an impossible req_prod.
            RingError: no request is waiting (check ``unconsumed_requests()`` first).
        """
        if self.request_prod_overflow():
            raise RingOverflow(
                f"front end published req_prod={self.sring.req_prod} with rsp_prod_pvt="
                f"{self.rsp_prod_pvt}: more than {self.size} requests in flight; "
                f"disconnect this front end")
        if not self.unconsumed_requests():
            raise RingError("no unconsumed request; check unconsumed_requests() first")
        request = copy.deepcopy(self.sring.ring[self.sring.slot(self.req_cons)])
        self.req_cons = _idx(self.req_cons + 1)
        return request

    def push_response(self, response: Any) -> None:
        """Write ``response`` over the slot of the oldest request taken and not yet answered.

        Raises:
            RingError: every taken request is answered; a response now would overwrite a request.
        """
        if self.rsp_prod_pvt == self.req_cons:
            raise RingError(
                f"no taken request awaits a response (rsp_prod_pvt == req_cons == "
                f"{self.req_cons}); take_request() first")
        self.sring.ring[self.sring.slot(self.rsp_prod_pvt)] = response
        self.rsp_prod_pvt = _idx(self.rsp_prod_pvt + 1)
        self.responses_pushed += 1

    def push_responses_and_check_notify(self) -> bool:
        """Publish responses (rsp_prod = rsp_prod_pvt); True if the front end must be notified."""
        old, new = self.sring.rsp_prod, self.rsp_prod_pvt
        # wmb(): the front end must see the responses before the index that covers them.
        self.sring.rsp_prod = new
        # mb(): the front end must see the index before we read rsp_event.
        notify = _must_notify(new, old, self.sring.rsp_event)
        if notify:
            self.notifications_sent += 1
        elif new != old:
            self.notifications_suppressed += 1
        return notify

    def final_check_for_requests(self) -> bool:
        """RING_FINAL_CHECK_FOR_REQUESTS: re-arm req_event, then look again; False means sleep."""
        if self.unconsumed_requests():
            return True
        self.sring.req_event = _idx(self.req_cons + 1)  # notify me on the very next request
        # mb(): the front end must see req_event before we look at req_prod again.
        return self.unconsumed_requests() > 0

    def __repr__(self) -> str:
        return (f"BackRing(size={self.size}, rsp_prod_pvt={self.rsp_prod_pvt}, "
                f"req_cons={self.req_cons})")


@dataclass(frozen=True)
class Segment:
    """One granted frame of a block request: sectors first_sect..last_sect of frame ``gref``."""

    gref: int
    first_sect: int
    last_sect: int

    def __post_init__(self):
        expect_int(self.gref, "gref", maximum=RING_IDX_MOD - 1)
        expect_int(self.first_sect, "first_sect", maximum=SECTORS_PER_FRAME - 1)
        expect_int(self.last_sect, "last_sect", minimum=self.first_sect,
                   maximum=SECTORS_PER_FRAME - 1)

    @property
    def sectors(self) -> int:
        """How many 512-byte sectors the segment covers."""
        return self.last_sect - self.first_sect + 1


@dataclass(frozen=True)
class BlkifRequest:
    """A blkif request: ``operation`` on the disk from ``sector_number``, into up to 11 segments.

    Unknown operation codes are accepted: answering them BLKIF_RSP_EOPNOTSUPP is the back
    end's job, not the ring's.
    """

    id: int
    operation: int
    sector_number: int
    segments: tuple[Segment, ...] = ()

    def __post_init__(self):
        expect_int(self.id, "id", maximum=(1 << 64) - 1)
        expect_int(self.operation, "operation", maximum=255)
        expect_int(self.sector_number, "sector_number", maximum=(1 << 64) - 1)
        if not isinstance(self.segments, tuple) or not all(
                isinstance(s, Segment) for s in self.segments):
            raise RingError("segments must be a tuple of Segment records")
        if len(self.segments) > BLKIF_MAX_SEGMENTS_PER_REQUEST:
            raise RingError(
                f"{len(self.segments)} segments: a blkif request carries at most "
                f"BLKIF_MAX_SEGMENTS_PER_REQUEST = {BLKIF_MAX_SEGMENTS_PER_REQUEST}; "
                f"split the I/O into several requests")
        if self.operation in (BLKIF_OP_READ, BLKIF_OP_WRITE) and not self.segments:
            raise RingError("a read or write needs at least one segment")

    @property
    def sectors(self) -> int:
        """How many 512-byte sectors the request moves."""
        return sum(s.sectors for s in self.segments)


@dataclass(frozen=True)
class BlkifResponse:
    """A blkif response: the request's ``id`` and ``operation``, and a BLKIF_RSP_* status."""

    id: int
    operation: int
    status: int

    def __post_init__(self):
        expect_int(self.id, "id", maximum=(1 << 64) - 1)
        expect_int(self.operation, "operation", maximum=255)
        expect_int(self.status, "status", minimum=-(1 << 15), maximum=(1 << 15) - 1)
