"""Tests for vmkit.io.virtqueue: the virtio split virtqueue of OASIS virtio v1.2 §2.7."""

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmkit.core import VmkitError
from vmkit.io.virtqueue import (
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_F_NO_NOTIFY,
    Device,
    Driver,
    VirtqDesc,
    VirtqUsedElem,
    Virtqueue,
    VirtqueueError,
    VirtqueueFull,
    compare_with_xen,
    vring_need_event,
)


def _queue(size=8, event_idx=False, start=0):
    vq = Virtqueue(size, event_idx=event_idx, start=start)
    return vq, Driver(vq), Device(vq)


@pytest.mark.parametrize("size", [0, 3, 6, 65536])
def test_queue_size_must_be_a_power_of_two_up_to_32768(size):
    """Sizes that are not powers of two in 1..32768 are refused."""
    with pytest.raises(VmkitError):
        Virtqueue(size)


def test_largest_queue_is_32768():
    """The specification's maximum queue size is accepted."""
    assert Virtqueue(32768).size == 32768


def test_descriptor_is_range_checked():
    """A descriptor's len is a le32: 2**32 is refused."""
    with pytest.raises(VmkitError):
        VirtqDesc(addr=0, len=1 << 32)


def test_chain_links_with_next_and_marks_device_writable_parts():
    """out then in_ become one chain: NEXT on all but the last, WRITE on the in_ part only."""
    vq, driver, _ = _queue()
    head = driver.add_buffer([16, (0x5000, 512)], [512, 1])
    chain, i = [vq.desc[head]], head
    while chain[-1].flags & VIRTQ_DESC_F_NEXT:
        i = chain[-1].next
        chain.append(vq.desc[i])
    assert [d.flags for d in chain] == [
        VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_NEXT,
        VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_WRITE]
    assert [d.len for d in chain] == [16, 512, 512, 1]
    assert chain[1].addr == 0x5000


def test_add_buffer_publishes_the_head_in_the_available_ring():
    """The head goes to avail.ring[idx % size] and avail.idx moves by one."""
    vq, driver, _ = _queue()
    driver.add_buffer([8])
    head = driver.add_buffer([8], [8])
    assert (vq.avail.idx, vq.avail.ring[1], driver.num_free) == (2, head, 5)


def test_device_reads_the_chain_the_driver_built():
    """pop_avail returns the head and the descriptors in chain order."""
    vq, driver, device = _queue()
    head = driver.add_buffer([(0x1000, 16)], [(0x2000, 512)])
    chain = device.pop_avail()
    assert chain.head == head
    assert [(d.addr, d.len, d.writable) for d in chain] == [
        (0x1000, 16, False), (0x2000, 512, True)]
    assert device.pop_avail() is None


def test_get_used_returns_head_and_written_length():
    """The driver gets back (head, len) as the device pushed it, then None."""
    vq, driver, device = _queue()
    head = driver.add_buffer([16], [512])
    device.push_used(device.pop_avail().head, 512)
    assert driver.get_used() == (head, 512)
    assert driver.get_used() is None


def test_get_used_returns_descriptors_to_the_free_list():
    """A used chain's descriptors are free again and the next chain reuses them."""
    vq, driver, device = _queue(size=4)
    head = driver.add_buffer([1, 2], [3, 4])
    device.push_used(device.pop_avail().head, 7)
    driver.get_used()
    assert driver.num_free == 4
    assert driver.add_buffer([1, 2], [3, 4]) == head


def test_refuses_a_chain_longer_than_the_free_descriptors():
    """With 3 of 4 descriptors taken a 2-descriptor chain is refused and nothing changes."""
    vq, driver, _ = _queue(size=4)
    driver.add_buffer([1, 1, 1])
    with pytest.raises(VirtqueueFull):
        driver.add_buffer([1], [1])
    assert (driver.num_free, vq.avail.idx) == (1, 1)


def test_refuses_an_empty_chain():
    """A chain with no buffer at all is a caller mistake."""
    _, driver, _ = _queue()
    with pytest.raises(VirtqueueError):
        driver.add_buffer([], [])


def test_device_cannot_report_more_bytes_than_writable():
    """push_used refuses a written length beyond the chain's device-writable bytes."""
    _, driver, device = _queue()
    driver.add_buffer([16], [512])
    head = device.pop_avail().head
    with pytest.raises(VmkitError):
        device.push_used(head, 513)


def test_device_cannot_return_a_chain_it_did_not_take():
    """push_used of a head never popped is refused."""
    _, driver, device = _queue()
    driver.add_buffer([16], [512])
    with pytest.raises(VirtqueueError):
        device.push_used(0, 0)


def test_device_refuses_an_unhashable_head():
    """push_used([0], 0) is a VirtqueueError, not a TypeError."""
    _, driver, device = _queue()
    driver.add_buffer([16])
    device.pop_avail()
    with pytest.raises(VirtqueueError):
        device.push_used([0], 0)


def test_driver_refuses_a_used_id_not_in_flight():
    """A used element naming a chain not in flight is a broken device."""
    vq, driver, device = _queue()
    driver.add_buffer([16])
    device.push_used(device.pop_avail().head, 0)
    vq.used.ring[0] = VirtqUsedElem(id=5, len=0)
    with pytest.raises(VirtqueueError):
        driver.get_used()


@pytest.mark.parametrize("head", [-1, 8, 65535])
def test_device_refuses_an_offered_head_outside_the_table(head):
    """A driver offering a head outside 0..size-1 is broken; the device refuses it."""
    vq, driver, device = _queue()
    driver.add_buffer([16])
    vq.avail.ring[0] = head
    with pytest.raises(VirtqueueError):
        device.pop_avail()


@pytest.mark.parametrize("event, new, old, expected", [
    (0, 1, 0, True),       # the very first buffer after event 0
    (0, 2, 1, False),      # event already passed: stay quiet
    (4, 5, 4, True),       # new moves just past the event
    (4, 4, 3, False),      # not yet past it
    (4, 8, 2, True),       # a batch that jumps over it
    (9, 8, 2, False),      # a batch that stops short of it
    (3, 3, 3, False),      # nothing moved
])
def test_vring_need_event_known_cases(event, new, old, expected):
    """vring_need_event is true iff event lies in [old, new)."""
    assert vring_need_event(event, new, old) is expected


@pytest.mark.parametrize("event, new, old, expected", [
    (0xFFFF, 0, 0xFFFF, True),   # the increment that wraps passes 0xFFFF
    (0xFFFE, 1, 0xFFFD, True),   # a batch across the wrap passes an event before it
    (0, 1, 0xFFFE, True),        # ...and an event after it
    (2, 1, 0xFFFE, False),       # ...but not one beyond new
    (0xFFFC, 1, 0xFFFE, False),  # ...nor one before old
])
def test_vring_need_event_wraps_at_16_bits(event, new, old, expected):
    """The test is modulo 2**16: windows across 0xFFFF -> 0 work like any other."""
    assert vring_need_event(event, new, old) is expected


def test_kick_needed_by_default():
    """Without NO_NOTIFY and without EVENT_IDX, every batch is kicked."""
    _, driver, _ = _queue()
    driver.add_buffer([1])
    assert driver.kick_needed() is True
    assert driver.kicks == 1


def test_no_kick_without_new_chains():
    """kick_needed is False when nothing was added since the last call."""
    _, driver, _ = _queue()
    assert driver.kick_needed() is False


def test_no_notify_flag_suppresses_the_kick():
    """A device that set VIRTQ_USED_F_NO_NOTIFY is not kicked; the count says suppressed."""
    vq, driver, device = _queue()
    device.disable_notifications()
    driver.add_buffer([1])
    assert vq.used.flags & VIRTQ_USED_F_NO_NOTIFY
    assert driver.kick_needed() is False
    assert (driver.kicks, driver.suppressed) == (0, 1)


def test_event_idx_kicks_once_while_the_device_has_not_caught_up():
    """With EVENT_IDX, the first chain is kicked and a second before any pop is not."""
    vq, driver, _ = _queue(event_idx=True)
    driver.add_buffer([1])
    first = driver.kick_needed()
    driver.add_buffer([1])
    assert (first, driver.kick_needed()) == (True, False)


def test_event_idx_kicks_again_once_the_device_caught_up():
    """After the device pops past avail_event, the next chain is kicked again."""
    vq, driver, device = _queue(event_idx=True)
    driver.add_buffer([1])
    driver.kick_needed()
    device.pop_avail()
    driver.add_buffer([1])
    assert driver.kick_needed() is True
    assert vq.used.avail_event == 1


def test_event_idx_ignores_the_no_notify_flag():
    """With EVENT_IDX the device leaves flags at 0 and suppresses through avail_event."""
    vq, driver, device = _queue(event_idx=True)
    device.disable_notifications()
    assert vq.used.flags == 0


def test_no_interrupt_flag_suppresses_the_interrupt():
    """A driver that set VIRTQ_AVAIL_F_NO_INTERRUPT is not interrupted."""
    vq, driver, device = _queue()
    driver.disable_interrupts()
    driver.add_buffer([1])
    device.push_used(device.pop_avail().head, 0)
    assert vq.avail.flags & VIRTQ_AVAIL_F_NO_INTERRUPT
    assert device.interrupt_needed() is False
    assert (device.interrupts, device.suppressed) == (0, 1)


def test_event_idx_interrupts_once_until_the_driver_takes():
    """With EVENT_IDX, the first used buffer interrupts; a second before get_used does not."""
    _, driver, device = _queue(event_idx=True)
    driver.add_buffer([1])
    driver.add_buffer([1])
    device.push_used(device.pop_avail().head, 0)
    first = device.interrupt_needed()
    device.push_used(device.pop_avail().head, 0)
    assert (first, device.interrupt_needed()) == (True, False)


def test_enable_notifications_rechecks_for_chains_added_meanwhile():
    """A device re-enabling kicks sees the chain added while they were off: True, not sleep."""
    _, driver, device = _queue()
    device.disable_notifications()
    driver.add_buffer([1])
    assert driver.kick_needed() is False
    assert device.enable_notifications() is True


def test_ring_wraps_at_16_bits():
    """Starting near 0xFFFF, indices wrap to 0 and buffers still come back."""
    vq, driver, device = _queue(size=4, event_idx=True, start=0xFFFF)
    heads = [driver.add_buffer([1]) for _ in range(3)]
    for _ in heads:
        device.push_used(device.pop_avail().head, 0)
    assert [driver.get_used()[0] for _ in heads] == heads
    assert (vq.avail.idx, vq.used.idx) == (2, 2)


def test_compare_with_xen_maps_the_indices():
    """The comparison table pairs req_prod with avail.idx and rsp_prod with used.idx."""
    table = dict(compare_with_xen())
    assert "avail.idx" in table["req_prod (32-bit, free-running)"]
    assert "used.idx" in table["rsp_prod (32-bit, free-running)"]
    assert all(isinstance(row, tuple) and len(row) == 2 for row in compare_with_xen())


class _System:
    """A driver and an in-order device that sleep and wake only through kicks and interrupts."""

    def __init__(self, size, event_idx, start, total):
        self.vq, self.driver, self.device = _queue(size, event_idx, start)
        self.total = total
        self.next_buffer = 0
        self.expected = deque()           # heads in the order they were offered
        self.delivered = []               # buffer numbers, in the order the driver got them
        self.number = {}                  # head -> buffer number, while in flight
        self.taken = deque()              # chains the device popped, in order
        self.awake = {"driver": True, "device": True}
        self.dozing = {"driver": False, "device": False}   # saw no work, not yet re-armed

    def actions(self):
        """The steps enabled now, in a fixed order."""
        found = []
        if self.next_buffer < self.total and self.driver.num_free >= 2:
            found.append(self.driver_add)
        if self.dozing["driver"]:
            found.append(self.driver_final_check)
        elif self.awake["driver"]:
            found.append(self.driver_take if self.driver.has_used() else self.driver_doze)
            found.append(self.driver.disable_interrupts)
        if self.dozing["device"]:
            found.append(self.device_final_check)
        elif self.awake["device"]:
            if self.device.has_avail():
                found.append(self.device_pop)
            if self.taken:
                found.append(self.device_push)
            if not self.device.has_avail() and not self.taken:
                found.append(self.device_doze)
            found.append(self.device.disable_notifications)
        return found

    def driver_add(self):
        head = self.driver.add_buffer([16], [512])
        self.number[head] = self.next_buffer
        self.expected.append(head)
        self.next_buffer += 1
        if self.driver.kick_needed():
            self.awake["device"] = True

    def driver_take(self):
        head, written = self.driver.get_used()
        assert head == self.expected.popleft() and written == 512
        self.delivered.append(self.number.pop(head))

    def driver_doze(self):
        self.dozing["driver"] = True

    def driver_final_check(self):
        self.dozing["driver"] = False
        if not self.driver.enable_interrupts():
            self.awake["driver"] = False

    def device_pop(self):
        self.taken.append(self.device.pop_avail())

    def device_push(self):
        chain = self.taken.popleft()
        self.device.push_used(chain.head, chain.writable_len)
        if self.device.interrupt_needed():
            self.awake["driver"] = True

    def device_doze(self):
        self.dozing["device"] = True

    def device_final_check(self):
        self.dozing["device"] = False
        if not self.device.enable_notifications():
            self.awake["device"] = False

    def check_no_lost_notification(self):
        """A sleeping side has nothing waiting for it: every needed notification was sent."""
        assert self.awake["device"] or not self.device.has_avail()
        assert self.awake["driver"] or not self.driver.has_used()


@settings(max_examples=300, deadline=None)
@given(
    size=st.sampled_from([2, 4, 8]),
    event_idx=st.booleans(),
    start=st.sampled_from([0, 0xFFFF - 3, 0xFFFF]),
    total=st.integers(min_value=0, max_value=30),
    choices=st.lists(st.integers(min_value=0, max_value=7), max_size=300),
)
def test_any_interleaving_delivers_every_buffer_once_in_order(
        size, event_idx, start, total, choices):
    """Any interleaving delivers every buffer once, in order, never losing a needed notification."""
    system = _System(size, event_idx, start, total)
    for choice in choices:
        enabled = system.actions()
        if not enabled:
            break
        enabled[choice % len(enabled)]()
        system.check_no_lost_notification()
    for _ in range(20 * total + 100):  # drain: prefer real work, then let each side sleep
        enabled = system.actions()
        busy = [a for a in enabled if a.__name__ not in ("disable_interrupts",
                                                         "disable_notifications")]
        if not busy:
            break
        busy[0]()
        system.check_no_lost_notification()
    assert system.delivered == list(range(total))
    assert system.driver.num_free == size and not system.device.taken
    assert system.awake == {"driver": False, "device": False}
