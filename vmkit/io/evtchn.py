"""Xen event channels: the virtual interrupt a split driver sends to say "look at the ring".

The interdomain channels of xen/include/public/event_channel.h, with the behaviour of
xen/common/event_channel.c (``evtchn_alloc_unbound``, ``evtchn_bind_interdomain``,
``evtchn_send``, ``evtchn_close``, ``evtchn_unmask``) and the 2-level pending/mask bitmaps
of the shared info page. The handshake: one end allocates an *unbound* port for its peer and
publishes it in xenstore; the peer binds to it and gets its own port; from then on a send on
either port sets the pending bit of the other, and delivers an upcall unless that port is
masked. Closing one end puts the other back to *unbound*.

Operations that Xen would fail raise ``EvtchnError`` carrying Xen's return value in
``errno`` (-EINVAL for a bad or closed port). Deliberately simple: one vCPU per domain, only
interdomain channels (no VIRQ, PIRQ or IPI), an upcall per newly pending unmasked port
(the evtchn_pending_sel word is left out), and a fresh port starts unmasked.
Taught in course/03_io/02_xen_split_drivers.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from vmkit.core import VmkitError, expect_int

EVTCHNOP_bind_interdomain = 0
EVTCHNOP_bind_virq = 1
EVTCHNOP_bind_pirq = 2
EVTCHNOP_close = 3
EVTCHNOP_send = 4
EVTCHNOP_status = 5
EVTCHNOP_alloc_unbound = 6
EVTCHNOP_bind_ipi = 7
EVTCHNOP_bind_vcpu = 8
EVTCHNOP_unmask = 9

# Linux errno values; a hypercall returns them negated.
EPERM = 1
EINVAL = 22
ENOSPC = 28

NR_EVTCHN_2L = 4096   # ports of the 2-level ABI on a 64-bit guest (64 * 64)
DOMID_MAX = 0x7FEF    # DOMID_FIRST_RESERVED - 1


class EVTCHNSTAT(IntEnum):
    """A port's state as EVTCHNOP_status reports it."""

    closed = 0
    unbound = 1
    interdomain = 2
    pirq = 3
    virq = 4
    ipi = 5


class EvtchnError(VmkitError):
    """An event-channel operation Xen would refuse; ``errno`` is its return value (-EINVAL)."""

    def __init__(self, errno: int, message: str):
        super().__init__(f"{message} (Xen returns {errno})")
        self.errno = errno


@dataclass(frozen=True)
class ChannelStatus:
    """What EVTCHNOP_status says of a port: its state and, if any, the peer domain and port."""

    status: EVTCHNSTAT
    remote_dom: int | None = None
    remote_port: int | None = None


@dataclass(frozen=True)
class Upcall:
    """A notification delivered: domain ``dom`` is interrupted for pending port ``port``."""

    dom: int
    port: int


class EventChannels:
    """Every domain's ports on one host, as the hypervisor keeps them."""

    def __init__(self, nr_ports: int = NR_EVTCHN_2L):
        self.nr_ports = expect_int(nr_ports, "nr_ports", minimum=2)
        self._channels: dict[int, dict[int, ChannelStatus]] = {}   # dom -> port -> status
        self._pending: dict[int, set[int]] = {}                     # shared_info evtchn_pending
        self._masked: dict[int, set[int]] = {}                      # shared_info evtchn_mask
        self.upcalls: list[Upcall] = []
        self.sends = 0
        self.sends_dropped = 0   # sent on an unbound port: Xen drops them silently

    def _domain(self, dom: int) -> dict[int, ChannelStatus]:
        expect_int(dom, "dom", maximum=DOMID_MAX)
        if dom not in self._channels:
            # evtchn_init: port 0 is reserved and never handed out.
            self._channels[dom] = {}
            self._pending[dom] = set()
            self._masked[dom] = set()
        return self._channels[dom]

    def _port(self, dom: int, port: int) -> ChannelStatus:
        """The port's status; -EINVAL if the port number is out of range (port_is_valid)."""
        channels = self._domain(dom)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < self.nr_ports:
            raise EvtchnError(-EINVAL, f"port {port!r} is not valid for domain {dom}")
        return channels.get(port, ChannelStatus(EVTCHNSTAT.closed))

    def _free_port(self, dom: int) -> int:
        """get_free_port: the lowest closed port above the reserved port 0."""
        channels = self._domain(dom)
        for port in range(1, self.nr_ports):
            if port not in channels:
                self._pending[dom].discard(port)
                self._masked[dom].discard(port)
                return port
        raise EvtchnError(-ENOSPC, f"domain {dom} has no free port; close one first")

    def alloc_unbound(self, dom: int, remote_dom: int) -> int:
        """EVTCHNOP_alloc_unbound: a new port of ``dom`` that only ``remote_dom`` may bind."""
        expect_int(remote_dom, "remote_dom", maximum=DOMID_MAX)
        port = self._free_port(dom)
        self._channels[dom][port] = ChannelStatus(EVTCHNSTAT.unbound, remote_dom)
        return port

    def bind_interdomain(self, dom: int, remote_dom: int, remote_port: int) -> int:
        """EVTCHNOP_bind_interdomain: connect a new port of ``dom`` to ``remote_dom``'s port.

        Raises:
            EvtchnError: -EINVAL if ``remote_port`` is not unbound and reserved for ``dom``.
        """
        self._domain(dom)
        remote = self._port(remote_dom, remote_port)
        if remote.status != EVTCHNSTAT.unbound or remote.remote_dom != dom:
            raise EvtchnError(
                -EINVAL, f"port {remote_port} of domain {remote_dom} is {remote.status.name}, "
                         f"not unbound for domain {dom}; bind to the port alloc_unbound gave")
        port = self._free_port(dom)
        self._channels[dom][port] = ChannelStatus(EVTCHNSTAT.interdomain, remote_dom, remote_port)
        self._channels[remote_dom][remote_port] = ChannelStatus(
            EVTCHNSTAT.interdomain, dom, port)
        return port

    def status(self, dom: int, port: int) -> ChannelStatus:
        """EVTCHNOP_status: the state of ``dom``'s ``port`` and its peer."""
        return self._port(dom, port)

    def close(self, dom: int, port: int) -> None:
        """EVTCHNOP_close: free the port; an interdomain peer goes back to unbound for ``dom``."""
        chan = self._port(dom, port)
        if chan.status == EVTCHNSTAT.closed:
            raise EvtchnError(-EINVAL, f"port {port} of domain {dom} is already closed")
        if chan.status == EVTCHNSTAT.interdomain:
            assert chan.remote_dom is not None and chan.remote_port is not None
            self._channels[chan.remote_dom][chan.remote_port] = ChannelStatus(
                EVTCHNSTAT.unbound, dom)
        del self._channels[dom][port]

    def _set_pending(self, dom: int, port: int) -> None:
        """evtchn_set_pending: set the bit; a newly pending, unmasked port gets an upcall."""
        if port in self._pending[dom]:
            return   # already pending: the guest has not handled the last one yet
        self._pending[dom].add(port)
        if port not in self._masked[dom]:
            self.upcalls.append(Upcall(dom, port))

    def send(self, dom: int, port: int) -> None:
        """EVTCHNOP_send: mark the other end's port pending (dropped while still unbound).

        Raises:
            EvtchnError: -EINVAL if the port is out of range or closed.
        """
        chan = self._port(dom, port)
        if chan.status == EVTCHNSTAT.closed:
            raise EvtchnError(-EINVAL, f"port {port} of domain {dom} is closed; bind it first")
        self.sends += 1
        if chan.status == EVTCHNSTAT.unbound:
            self.sends_dropped += 1   # "silently drop the notification"
            return
        assert chan.remote_dom is not None and chan.remote_port is not None
        self._set_pending(chan.remote_dom, chan.remote_port)

    def pending(self, dom: int, port: int) -> bool:
        """Whether ``dom``'s ``port`` has its pending bit set."""
        self._port(dom, port)
        return port in self._pending[dom]

    def clear(self, dom: int, port: int) -> None:
        """The guest's handler clears the pending bit before looking at the ring."""
        self._port(dom, port)
        self._pending[dom].discard(port)

    def masked(self, dom: int, port: int) -> bool:
        """Whether ``dom``'s ``port`` has its mask bit set."""
        self._port(dom, port)
        return port in self._masked[dom]

    def mask(self, dom: int, port: int) -> None:
        """Set the mask bit: the port still becomes pending, but delivers no upcall."""
        self._port(dom, port)
        self._masked[dom].add(port)

    def unmask(self, dom: int, port: int) -> None:
        """EVTCHNOP_unmask: clear the mask; a port that became pending meanwhile gets its upcall."""
        self._port(dom, port)
        if port in self._masked[dom]:
            self._masked[dom].discard(port)
            if port in self._pending[dom]:
                self.upcalls.append(Upcall(dom, port))

    def __repr__(self) -> str:
        open_ports = sum(len(c) for c in self._channels.values())
        return (f"EventChannels(domains={sorted(self._channels)}, open_ports={open_ports}, "
                f"upcalls={len(self.upcalls)})")
