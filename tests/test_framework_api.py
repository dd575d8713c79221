"""The framework's public surface matches the stdlib's socketserver, name for name."""

from __future__ import annotations

import importlib.util
import inspect
import socket
import socketserver
import subprocess
import sys
import textwrap

import pytest

import sockserve as ss
import sockserve.socketserver as framework

pytestmark = pytest.mark.leakcheck

#: Classes the stdlib added in 3.12; sockserve has them on 3.11 too.
NEW_IN_312 = {"ForkingUnixStreamServer", "ForkingUnixDatagramServer"}
STDLIB_NAMES = sorted(socketserver.__all__)
OUR_CLASSES = sorted(ss.__all__)


def test_all_is_the_stdlibs() -> None:
    expected = set(socketserver.__all__) | NEW_IN_312
    assert sorted(ss.__all__) == sorted(expected)  # sorted lists: no duplicates either
    assert ss.__all__ == framework.__all__
    for name in ss.__all__:
        assert getattr(ss, name) is getattr(framework, name)


def test_import_as_socketserver_is_our_framework() -> None:
    import sockserve as socketserver_alias

    for name in STDLIB_NAMES:
        ours = getattr(socketserver_alias, name)
        assert ours is not getattr(socketserver, name), f"{name} is the stdlib's own class"
        assert ours.__module__.startswith("sockserve.socketserver.")


def _stdlib_mro(name: str) -> list[str]:
    if hasattr(socketserver, name):
        return [cls.__name__ for cls in getattr(socketserver, name).__mro__]
    base = getattr(socketserver, name.removeprefix("Forking"))  # 3.11: the 3.12 shape
    return [name, "ForkingMixIn", *(cls.__name__ for cls in base.__mro__)]


@pytest.mark.parametrize("name", OUR_CLASSES)
def test_class_tree_is_the_stdlibs(name: str) -> None:
    ours = getattr(ss, name)
    assert [cls.__name__ for cls in ours.__mro__] == _stdlib_mro(name)
    for cls in ours.__mro__[:-1]:
        assert cls.__module__.startswith("sockserve."), f"{cls} comes from elsewhere"


def test_class_tree_shape() -> None:
    """The seed's five-class tree; a mixin comes first in every prebuilt class."""
    assert ss.TCPServer.__bases__ == (ss.BaseServer,)
    assert ss.UDPServer.__bases__ == (ss.TCPServer,)
    assert ss.UnixStreamServer.__bases__ == (ss.TCPServer,)
    assert ss.UnixDatagramServer.__bases__ == (ss.UDPServer,)
    for mixin in ("Threading", "Forking"):
        for kind in ("TCP", "UDP", "UnixStream", "UnixDatagram"):
            cls = getattr(ss, f"{mixin}{kind}Server")
            assert cls.__bases__ == (getattr(ss, f"{mixin}MixIn"), getattr(ss, f"{kind}Server"))
    assert ss.StreamRequestHandler.__bases__ == (ss.BaseRequestHandler,)
    assert ss.DatagramRequestHandler.__bases__ == (ss.BaseRequestHandler,)


def _public_attributes(cls: type) -> dict[str, object]:
    return {
        name: getattr(cls, name)
        for name in dir(cls)
        if not name.startswith("_") and not callable(getattr(cls, name))
    }


@pytest.mark.parametrize("name", STDLIB_NAMES)
def test_class_attributes_are_the_stdlibs(name: str) -> None:
    theirs = _public_attributes(getattr(socketserver, name))
    ours = _public_attributes(getattr(ss, name))
    assert {key: ours.get(key, "missing") for key in theirs} == theirs


def test_documented_defaults() -> None:
    assert ss.BaseServer.timeout is None
    assert ss.TCPServer.request_queue_size == 5
    assert ss.TCPServer.allow_reuse_address is False
    assert ss.TCPServer.allow_reuse_port is False
    assert ss.UDPServer.max_packet_size == 8192
    assert ss.ForkingMixIn.max_children == 40
    assert ss.ForkingMixIn.timeout == 300
    assert ss.ForkingMixIn.block_on_close is True
    assert ss.ForkingMixIn.active_children is None
    assert ss.ThreadingMixIn.daemon_threads is False
    assert ss.ThreadingMixIn.block_on_close is True
    assert ss.StreamRequestHandler.rbufsize == -1
    assert ss.StreamRequestHandler.wbufsize == 0
    assert ss.StreamRequestHandler.timeout is None
    assert ss.StreamRequestHandler.disable_nagle_algorithm is False
    # sockserve's additions are off by default: the stdlib's behaviour.
    assert ss.ThreadingMixIn.max_threads is None
    assert ss.TCPServer.dualstack_ipv6 is False


@pytest.mark.parametrize(
    ("name", "family", "socktype"),
    [
        ("TCPServer", socket.AF_INET, socket.SOCK_STREAM),
        ("UDPServer", socket.AF_INET, socket.SOCK_DGRAM),
        ("UnixStreamServer", socket.AF_UNIX, socket.SOCK_STREAM),
        ("UnixDatagramServer", socket.AF_UNIX, socket.SOCK_DGRAM),
    ],
)
def test_family_and_type(name: str, family: int, socktype: int) -> None:
    for prefix in ("", "Threading", "Forking"):
        cls = getattr(ss, prefix + name)
        assert (cls.address_family, cls.socket_type) == (family, socktype)


def _signature(func: object) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]


@pytest.mark.parametrize("name", STDLIB_NAMES)
def test_method_signatures_are_the_stdlibs(name: str) -> None:
    theirs, ours = getattr(socketserver, name), getattr(ss, name)
    methods = [
        attr
        for attr in dir(theirs)
        if (not attr.startswith("_") or attr in ("__init__", "__enter__", "__exit__"))
        and inspect.isfunction(getattr(theirs, attr))
    ]
    assert methods, "nothing compared"
    for attr in methods:
        assert _signature(getattr(ours, attr)) == _signature(getattr(theirs, attr)), attr


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the stdlib has them from 3.12")
def test_forking_unix_classes_exist_on_311() -> None:
    assert not hasattr(socketserver, "ForkingUnixStreamServer")
    assert issubclass(ss.ForkingUnixStreamServer, ss.UnixStreamServer)
    assert issubclass(ss.ForkingUnixDatagramServer, ss.UnixDatagramServer)


#: CPython's own test_socketserver, run with `socketserver` meaning sockserve. test_all is
#: left out: it wants every class's __module__ to be "socketserver".
CPYTHON_SUITE = """
import sys, unittest
import sockserve
sys.modules["socketserver"] = sockserve
from test import test_socketserver
assert test_socketserver.socketserver is sockserve
suite = unittest.TestSuite(
    test for test in unittest.defaultTestLoader.loadTestsFromModule(test_socketserver)
    for test in test if test.id().rpartition(".")[2] != "test_all"
)
result = unittest.TextTestRunner(verbosity=0).run(suite)
print(result.testsRun, len(result.failures), len(result.errors), len(result.skipped))
"""


@pytest.mark.skipif(
    importlib.util.find_spec("test.test_socketserver") is None,
    reason="this Python has no test package",
)
def test_cpythons_own_tests_pass_on_our_framework() -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CPYTHON_SUITE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    run, failures, errors, skipped = map(int, result.stdout.splitlines()[-1].split())
    assert (failures, errors) == (0, 0), result.stderr
    assert run - skipped >= 25, result.stderr
