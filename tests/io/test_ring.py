"""Tests for vmkit.io.ring: the Xen shared ring of io/ring.h and the blkif records."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmkit.core import VmkitError
from vmkit.io.ring import (
    BLKIF_ENTRY_SIZE,
    BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_RSP_OKAY,
    NETIF_RX_ENTRY_SIZE,
    NETIF_TX_ENTRY_SIZE,
    BackRing,
    BlkifRequest,
    BlkifResponse,
    FrontRing,
    RingError,
    RingFull,
    RingOverflow,
    Segment,
    SharedRing,
    ring_size,
)

NEAR_WRAP = 2**32 - 3


def _rings(entry_size=BLKIF_ENTRY_SIZE, start=0):
    sring = SharedRing(entry_size)
    front = FrontRing(sring, start=start)
    return sring, front, BackRing(sring)


def _read(id_, sector=0):
    segment = Segment(gref=8 + id_, first_sect=0, last_sect=7)
    return BlkifRequest(id_, BLKIF_OP_READ, sector, (segment,))


def test_blkif_ring_holds_32_entries():
    """A 112-byte blkif entry gives the classic 32-entry ring."""
    assert ring_size(BLKIF_ENTRY_SIZE) == 32


def test_netif_rings_hold_256_entries():
    """netif TX (12 bytes) and RX (8 bytes) entries both round down to 256."""
    assert (ring_size(NETIF_TX_ENTRY_SIZE), ring_size(NETIF_RX_ENTRY_SIZE)) == (256, 256)


def test_ring_size_refuses_an_entry_larger_than_the_page():
    """An entry that does not fit after the 64-byte header is refused."""
    with pytest.raises(VmkitError):
        ring_size(4096 - 64 + 1)


def test_front_initialises_the_shared_ring():
    """SHARED_RING_INIT sets producers to 0 and events to 1; private indexes start at 0."""
    sring, front, back = _rings()
    fields = (sring.req_prod, sring.req_event, sring.rsp_prod, sring.rsp_event)
    assert fields == (0, 1, 0, 1)
    assert (front.req_prod_pvt, front.rsp_cons, back.rsp_prod_pvt, back.req_cons) == (0, 0, 0, 0)


def test_back_end_does_not_initialise_the_shared_ring():
    """Attaching a BackRing leaves the shared page as it found it."""
    sring = SharedRing()
    BackRing(sring)
    assert (sring.req_prod, sring.req_event, sring.rsp_prod, sring.rsp_event) == (0, 0, 0, 0)


def test_request_and_response_round_trip():
    """A request pushed by the front reaches the back, and its response reaches the front."""
    _, front, back = _rings()
    front.push_request(_read(7))
    front.push_requests_and_check_notify()
    request = back.take_request()
    back.push_response(BlkifResponse(request.id, request.operation, BLKIF_RSP_OKAY))
    back.push_responses_and_check_notify()
    assert request == _read(7)
    assert front.take_response() == BlkifResponse(7, BLKIF_OP_READ, BLKIF_RSP_OKAY)


def test_response_reuses_the_request_slot():
    """Requests and responses share slots: the response overwrites its request's slot."""
    sring, front, back = _rings()
    front.push_request(_read(1))
    front.push_requests_and_check_notify()
    back.push_response(BlkifResponse(back.take_request().id, BLKIF_OP_READ, BLKIF_RSP_OKAY))
    assert sring.ring[0] == BlkifResponse(1, BLKIF_OP_READ, BLKIF_RSP_OKAY)


def test_pushed_request_is_invisible_until_published():
    """push_request writes only the private index; the back end sees nothing before the push."""
    _, front, back = _rings()
    front.push_request(_read(1))
    assert back.unconsumed_requests() == 0


def test_full_ring_refuses_a_push_without_overwriting():
    """Pushing into a full ring raises RingFull and leaves every slot and index unchanged."""
    sring, front, _ = _rings()
    for i in range(32):
        front.push_request(_read(i))
    before = (list(sring.ring), front.req_prod_pvt)
    with pytest.raises(RingFull):
        front.push_request(_read(99))
    assert front.full() and (list(sring.ring), front.req_prod_pvt) == before


def test_unconsumed_responses_still_occupy_slots():
    """A slot frees only when the front takes its response, not when the back answers."""
    _, front, back = _rings()
    for i in range(32):
        front.push_request(_read(i))
    front.push_requests_and_check_notify()
    back.push_response(BlkifResponse(back.take_request().id, BLKIF_OP_READ, BLKIF_RSP_OKAY))
    back.push_responses_and_check_notify()
    assert front.full()
    front.take_response()
    assert front.free_requests() == 1


def test_first_push_after_init_notifies():
    """req_event = 1 after init, so the first published request notifies the back end."""
    _, front, _ = _rings()
    front.push_request(_read(1))
    assert front.push_requests_and_check_notify() is True


def test_second_push_before_rearm_does_not_notify():
    """While the back end has not re-armed req_event, further pushes stay silent."""
    _, front, _ = _rings()
    front.push_request(_read(1))
    front.push_requests_and_check_notify()
    front.push_request(_read(2))
    assert front.push_requests_and_check_notify() is False


def test_push_after_final_check_notifies_again():
    """Once the back end drains and its final check re-arms req_event, the next push notifies."""
    _, front, back = _rings()
    front.push_request(_read(1))
    front.push_requests_and_check_notify()
    back.take_request()
    assert back.final_check_for_requests() is False
    front.push_request(_read(2))
    assert front.push_requests_and_check_notify() is True


def test_batch_crossing_the_event_notifies_once():
    """A batch of pushes published together notifies once and counts once."""
    _, front, _ = _rings()
    for i in range(5):
        front.push_request(_read(i))
    assert front.push_requests_and_check_notify() is True
    assert (front.requests_pushed, front.notifications_sent) == (5, 1)


def test_empty_publish_does_not_notify():
    """Publishing with nothing new pushed never notifies."""
    _, front, _ = _rings()
    assert front.push_requests_and_check_notify() is False


def test_final_check_finds_a_response_pushed_without_notification():
    """A response published unnotified between an empty check and sleep is found by the final check."""
    _, front, back = _rings()
    front.push_request(_read(1))
    front.push_requests_and_check_notify()
    front.push_request(_read(2))
    front.push_requests_and_check_notify()
    back.push_response(BlkifResponse(back.take_request().id, BLKIF_OP_READ, BLKIF_RSP_OKAY))
    assert back.push_responses_and_check_notify() is True
    assert front.take_response().id == 1
    assert front.unconsumed_responses() == 0       # the front is about to sleep...
    back.push_response(BlkifResponse(back.take_request().id, BLKIF_OP_READ, BLKIF_RSP_OKAY))
    assert back.push_responses_and_check_notify() is False  # ...rsp_event not yet re-armed
    assert front.final_check_for_responses() is True


def test_final_check_arms_the_event_one_past_the_consumer():
    """RING_FINAL_CHECK_FOR_RESPONSES sets rsp_event = rsp_cons + 1 when nothing is waiting."""
    sring, front, _ = _rings(start=40)
    assert front.final_check_for_responses() is False
    assert sring.rsp_event == 41


def test_counters_wrap_at_two_to_the_32():
    """Indexes started near 2**32 wrap to small values and the ring keeps working."""
    sring, front, back = _rings(start=NEAR_WRAP)
    for i in range(6):
        front.push_request(_read(i))
    assert front.push_requests_and_check_notify() is True
    taken = [back.take_request().id for _ in range(6)]
    for id_ in taken:
        back.push_response(BlkifResponse(id_, BLKIF_OP_READ, BLKIF_RSP_OKAY))
    back.push_responses_and_check_notify()
    got = [front.take_response().id for _ in range(6)]
    assert taken == got == list(range(6))
    assert (sring.req_prod, sring.rsp_prod, front.rsp_cons) == (3, 3, 3)


def test_notify_rule_across_the_wrap():
    """The notify test is modular: an event at 2**32-1 inside (2**32-3, 1] notifies."""
    sring, front, back = _rings(start=NEAR_WRAP)
    front.push_request(_read(0))
    front.push_requests_and_check_notify()
    back.take_request()
    back.final_check_for_requests()
    assert sring.req_event == 2**32 - 1
    for i in range(3):
        front.push_request(_read(i))
    assert front.push_requests_and_check_notify() is True and sring.req_prod == 1


def test_full_ring_across_the_wrap():
    """RING_FULL holds across the wrap: 32 in flight from 2**32-3 fills the ring."""
    _, front, _ = _rings(start=NEAR_WRAP)
    for i in range(32):
        front.push_request(_read(i))
    assert front.full() and front.req_prod_pvt == 29


def test_request_prod_overflow_is_detected():
    """A front end claiming more than size outstanding requests is detected and refused."""
    sring, front, back = _rings()
    front.push_request(_read(1))
    front.push_requests_and_check_notify()
    sring.req_prod = 33  # a misbehaving front end
    assert back.request_prod_overflow()
    with pytest.raises(RingOverflow):
        back.take_request()


def test_request_prod_overflow_is_detected_across_the_wrap():
    """The overflow check is modular too."""
    sring, _, back = _rings(start=NEAR_WRAP)
    sring.req_prod = (NEAR_WRAP + 33) % 2**32
    assert back.request_prod_overflow()


def test_unconsumed_requests_never_exceed_free_slots():
    """The min() guard caps unconsumed requests at the slots the back end's responses leave."""
    sring, _, back = _rings()
    sring.req_prod = 40
    assert back.unconsumed_requests() == 32


def test_response_prod_overflow_is_refused():
    """A back end claiming more than size responses is refused by take_response."""
    sring, front, _ = _rings()
    sring.rsp_prod = 33
    with pytest.raises(RingOverflow):
        front.take_response()


def test_take_request_copies_the_slot():
    """RING_COPY_REQUEST: changing the slot after the take does not change the back end's copy."""
    sring, front, back = _rings()
    payload = {"sector": 8}
    front.push_request(payload)
    front.push_requests_and_check_notify()
    copy = back.take_request()
    payload["sector"] = 999_999  # the front end rewrites the request after validation
    assert copy == {"sector": 8}


def test_take_from_empty_ring_is_refused():
    """Taking a request or a response that is not there raises RingError."""
    _, front, back = _rings()
    with pytest.raises(RingError):
        back.take_request()
    with pytest.raises(RingError):
        front.take_response()


def test_response_without_request_is_refused():
    """A back end answering no taken request would overwrite a request: refused."""
    sring, front, back = _rings()
    front.push_request(_read(1))
    front.push_requests_and_check_notify()
    with pytest.raises(RingError):
        back.push_response(BlkifResponse(1, BLKIF_OP_READ, BLKIF_RSP_OKAY))
    assert sring.ring[0] == _read(1)


def test_front_refuses_more_responses_than_requests_outstanding():
    """A back end publishing a response to a request never made is disconnected."""
    sring, front, _ = _rings()
    front.push_request(_read(1))
    front.push_requests_and_check_notify()
    sring.rsp_prod = 2
    with pytest.raises(RingOverflow):
        front.take_response()


@pytest.mark.parametrize("view", [FrontRing, BackRing])
def test_ring_view_refuses_something_that_is_not_a_shared_ring(view):
    """FrontRing(None) or BackRing(None) says what to pass, not an AttributeError."""
    with pytest.raises(VmkitError, match="SharedRing"):
        view(None)


def test_eleven_segments_accepted():
    """A request with BLKIF_MAX_SEGMENTS_PER_REQUEST = 11 segments is accepted."""
    segments = tuple(Segment(g, 0, 7) for g in range(11))
    assert len(BlkifRequest(1, BLKIF_OP_WRITE, 0, segments).segments) == 11


def test_more_than_eleven_segments_refused():
    """A twelfth segment is refused with a VmkitError naming the limit."""
    segments = tuple(Segment(g, 0, 7) for g in range(BLKIF_MAX_SEGMENTS_PER_REQUEST + 1))
    with pytest.raises(VmkitError, match="BLKIF_MAX_SEGMENTS_PER_REQUEST"):
        BlkifRequest(1, BLKIF_OP_WRITE, 0, segments)


def test_segment_sectors_stay_in_the_frame():
    """A segment's sectors lie within one 4 KiB frame: last_sect above 7 is refused."""
    with pytest.raises(VmkitError):
        Segment(gref=1, first_sect=0, last_sect=8)


# The property test: a front end and a back end that sleep, each woken only by a notification
# from the other, taking turns in any order hypothesis picks. Going to sleep takes two steps,
# "saw no work" then the final check, so the other side can publish without notifying in
# between: the race RING_FINAL_CHECK_FOR_* exists to close. Each ring.h macro runs atomically
# here (no threads), so a race inside a macro is out of this model's reach.

class _System:
    """Front end, back end and two coalescing event channels, driven one step at a time."""

    def __init__(self, entry_size, start, total):
        self.sring, self.front, self.back = _rings(entry_size, start)
        self.total = total
        self.next_id = 0
        self.received = []
        self.taken = []                 # taken by the back end, not yet answered
        self.awake = {"front": True, "back": False}
        self.pending = {"front": False, "back": False}   # event channel bits
        self.dozing = {"front": False, "back": False}    # saw no work, final check not yet run

    def _runs(self, side):
        return self.awake[side] or self.pending[side]

    def _wake(self, side):
        self.pending[side] = False
        self.awake[side] = True

    def actions(self):
        """The steps enabled now, in a fixed order."""
        f, b = self.front, self.back
        found = []
        if self.next_id < self.total and not f.full():
            found.append(self.front_push)
        if f.req_prod_pvt != self.sring.req_prod:
            found.append(self.front_publish)
        if self.dozing["front"]:
            found.append(self.front_final_check)
        elif self._runs("front"):
            found.append(self.front_take if f.unconsumed_responses() else self.front_doze)
        if self.dozing["back"]:
            found.append(self.back_final_check)
        elif self._runs("back"):
            if b.unconsumed_requests():
                found.append(self.back_take)
            if self.taken:
                found.append(self.back_respond)
            if b.rsp_prod_pvt != self.sring.rsp_prod:
                found.append(self.back_publish)
            idle = not b.unconsumed_requests() and not self.taken
            if idle and b.rsp_prod_pvt == self.sring.rsp_prod:
                found.append(self.back_doze)
        return found

    def front_push(self):
        self.front.push_request(_read(self.next_id, sector=self.next_id))
        self.next_id += 1

    def front_publish(self):
        if self.front.push_requests_and_check_notify():
            self.pending["back"] = True

    def front_take(self):
        self._wake("front")
        self.received.append(self.front.take_response().id)

    def front_doze(self):
        self._wake("front")
        self.dozing["front"] = True

    def front_final_check(self):
        self._wake("front")
        self.dozing["front"] = False
        if not self.front.final_check_for_responses():
            self.awake["front"] = False

    def back_take(self):
        self._wake("back")
        self.taken.append(self.back.take_request())

    def back_respond(self):
        self._wake("back")
        request = self.taken.pop(0)
        self.back.push_response(BlkifResponse(request.id, request.operation, BLKIF_RSP_OKAY))

    def back_publish(self):
        self._wake("back")
        if self.back.push_responses_and_check_notify():
            self.pending["front"] = True

    def back_doze(self):
        self._wake("back")
        self.dozing["back"] = True

    def back_final_check(self):
        self._wake("back")
        self.dozing["back"] = False
        if not self.back.final_check_for_requests():
            self.awake["back"] = False


@settings(max_examples=300, deadline=None)
@given(
    entry_size=st.sampled_from([BLKIF_ENTRY_SIZE, 1000, 2016, 4032]),  # sizes 32, 4, 2, 1
    start=st.sampled_from([0, 2**32 - 5, 2**32 - 1]),
    total=st.integers(min_value=0, max_value=40),
    choices=st.lists(st.integers(min_value=0, max_value=7), max_size=300),
)
def test_any_interleaving_delivers_every_request_once_in_order(entry_size, start, total, choices):
    """Any interleaving answers every request once, in order, and drains (no missed notify)."""
    system = _System(entry_size, start, total)
    for choice in choices:
        enabled = system.actions()
        if not enabled:
            break
        enabled[choice % len(enabled)]()
    for _ in range(20 * total + 100):  # drain: each side runs only when awake or notified
        enabled = system.actions()
        if not enabled:
            break
        enabled[0]()
    assert system.actions() == []
    assert system.received == list(range(total))
    assert system.front.unconsumed_responses() == 0 and system.back.unconsumed_requests() == 0
