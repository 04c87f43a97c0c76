"""The virtio split virtqueue: a descriptor table, an available ring and a used ring.

The modern counterpart of Xen's shared ring (``ring.py``), as the OASIS "Virtual I/O Device
(VIRTIO) Version 1.2" specification defines it in §2.7 "Split Virtqueues" (also v1.1 §2.6),
with the notification hold-off test ``vring_need_event`` of Linux
include/uapi/linux/virtio_ring.h (Rusty Russell, 2007). Three areas in guest memory::

    Descriptor Table  struct virtq_desc desc[size]       written by the driver
        le64 addr   guest-physical address of the buffer
        le32 len    its length in bytes
        le16 flags  NEXT 1 | WRITE 2 | INDIRECT 4
        le16 next   the next descriptor of the chain, when NEXT is set

    Available Ring    struct virtq_avail                 written by the driver
        le16 flags      NO_INTERRUPT 1
        le16 idx        free-running; where the driver puts the next head
        le16 ring[size] heads of descriptor chains
        le16 used_event only with VIRTIO_F_EVENT_IDX

    Used Ring         struct virtq_used                  written by the device
        le16 flags      NO_NOTIFY 1
        le16 idx        free-running; where the device puts the next element
        struct virtq_used_elem { le32 id; le32 len; } ring[size]
        le16 avail_event only with VIRTIO_F_EVENT_IDX

Unlike Xen, which shares one slot array between requests and responses, virtio keeps the
buffers (descriptors) apart from the two rings that pass their heads back and forth, so the
device may return buffers out of order. Indices are free-running 16-bit counters; a slot is
``idx % size``, which is why the size is a power of two.

Linux's names become methods (``virtqueue_add_sgs`` -> ``Driver.add_buffer``,
``virtqueue_kick_prepare`` -> ``Driver.kick_needed``, ``virtqueue_get_buf`` ->
``Driver.get_used``). Deliberately simple: pure data, no threads, so the memory barriers are
comments; buffers are (address, length) pairs, never bytes; INDIRECT is named but the driver
never builds indirect tables and the device does not follow them. Taught in
course/03_io/02_xen_split_drivers.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterator, Sequence
from typing import Union

from vmkit.core import VmkitError, expect_int

VIRTQ_IDX_MOD = 1 << 16      # avail.idx, used.idx and the event indices are le16
VIRTQ_MAX_SIZE = 32768       # §2.7: "Queue Size ... the maximum Queue Size value is 32768"

VIRTQ_DESC_F_NEXT = 1        # the buffer continues in desc[next]
VIRTQ_DESC_F_WRITE = 2       # device-writable (otherwise device-readable)
VIRTQ_DESC_F_INDIRECT = 4    # the buffer holds a table of descriptors
VIRTQ_AVAIL_F_NO_INTERRUPT = 1   # driver to device: do not interrupt me (without EVENT_IDX)
VIRTQ_USED_F_NO_NOTIFY = 1       # device to driver: do not kick me (without EVENT_IDX)

VIRTIO_F_INDIRECT_DESC = 28  # feature bits, §6 "Reserved Feature Bits"
VIRTIO_F_EVENT_IDX = 29

# Where add_buffer places buffers given only as a length: a made-up guest-physical pool.
BUFFER_POOL_GPA = 0x1000_0000
BUFFER_ALIGN = 16

Buffer = Union[int, tuple[int, int]]   # a length, or a (gpa, length) pair


class VirtqueueError(VmkitError):
    """A virtqueue used out of protocol, or a queue size the specification forbids."""


class VirtqueueFull(VirtqueueError):
    """Not enough free descriptors for the chain; nothing was written."""


def _idx(value: int) -> int:
    """Reduce to a le16 index, as the C u16 arithmetic does."""
    return value % VIRTQ_IDX_MOD


def vring_need_event(event_idx: int, new: int, old: int) -> bool:
    """Whether moving an index from ``old`` to ``new`` passes ``event_idx`` (virtio_ring.h).

    True iff event_idx lies in [old, new) modulo 2**16: the other side asked to be told once
    the index goes past event_idx. Xen's test is the same with req_event = event_idx + 1.
    """
    return _idx(new - event_idx - 1) < _idx(new - old)


@dataclass(frozen=True)
class VirtqDesc:
    """One descriptor, ``struct virtq_desc``: a guest-physical buffer and its chain link."""

    addr: int
    len: int
    flags: int = 0
    next: int = 0

    def __post_init__(self):
        expect_int(self.addr, "addr", maximum=(1 << 64) - 1)
        expect_int(self.len, "len", maximum=(1 << 32) - 1)
        expect_int(self.flags, "flags", maximum=VIRTQ_IDX_MOD - 1)
        expect_int(self.next, "next", maximum=VIRTQ_IDX_MOD - 1)

    @property
    def has_next(self) -> bool:
        """VIRTQ_DESC_F_NEXT: the chain continues in ``desc[next]``."""
        return bool(self.flags & VIRTQ_DESC_F_NEXT)

    @property
    def writable(self) -> bool:
        """VIRTQ_DESC_F_WRITE: the device writes this buffer (an "in" buffer)."""
        return bool(self.flags & VIRTQ_DESC_F_WRITE)


@dataclass(frozen=True)
class VirtqUsedElem:
    """One used-ring element: the chain's head ``id`` and the bytes the device wrote."""

    id: int
    len: int


@dataclass(frozen=True)
class Chain:
    """A descriptor chain as the device read it: its head index and its descriptors, in order.

    Iterates, indexes and measures like the list of VirtqDesc it holds.
    """

    head: int
    descs: tuple[VirtqDesc, ...]

    def __iter__(self) -> Iterator[VirtqDesc]:
        return iter(self.descs)

    def __len__(self) -> int:
        return len(self.descs)

    def __getitem__(self, i: int) -> VirtqDesc:
        return self.descs[i]

    @property
    def readable_len(self) -> int:
        """Bytes the driver gave the device to read."""
        return sum(d.len for d in self.descs if not d.writable)

    @property
    def writable_len(self) -> int:
        """Bytes the device may write; the most ``push_used`` may report."""
        return sum(d.len for d in self.descs if d.writable)


class VirtqAvail:
    """The available ring, ``struct virtq_avail``: written by the driver, read by the device."""

    def __init__(self, size: int, start: int = 0):
        self.flags = 0
        self.idx = start
        self.ring: list[int] = [0] * size
        self.used_event = start   # meaningful only with VIRTIO_F_EVENT_IDX

    def __repr__(self) -> str:
        return f"VirtqAvail(flags={self.flags}, idx={self.idx}, used_event={self.used_event})"


class VirtqUsed:
    """The used ring, ``struct virtq_used``: written by the device, read by the driver."""

    def __init__(self, size: int, start: int = 0):
        self.flags = 0
        self.idx = start
        self.ring: list[VirtqUsedElem] = [VirtqUsedElem(0, 0)] * size
        self.avail_event = start  # meaningful only with VIRTIO_F_EVENT_IDX

    def __repr__(self) -> str:
        return f"VirtqUsed(flags={self.flags}, idx={self.idx}, avail_event={self.avail_event})"


class Virtqueue:
    """The three areas in guest memory that driver and device share, zeroed as at reset.

    ``event_idx`` says whether VIRTIO_F_EVENT_IDX was negotiated. Indices start at 0 after a
    reset; ``start`` lets a lesson show the 16-bit wrap without 65,536 buffers.
    """

    def __init__(self, size: int, event_idx: bool = False, start: int = 0):
        expect_int(size, "size", minimum=1, maximum=VIRTQ_MAX_SIZE)
        if size & (size - 1):
            below = 1 << (size.bit_length() - 1)
            raise VirtqueueError(f"queue size {size} is not a power of two (§2.7); try {below}")
        start = expect_int(start, "start", maximum=VIRTQ_IDX_MOD - 1)
        self.size = size
        self.event_idx = bool(event_idx)
        self.desc: list[VirtqDesc] = [VirtqDesc(0, 0) for _ in range(size)]
        self.avail = VirtqAvail(size, start)
        self.used = VirtqUsed(size, start)

    def __repr__(self) -> str:
        return (f"Virtqueue(size={self.size}, event_idx={self.event_idx}, "
                f"avail.idx={self.avail.idx}, used.idx={self.used.idx})")


class Driver:
    """The driver's side (the guest): fills descriptors, offers chains, takes used buffers back.

    Private state, as Linux's ``struct vring_virtqueue``: the free list threaded through
    ``desc[].next`` from ``free_head``, ``num_free``, ``last_used_idx``, and the chains in
    flight. Creating it links every descriptor into the free list.
    """

    def __init__(self, vq: Virtqueue):
        self.vq = vq
        for i in range(vq.size):   # desc[i].next = i + 1: the free list is the whole table
            vq.desc[i] = VirtqDesc(0, 0, 0, (i + 1) % vq.size)
        self.free_head = 0
        self.num_free = vq.size
        self.last_used_idx = vq.used.idx
        self.num_added = 0            # chains made available since the last kick_needed()
        self.in_flight: dict[int, int] = {}   # head -> descriptors in its chain
        self._next_gpa = BUFFER_POOL_GPA
        self._interrupts_enabled = True
        self.kicks = 0
        self.suppressed = 0           # kick_needed() said no although chains were added

    def _buffer(self, buffer: Buffer) -> tuple[int, int]:
        """A (gpa, len) pair; a bare length gets the next address of the made-up pool."""
        if isinstance(buffer, tuple):
            if len(buffer) != 2:
                raise VirtqueueError(f"a buffer is a length or an (addr, len) pair, not {buffer!r}")
            addr, length = buffer
            return (expect_int(addr, "addr", maximum=(1 << 64) - 1),
                    expect_int(length, "len", maximum=(1 << 32) - 1))
        length = expect_int(buffer, "len", maximum=(1 << 32) - 1)
        addr = self._next_gpa
        step = max(length, 1) + BUFFER_ALIGN - 1
        self._next_gpa = (addr + step - step % BUFFER_ALIGN) % (1 << 64)
        return addr, length

    def add_buffer(self, out: Sequence[Buffer], in_: Sequence[Buffer] = ()) -> int:
        """Chain ``out`` (device-readable) then ``in_`` (device-writable) buffers; return the head.

        Raises:
            VirtqueueFull: fewer than len(out) + len(in_) free descriptors; nothing was written.
        """
        parts = [(b, 0) for b in out] + [(b, VIRTQ_DESC_F_WRITE) for b in in_]
        if not parts:
            raise VirtqueueError("a chain needs at least one buffer in out or in_")
        if len(parts) > self.num_free:
            raise VirtqueueFull(
                f"{len(parts)} descriptors needed, {self.num_free} free of {self.vq.size}; "
                f"take used buffers with get_used() first")
        pairs = [(self._buffer(b), flags) for b, flags in parts]
        desc = self.vq.desc
        head = i = self.free_head
        for n, ((addr, length), flags) in enumerate(pairs):
            link = desc[i].next
            last = n == len(pairs) - 1
            # The last descriptor keeps its link into the free list, but without NEXT.
            desc[i] = VirtqDesc(addr, length, flags | (0 if last else VIRTQ_DESC_F_NEXT), link)
            i = link
        self.free_head = i
        self.num_free -= len(pairs)
        self.in_flight[head] = len(pairs)
        avail = self.vq.avail
        avail.ring[avail.idx % self.vq.size] = head
        # wmb(): the device must see the descriptors and the ring entry before the index.
        avail.idx = _idx(avail.idx + 1)
        self.num_added += 1
        return head

    def kick_needed(self) -> bool:
        """Whether the device must be notified of the chains added since the last call."""
        new = self.vq.avail.idx
        old = _idx(new - self.num_added)
        added, self.num_added = self.num_added, 0
        # mb(): the device must see avail.idx before we read its flags or avail_event.
        if self.vq.event_idx:
            needed = vring_need_event(self.vq.used.avail_event, new, old)
        else:
            needed = not self.vq.used.flags & VIRTQ_USED_F_NO_NOTIFY
        if needed and added:
            self.kicks += 1
        elif added:
            self.suppressed += 1
        return needed and added > 0

    def has_used(self) -> bool:
        """Whether the device has returned a chain we have not taken yet."""
        return self.last_used_idx != self.vq.used.idx

    def get_used(self) -> tuple[int, int] | None:
        """Take the next used element as (head, bytes written) and free its chain, or None.

        Raises:
            VirtqueueError: the device returned a head that is not in flight.
        """
        used = self.vq.used
        pending = _idx(used.idx - self.last_used_idx)
        if not pending:
            return None
        if pending > self.vq.size:
            raise VirtqueueError(
                f"device published used.idx={used.idx} with last_used_idx={self.last_used_idx}: "
                f"more than {self.vq.size} buffers; reset this device")
        # rmb(): read the element only after seeing the index that covers it.
        elem = used.ring[self.last_used_idx % self.vq.size]
        if elem.id not in self.in_flight:
            raise VirtqueueError(f"device returned id {elem.id}, which is not a chain in flight")
        self._free_chain(elem.id)
        self.last_used_idx = _idx(self.last_used_idx + 1)
        if self.vq.event_idx and self._interrupts_enabled:
            self.vq.avail.used_event = self.last_used_idx   # interrupt me on the next one
        return elem.id, elem.len

    def _free_chain(self, head: int) -> None:
        """Put a returned chain back at the front of the free list (detach_buf_split)."""
        desc, i, count = self.vq.desc, head, 1
        while desc[i].has_next:
            i, count = desc[i].next, count + 1
        assert count == self.in_flight.pop(head), "descriptors of a chain in flight changed"
        d = desc[i]
        desc[i] = VirtqDesc(d.addr, d.len, d.flags, self.free_head)
        self.free_head = head
        self.num_free += count

    def disable_interrupts(self) -> None:
        """Ask the device not to interrupt (virtqueue_disable_cb): we are polling anyway.

        Without EVENT_IDX, set NO_INTERRUPT; with it, the flag must stay 0 (§2.7.10), so we
        simply stop moving used_event, which the device soon leaves behind.
        """
        self._interrupts_enabled = False
        if not self.vq.event_idx:
            self.vq.avail.flags |= VIRTQ_AVAIL_F_NO_INTERRUPT

    def enable_interrupts(self) -> bool:
        """Re-arm interrupts, then look again; True means used buffers wait, False means sleep.

        The re-check closes the race with a device that pushed while interrupts were off.
        (Linux's virtqueue_enable_cb returns the opposite: True when it is safe to sleep.)
        """
        self._interrupts_enabled = True
        if self.vq.event_idx:
            self.vq.avail.used_event = self.last_used_idx
        else:
            self.vq.avail.flags &= ~VIRTQ_AVAIL_F_NO_INTERRUPT
        # mb(): the device must see the re-armed event before we read used.idx again.
        return self.has_used()

    def __repr__(self) -> str:
        return (f"Driver(num_free={self.num_free}, free_head={self.free_head}, "
                f"last_used_idx={self.last_used_idx})")


class Device:
    """The device's side (the host): takes available chains, returns them through the used ring.

    Private state: ``last_avail_idx``, the chains taken and not yet returned, and
    ``num_added`` for the interrupt test. The device never writes descriptors.
    """

    def __init__(self, vq: Virtqueue):
        self.vq = vq
        self.last_avail_idx = vq.avail.idx
        self.num_added = 0            # used elements pushed since the last interrupt_needed()
        self.taken: dict[int, Chain] = {}
        self._notifications_enabled = True
        self.interrupts = 0
        self.suppressed = 0           # interrupt_needed() said no although buffers were used

    def has_avail(self) -> bool:
        """Whether the driver has offered a chain we have not taken yet."""
        return self.last_avail_idx != self.vq.avail.idx

    def pop_avail(self) -> Chain | None:
        """Take the next available chain, following NEXT links, or None when there is none.

        Raises:
            VirtqueueError: the driver published an impossible avail.idx, head or chain.
        """
        vq = self.vq
        pending = _idx(vq.avail.idx - self.last_avail_idx)
        if not pending:
            return None
        if pending > vq.size:
            raise VirtqueueError(
                f"driver published avail.idx={vq.avail.idx} with last_avail_idx="
                f"{self.last_avail_idx}: more than {vq.size} chains; mark the device broken")
        # rmb(): read the ring entry only after seeing the index that covers it.
        head = vq.avail.ring[self.last_avail_idx % vq.size]
        if not isinstance(head, int) or not 0 <= head < vq.size or head in self.taken:
            raise VirtqueueError(f"driver offered head {head}, not a free descriptor index")
        descs, i = [vq.desc[head]], head
        while descs[-1].has_next:     # §2.7.5: a chain longer than the table is a loop
            i = descs[-1].next
            if i >= vq.size or len(descs) == vq.size:
                raise VirtqueueError(f"chain from head {head} leaves the table or loops")
            descs.append(vq.desc[i])
        self.last_avail_idx = _idx(self.last_avail_idx + 1)
        if vq.event_idx and self._notifications_enabled:
            vq.used.avail_event = self.last_avail_idx   # kick me past what I have taken
        chain = Chain(head, tuple(descs))
        self.taken[head] = chain
        return chain

    def push_used(self, head: int, written_len: int) -> None:
        """Return the chain at ``head``, reporting ``written_len`` bytes written into it.

        Raises:
            VirtqueueError: ``head`` was not taken, or more bytes than the chain can hold.
        """
        chain = self.taken.get(head) if isinstance(head, int) else None
        if chain is None:
            raise VirtqueueError(f"head {head} was not taken with pop_avail(); nothing to return")
        expect_int(written_len, "written_len", maximum=chain.writable_len)
        del self.taken[head]
        used = self.vq.used
        used.ring[used.idx % self.vq.size] = VirtqUsedElem(head, written_len)
        # wmb(): the driver must see the element before the index that covers it.
        used.idx = _idx(used.idx + 1)
        self.num_added += 1

    def interrupt_needed(self) -> bool:
        """Whether the driver must be interrupted for the buffers used since the last call."""
        new = self.vq.used.idx
        old = _idx(new - self.num_added)
        added, self.num_added = self.num_added, 0
        # mb(): the driver must see used.idx before we read its flags or used_event.
        if self.vq.event_idx:
            needed = vring_need_event(self.vq.avail.used_event, new, old)
        else:
            needed = not self.vq.avail.flags & VIRTQ_AVAIL_F_NO_INTERRUPT
        if needed and added:
            self.interrupts += 1
        elif added:
            self.suppressed += 1
        return needed and added > 0

    def disable_notifications(self) -> None:
        """Ask the driver not to kick (vhost_disable_notify): we are busy taking chains."""
        self._notifications_enabled = False
        if not self.vq.event_idx:
            self.vq.used.flags |= VIRTQ_USED_F_NO_NOTIFY

    def enable_notifications(self) -> bool:
        """Re-arm kicks, then look again; True means chains wait, False means sleep."""
        self._notifications_enabled = True
        if self.vq.event_idx:
            self.vq.used.avail_event = self.last_avail_idx
        else:
            self.vq.used.flags &= ~VIRTQ_USED_F_NO_NOTIFY
        # mb(): the driver must see the re-armed event before we read avail.idx again.
        return self.has_avail()

    def __repr__(self) -> str:
        return f"Device(last_avail_idx={self.last_avail_idx}, taken={sorted(self.taken)})"


XEN_TO_VIRTIO = (
    ("shared ring slot array (requests and responses)",
     "descriptor table + available ring + used ring"),
    ("req_prod (32-bit, free-running)", "avail.idx (16-bit, free-running)"),
    ("rsp_prod (32-bit, free-running)", "used.idx (16-bit, free-running)"),
    ("req_event", "avail_event + 1 (with VIRTIO_F_EVENT_IDX)"),
    ("rsp_event", "used_event + 1 (with VIRTIO_F_EVENT_IDX)"),
    ("grant reference", "guest-physical address in a descriptor"),
    ("event channel notify, front to back", "available buffer notification (kick)"),
    ("event channel notify, back to front", "used buffer notification (interrupt)"),
    ("RING_FINAL_CHECK_FOR_*", "enable notifications, then check again"),
)


def compare_with_xen() -> list[tuple[str, str]]:
    """The Xen ring concepts (ring.py) beside their virtio counterparts, as (Xen, virtio) rows."""
    return list(XEN_TO_VIRTIO)
