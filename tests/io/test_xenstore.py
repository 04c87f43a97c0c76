"""Tests for vmkit.io.xenstore: the path tree, watches, and XenBus states and paths."""

import pytest

from vmkit.core import VmkitError
from vmkit.io.xenstore import (
    EEXIST,
    EINVAL,
    ENOENT,
    WatchEvent,
    XenbusState,
    XenStore,
    XenstoreError,
    backend_path,
    frontend_path,
    read_state,
    switch_state,
)

FRONT = "/local/domain/1/device/vbd/51712"


def errno_of(call, *args):
    with pytest.raises(XenstoreError) as err:
        call(*args)
    return err.value.errno


def test_write_then_read():
    """A written value reads back."""
    store = XenStore()
    store.write(f"{FRONT}/ring-ref", "8")
    assert store.read(f"{FRONT}/ring-ref") == "8"


def test_write_creates_parents_empty():
    """Writing a deep path creates its missing parents with empty values."""
    store = XenStore()
    store.write(f"{FRONT}/ring-ref", "8")
    assert store.read(FRONT) == ""


def test_read_missing_is_enoent():
    """Reading a missing node fails with -ENOENT."""
    assert errno_of(XenStore().read, "/nope") == -ENOENT


def test_bad_paths_are_einval():
    """Relative paths, trailing or double slashes and odd characters fail with -EINVAL."""
    store = XenStore()
    for path in ["local", "/local/", "/a//b", "/a b", ""]:
        assert errno_of(store.write, path, "x") == -EINVAL


def test_non_string_value_is_einval():
    """Values are strings; anything else fails with -EINVAL."""
    assert errno_of(XenStore().write, "/a", 4) == -EINVAL


def test_xenstore_error_is_a_vmkit_error():
    """XenstoreError is a VmkitError."""
    assert issubclass(XenstoreError, VmkitError)


def test_mkdir_keeps_an_existing_value():
    """mkdir on an existing node leaves its value alone."""
    store = XenStore()
    store.write("/a", "1")
    store.mkdir("/a")
    assert store.read("/a") == "1"


def test_directory_lists_children_sorted():
    """directory names the direct children only, sorted."""
    store = XenStore()
    store.write("/a/z", "")
    store.write("/a/b/c", "")
    assert store.directory("/a") == ["b", "z"]


def test_directory_of_root():
    """The root lists its top-level nodes."""
    store = XenStore()
    store.mkdir("/local")
    assert store.directory("/") == ["local"]


def test_rm_removes_the_subtree():
    """rm removes a node and everything below it."""
    store = XenStore()
    store.write("/a/b/c", "1")
    store.rm("/a/b")
    assert (store.exists("/a"), store.exists("/a/b"), store.exists("/a/b/c")) == (
        True, False, False)


def test_rm_missing_node_with_parent_is_fine():
    """Removing a missing node whose parent exists succeeds, as in xenstored."""
    store = XenStore()
    store.mkdir("/a")
    store.rm("/a/b")
    assert store.directory("/a") == []


def test_rm_missing_parent_is_enoent():
    """Removing a node whose parent is missing too fails with -ENOENT."""
    assert errno_of(XenStore().rm, "/a/b") == -ENOENT


def test_rm_root_is_einval():
    """The root cannot be removed."""
    assert errno_of(XenStore().rm, "/") == -EINVAL


def test_watch_fires_once_when_set():
    """Setting a watch fires it at once with its own path."""
    store = XenStore()
    store.watch(FRONT, "fe")
    assert store.events() == [WatchEvent(FRONT, "fe")]


def test_watch_fires_for_writes_under_it():
    """A write at or below the watched path fires, with the written path."""
    store = XenStore()
    store.watch(FRONT, "fe")
    store.events()
    store.write(f"{FRONT}/state", "1")
    assert store.events() == [(f"{FRONT}/state", "fe")]


def test_watch_ignores_writes_elsewhere():
    """A write outside the watched subtree, even a sibling with a common prefix, fires nothing."""
    store = XenStore()
    store.watch("/a/b", "t")
    store.events()
    store.write("/a/bc", "1")
    assert store.events() == []


def test_events_in_order_and_drained():
    """Events come out oldest first across watches, and only once."""
    store = XenStore()
    store.watch("/a", "one")
    store.watch("/a/b", "two")
    store.events()
    store.write("/a/b", "1")
    store.write("/a/c", "2")
    assert store.events() == [("/a/b", "one"), ("/a/b", "two"), ("/a/c", "one")]
    assert store.events() == []


def test_rm_fires_watches_below_with_their_own_path():
    """Removing a subtree fires watches inside it, naming the watched node."""
    store = XenStore()
    store.write("/a/b/c", "1")
    store.watch("/a/b/c", "deep")
    store.events()
    store.rm("/a")
    assert store.events() == [("/a/b/c", "deep")]


def test_duplicate_watch_is_eexist():
    """Setting the same watch twice fails with -EEXIST."""
    store = XenStore()
    store.watch("/a", "t")
    assert errno_of(store.watch, "/a", "t") == -EEXIST


def test_unwatch_stops_events():
    """After unwatch, changes fire nothing."""
    store = XenStore()
    store.watch("/a", "t")
    store.unwatch("/a", "t")
    store.events()
    store.write("/a", "1")
    assert store.events() == []


def test_unwatch_missing_is_enoent():
    """Removing a watch never set fails with -ENOENT."""
    assert errno_of(XenStore().unwatch, "/a", "t") == -ENOENT


def test_xenbus_state_values():
    """XenbusState has io/xenbus.h's values, 0 to 8."""
    assert [s.value for s in XenbusState] == list(range(9))
    assert XenbusState.Connected == 4 and XenbusState.Reconfigured == 8


def test_switch_state_writes_decimal():
    """switch_state writes the state number in decimal to <path>/state."""
    store = XenStore()
    switch_state(store, FRONT, XenbusState.Initialised)
    assert store.read(f"{FRONT}/state") == "3"


@pytest.mark.parametrize("state", [True, "4", None, []])
def test_switch_state_refuses_a_state_that_is_not_a_number(state):
    """A bool, a string or an unhashable value fails with -EINVAL, not a TypeError."""
    assert errno_of(switch_state, XenStore(), FRONT, state) == -EINVAL


def test_switch_state_refuses_unknown_state():
    """A number that is no XenbusState fails with -EINVAL and writes nothing."""
    store = XenStore()
    assert errno_of(switch_state, store, FRONT, 42) == -EINVAL
    assert not store.exists(f"{FRONT}/state")


def test_read_state_missing_is_unknown():
    """A device with no state node reads as Unknown."""
    assert read_state(XenStore(), FRONT) is XenbusState.Unknown


def test_read_state_round_trips():
    """read_state returns what switch_state wrote."""
    store = XenStore()
    switch_state(store, FRONT, XenbusState.InitWait)
    assert read_state(store, FRONT) is XenbusState.InitWait


def test_standard_paths():
    """Front and back ends live at Xen's standard vbd paths."""
    assert frontend_path(1, 51712) == "/local/domain/1/device/vbd/51712"
    assert backend_path(1, 51712) == "/local/domain/0/backend/vbd/1/51712"


def test_backend_watches_frontend_handshake():
    """A back end watching the front end sees its ring-ref, event-channel and state, in order."""
    store = XenStore()
    front, back = frontend_path(1, 51712), backend_path(1, 51712)
    switch_state(store, back, XenbusState.InitWait)
    store.watch(front, "backend")
    store.events()
    store.write(f"{front}/ring-ref", "8")
    store.write(f"{front}/event-channel", "5")
    switch_state(store, front, XenbusState.Initialised)
    assert [e.path.rsplit("/", 1)[1] for e in store.events()] == [
        "ring-ref", "event-channel", "state"]
