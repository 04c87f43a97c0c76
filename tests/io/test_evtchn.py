"""Tests for vmkit.io.evtchn: interdomain event channels, pending and mask bits, upcalls."""

import pytest

from vmkit.core import VmkitError
from vmkit.io.evtchn import (
    EINVAL,
    ENOSPC,
    EVTCHNSTAT,
    ChannelStatus,
    EventChannels,
    EvtchnError,
    Upcall,
)

BACK, FRONT, OTHER = 0, 1, 2


def connected():
    """A back-end port allocated for the front end, then bound by it."""
    chans = EventChannels()
    back_port = chans.alloc_unbound(BACK, FRONT)
    front_port = chans.bind_interdomain(FRONT, BACK, back_port)
    return chans, back_port, front_port


def test_op_numbers_are_xens():
    """The EVTCHNOP_* numbers are those of event_channel.h."""
    from vmkit.io import evtchn
    assert [evtchn.EVTCHNOP_bind_interdomain, evtchn.EVTCHNOP_bind_virq,
            evtchn.EVTCHNOP_bind_pirq, evtchn.EVTCHNOP_close, evtchn.EVTCHNOP_send,
            evtchn.EVTCHNOP_status, evtchn.EVTCHNOP_alloc_unbound] == list(range(7))


def test_alloc_unbound_skips_reserved_port_zero():
    """The first port handed out is 1: port 0 is reserved."""
    assert EventChannels().alloc_unbound(BACK, FRONT) == 1


def test_alloc_unbound_status_names_the_remote():
    """An allocated port is unbound for the named remote domain."""
    chans = EventChannels()
    port = chans.alloc_unbound(BACK, FRONT)
    assert chans.status(BACK, port) == ChannelStatus(EVTCHNSTAT.unbound, FRONT)


def test_bind_interdomain_links_both_ends():
    """After binding, each end's status names the other's domain and port."""
    chans, back_port, front_port = connected()
    assert chans.status(FRONT, front_port) == ChannelStatus(
        EVTCHNSTAT.interdomain, BACK, back_port)
    assert chans.status(BACK, back_port) == ChannelStatus(
        EVTCHNSTAT.interdomain, FRONT, front_port)


def test_bind_to_port_reserved_for_another_domain_is_einval():
    """Binding to a port unbound for someone else fails with -EINVAL, as Xen does."""
    chans = EventChannels()
    port = chans.alloc_unbound(BACK, FRONT)
    with pytest.raises(EvtchnError) as err:
        chans.bind_interdomain(OTHER, BACK, port)
    assert err.value.errno == -EINVAL


def test_bind_to_a_connected_port_is_einval():
    """A port already bound cannot be bound a second time."""
    chans, back_port, _ = connected()
    with pytest.raises(EvtchnError) as err:
        chans.bind_interdomain(FRONT, BACK, back_port)
    assert err.value.errno == -EINVAL


def test_evtchn_error_is_a_vmkit_error():
    """EvtchnError is a VmkitError, so callers can catch either."""
    assert issubclass(EvtchnError, VmkitError)


def test_send_sets_pending_on_the_other_end():
    """A send from the front end sets the back end's pending bit, not its own."""
    chans, back_port, front_port = connected()
    chans.send(FRONT, front_port)
    assert chans.pending(BACK, back_port)
    assert not chans.pending(FRONT, front_port)


def test_send_delivers_an_upcall():
    """A send to an unmasked port delivers one upcall to the receiving domain."""
    chans, back_port, front_port = connected()
    chans.send(FRONT, front_port)
    assert chans.upcalls == [Upcall(BACK, back_port)]


def test_send_while_pending_adds_no_upcall():
    """A second send before the handler clears the bit is merged into the first."""
    chans, _, front_port = connected()
    chans.send(FRONT, front_port)
    chans.send(FRONT, front_port)
    assert len(chans.upcalls) == 1


def test_clear_then_send_delivers_again():
    """After the handler clears the pending bit, the next send is a new upcall."""
    chans, back_port, front_port = connected()
    chans.send(FRONT, front_port)
    chans.clear(BACK, back_port)
    chans.send(FRONT, front_port)
    assert chans.upcalls == [Upcall(BACK, back_port)] * 2


def test_masked_port_becomes_pending_without_upcall():
    """A send to a masked port sets the pending bit and delivers nothing."""
    chans, back_port, front_port = connected()
    chans.mask(BACK, back_port)
    chans.send(FRONT, front_port)
    assert chans.pending(BACK, back_port)
    assert chans.upcalls == []


def test_unmask_with_pending_delivers():
    """Unmasking a port that became pending meanwhile delivers its upcall."""
    chans, back_port, front_port = connected()
    chans.mask(BACK, back_port)
    chans.send(FRONT, front_port)
    chans.unmask(BACK, back_port)
    assert chans.upcalls == [Upcall(BACK, back_port)]


def test_unmask_without_pending_delivers_nothing():
    """Unmasking an idle port delivers no upcall."""
    chans, back_port, _ = connected()
    chans.mask(BACK, back_port)
    chans.unmask(BACK, back_port)
    assert chans.upcalls == [] and not chans.masked(BACK, back_port)


def test_send_on_unbound_port_is_dropped():
    """A send on a port nobody bound yet is silently dropped, as Xen does."""
    chans = EventChannels()
    port = chans.alloc_unbound(BACK, FRONT)
    chans.send(BACK, port)
    assert (chans.sends_dropped, chans.upcalls) == (1, [])


def test_send_on_closed_port_is_einval():
    """Sending on a closed port fails with -EINVAL."""
    chans, _, front_port = connected()
    chans.close(FRONT, front_port)
    with pytest.raises(EvtchnError) as err:
        chans.send(FRONT, front_port)
    assert err.value.errno == -EINVAL


def test_send_on_out_of_range_port_is_einval():
    """A port number past the domain's ports fails with -EINVAL."""
    with pytest.raises(EvtchnError) as err:
        EventChannels(nr_ports=8).send(BACK, 8)
    assert err.value.errno == -EINVAL


def test_close_returns_the_peer_to_unbound():
    """Closing one end puts the other back to unbound for the closer."""
    chans, back_port, front_port = connected()
    chans.close(FRONT, front_port)
    assert chans.status(BACK, back_port) == ChannelStatus(EVTCHNSTAT.unbound, FRONT)
    assert chans.status(FRONT, front_port).status == EVTCHNSTAT.closed


def test_rebind_after_close():
    """After a close, the front end can bind the back end's port again."""
    chans, back_port, front_port = connected()
    chans.close(FRONT, front_port)
    again = chans.bind_interdomain(FRONT, BACK, back_port)
    assert chans.status(BACK, back_port) == ChannelStatus(EVTCHNSTAT.interdomain, FRONT, again)


def test_double_close_is_einval():
    """Closing a port twice fails with -EINVAL the second time."""
    chans, back_port, _ = connected()
    chans.close(BACK, back_port)
    with pytest.raises(EvtchnError) as err:
        chans.close(BACK, back_port)
    assert err.value.errno == -EINVAL


def test_ports_run_out_with_enospc():
    """When every port is open, alloc_unbound fails with -ENOSPC."""
    chans = EventChannels(nr_ports=3)
    chans.alloc_unbound(BACK, FRONT)
    chans.alloc_unbound(BACK, FRONT)
    with pytest.raises(EvtchnError) as err:
        chans.alloc_unbound(BACK, FRONT)
    assert err.value.errno == -ENOSPC


def test_freed_port_is_reused_clean():
    """A closed port is handed out again without its old pending bit."""
    chans, back_port, front_port = connected()
    chans.send(FRONT, front_port)
    chans.close(BACK, back_port)
    assert chans.alloc_unbound(BACK, OTHER) == back_port
    assert not chans.pending(BACK, back_port)
