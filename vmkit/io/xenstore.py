"""Xenstore and XenBus: the shared tree where split drivers find each other and agree on state.

A tree of slash-separated paths holding string values, with watches, as xenstored serves it
(docs/misc/xenstore.txt), and the XenBus state machine of xen/include/public/io/xenbus.h that
front and back ends walk by writing their ``state`` node. A block device's directories::

    /local/domain/<domid>/device/vbd/<devid>/         front end: ring-ref, event-channel,
                                                      protocol, state, backend
    /local/domain/0/backend/vbd/<domid>/<devid>/      back end: sectors, info, sector-size,
                                                      state, frontend

Errors come back as ``XenstoreError`` carrying the errno xenstored would answer
(-ENOENT for a missing node, -EINVAL for a bad path, -EEXIST for a duplicate watch).
Deliberately simple: no permissions, no transactions, no quotas; ``directory`` is sorted
where xenstored answers in creation order, so outputs never depend on history.
Taught in course/03_io/02_xen_split_drivers.ipynb.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import NamedTuple

from vmkit.core import VmkitError, expect_int

ENOENT = 2
EEXIST = 17
EINVAL = 22

XENSTORE_ABS_PATH_MAX = 3072
# xenstored's is_valid_nodename: absolute, only these characters, no empty component.
_VALID = re.compile(r"/|(/[A-Za-z0-9_@-]+)+")


class XenbusState(IntEnum):
    """enum xenbus_state, written in decimal in a device's ``state`` node."""

    Unknown = 0
    Initialising = 1
    InitWait = 2       # early initialisation done, waiting for the peer or hotplug scripts
    Initialised = 3    # waiting for a connection from the peer
    Connected = 4
    Closing = 5        # being closed after an error or an unplug event
    Closed = 6
    Reconfiguring = 7
    Reconfigured = 8


class XenstoreError(VmkitError):
    """A request xenstored would refuse; ``errno`` is the negated errno it answers."""

    def __init__(self, errno: int, message: str):
        super().__init__(f"{message} (xenstored answers {errno})")
        self.errno = errno


class WatchEvent(NamedTuple):
    """A fired watch: the ``path`` that changed and the ``token`` given to ``watch``."""

    path: str
    token: str


def _check_path(path: str) -> str:
    if (not isinstance(path, str) or len(path) > XENSTORE_ABS_PATH_MAX
            or not _VALID.fullmatch(path)):
        raise XenstoreError(-EINVAL, f"bad path {path!r}: write an absolute path like "
                                     f"'/local/domain/1/device', no trailing or double slash")
    return path


def _is_at_or_under(path: str, top: str) -> bool:
    """Whether ``path`` is ``top`` itself or one of its descendants."""
    return top == "/" or path == top or path.startswith(top + "/")


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


class XenStore:
    """The store: nodes by path, each with a string value, and the registered watches."""

    def __init__(self):
        self._nodes: dict[str, str] = {"/": ""}
        self._watches: list[WatchEvent] = []   # (watched path, token), in registration order
        self._events: list[WatchEvent] = []

    def _fire(self, path: str, removed: bool = False) -> None:
        """Queue an event for each watch at or above ``path``; below it too when it was removed."""
        for watch in self._watches:
            if _is_at_or_under(path, watch.path):
                self._events.append(WatchEvent(path, watch.token))
            elif removed and _is_at_or_under(watch.path, path):
                self._events.append(watch)   # xenstored names the watched node itself

    def exists(self, path: str) -> bool:
        """Whether a node exists at ``path``."""
        return _check_path(path) in self._nodes

    def read(self, path: str) -> str:
        """XS_READ: the value at ``path``."""
        if _check_path(path) not in self._nodes:
            raise XenstoreError(-ENOENT, f"no node {path}; write it or check the path")
        return self._nodes[path]

    def write(self, path: str, value: str) -> None:
        """XS_WRITE: set ``path`` to ``value``, creating missing parents with empty values."""
        _check_path(path)
        if not isinstance(value, str):
            raise XenstoreError(-EINVAL, f"values are strings; write str({value!r})")
        parent = _parent(path)
        while parent not in self._nodes:
            self._nodes[parent] = ""
            parent = _parent(parent)
        self._nodes[path] = value
        self._fire(path)

    def mkdir(self, path: str) -> None:
        """XS_MKDIR: create ``path`` with an empty value; an existing node is left as it is."""
        if _check_path(path) not in self._nodes:
            self.write(path, "")

    def rm(self, path: str) -> None:
        """XS_RM: remove ``path`` and everything below it; a missing node is fine if its parent is."""
        _check_path(path)
        if path == "/":
            raise XenstoreError(-EINVAL, "the root cannot be removed")
        if path not in self._nodes:
            if _parent(path) in self._nodes:
                return
            raise XenstoreError(-ENOENT, f"neither {path} nor its parent exists")
        for node in [n for n in self._nodes if _is_at_or_under(n, path)]:
            del self._nodes[node]
        self._fire(path, removed=True)

    def directory(self, path: str) -> list[str]:
        """XS_DIRECTORY: the names of ``path``'s children, sorted."""
        if _check_path(path) not in self._nodes:
            raise XenstoreError(-ENOENT, f"no node {path}")
        prefix = path.rstrip("/") + "/"
        return sorted(n[len(prefix):] for n in self._nodes
                      if n.startswith(prefix) and "/" not in n[len(prefix):] and n != "/")

    def watch(self, path: str, token: str) -> None:
        """XS_WATCH: report changes at or under ``path``; fires once at once, as xenstored does."""
        event = WatchEvent(_check_path(path), token)
        if event in self._watches:
            raise XenstoreError(-EEXIST, f"watch on {path} with token {token!r} already set")
        self._watches.append(event)
        self._events.append(event)   # the initial event lets the watcher read current state

    def unwatch(self, path: str, token: str) -> None:
        """XS_UNWATCH: stop the watch set with the same ``path`` and ``token``."""
        event = WatchEvent(_check_path(path), token)
        if event not in self._watches:
            raise XenstoreError(-ENOENT, f"no watch on {path} with token {token!r}")
        self._watches.remove(event)

    def events(self) -> list[WatchEvent]:
        """The watch events fired since the last call, oldest first (and forget them)."""
        events, self._events = self._events, []
        return events

    def __repr__(self) -> str:
        return f"XenStore(nodes={len(self._nodes)}, watches={len(self._watches)})"


def frontend_path(domid: int, devid: int, devtype: str = "vbd") -> str:
    """A front end's directory: ``/local/domain/<domid>/device/<devtype>/<devid>``."""
    expect_int(domid, "domid")
    expect_int(devid, "devid")
    return _check_path(f"/local/domain/{domid}/device/{devtype}/{devid}")


def backend_path(domid: int, devid: int, devtype: str = "vbd", backend_domid: int = 0) -> str:
    """A back end's directory: ``/local/domain/<backend>/backend/<devtype>/<domid>/<devid>``."""
    expect_int(domid, "domid")
    expect_int(devid, "devid")
    expect_int(backend_domid, "backend_domid")
    return _check_path(f"/local/domain/{backend_domid}/backend/{devtype}/{domid}/{devid}")


def switch_state(store: XenStore, path: str, state: XenbusState) -> None:
    """xenbus_switch_state: write ``state`` in decimal to ``<path>/state``."""
    if not isinstance(state, int) or isinstance(state, bool) or state not in set(XenbusState):
        raise XenstoreError(-EINVAL, f"{state!r} is not a XenbusState; use XenbusState.Connected")
    store.write(f"{path}/state", str(int(state)))


def read_state(store: XenStore, path: str) -> XenbusState:
    """xenbus_read_driver_state: the state at ``<path>/state``, Unknown if there is none."""
    node = f"{path}/state"
    if not store.exists(node):
        return XenbusState.Unknown
    try:
        return XenbusState(int(store.read(node)))
    except ValueError:
        return XenbusState.Unknown
