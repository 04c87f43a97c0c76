"""Chapter 3 benchmarks: requests through the Xen shared ring and virtio's virtqueue.

For each batch size the front end queues a batch, publishes it with one notify
check, the back end answers the whole batch, and the front end takes the
responses. Printed: requests per second (ratio against batch 1, measured in
the same run) and notifications per request, which is what batching saves on
real hardware, where each notification is an event channel or a VM exit.

Wall-clock time is read here, and only here.
"""

from __future__ import annotations

from functools import partial

from bench import REPEAT, best_of
from vmkit.io.ring import (
    BLKIF_OP_READ, BLKIF_RSP_OKAY, BackRing, BlkifRequest, BlkifResponse, FrontRing, Segment,
    SharedRing,
)
from vmkit.io.virtqueue import Device, Driver, Virtqueue

REQUESTS = 4096
BATCHES = (1, 4, 16, 32)


def _xen_ring(batch: int) -> int:
    sring = SharedRing()
    front, back = FrontRing(sring), BackRing(sring)
    segment = (Segment(gref=8, first_sect=0, last_sect=7),)
    notifications = 0
    for first in range(0, REQUESTS, batch):
        for i in range(first, first + batch):
            front.push_request(BlkifRequest(i, BLKIF_OP_READ, i * 8, segment))
        notifications += front.push_requests_and_check_notify()
        while back.unconsumed_requests():
            request = back.take_request()
            back.push_response(BlkifResponse(request.id, request.operation, BLKIF_RSP_OKAY))
        notifications += back.push_responses_and_check_notify()
        while front.unconsumed_responses():
            front.take_response()
        front.final_check_for_responses()
        back.final_check_for_requests()
    return notifications


def _virtqueue(batch: int) -> int:
    vq = Virtqueue(64, event_idx=True)   # a chain takes 2 descriptors: 32 chains in flight
    driver, device = Driver(vq), Device(vq)
    for _ in range(0, REQUESTS, batch):
        for _ in range(batch):
            driver.add_buffer([16], [4096])
        driver.kick_needed()
        while (chain := device.pop_avail()) is not None:
            device.push_used(chain.head, 4096)
        device.interrupt_needed()
        while driver.get_used() is not None:
            pass
    return driver.kicks + device.interrupts


def main() -> None:
    for title, run in (("Xen blkif ring (32 slots)", _xen_ring),
                       ("virtio split virtqueue (64 descriptors, EVENT_IDX)", _virtqueue)):
        print(f"{title}: {REQUESTS} requests, best of {REPEAT}")
        base = None
        for batch in BATCHES:
            seconds, notifications = best_of(lambda: partial(run, batch))
            rate = REQUESTS / seconds
            base = base or rate
            print(f"  batch {batch:>2}   {rate:>10,.0f} requests/s   {rate / base:>6.2f}   "
                  f"{notifications / REQUESTS:.3f} notifications per request")


if __name__ == "__main__":
    main()
