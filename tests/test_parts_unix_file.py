"""UnixFilePart: stale socket files replaced, others refused, --mode, removal on close."""

from __future__ import annotations

import os
import socket
import stat

import pytest

import sockserve as ss
from sockserve.errors import EnvironmentProblem
from sockserve.parts.unix_file import UnixFilePart, prepare_unix_path

pytestmark = pytest.mark.leakcheck


def test_stale_socket_file_is_replaced(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s")
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(path)
    old.close()  # the file stays: nobody listens
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    prepare_unix_path(path, socket.SOCK_STREAM)
    assert not os.path.exists(path)


def test_live_socket_is_refused(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen()
    try:
        with pytest.raises(EnvironmentProblem, match="already in use"):
            prepare_unix_path(path, socket.SOCK_STREAM)
        assert os.path.exists(path)
    finally:
        live.close()


@pytest.mark.parametrize("kind", ["file", "dir", "symlink", "fifo"])
def test_non_socket_paths_are_never_deleted(sock_dir: str, kind: str) -> None:
    path = os.path.join(sock_dir, "s")
    if kind == "file":
        with open(path, "w") as f:
            f.write("precious")
    elif kind == "dir":
        os.mkdir(path)
    elif kind == "symlink":
        target = os.path.join(sock_dir, "target")
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(target)
        stale.close()
        os.symlink(target, path)
    else:
        os.mkfifo(path)
    with pytest.raises(EnvironmentProblem, match="refusing to replace"):
        prepare_unix_path(path, socket.SOCK_STREAM)
    assert os.path.lexists(path)
    if kind == "file":
        with open(path) as f:
            assert f.read() == "precious"


def _unix_server(path: str, mode: int | None) -> UnixFilePart:
    """The part on the framework's plain unix stream server."""
    cls = type("Server", (UnixFilePart, ss.UnixStreamServer), {"unix_mode": mode})
    return cls(path, ss.BaseRequestHandler)


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o777])
def test_unix_mode_is_applied_and_file_removed_on_close(sock_dir: str, mode: int) -> None:
    path = os.path.join(sock_dir, "s")
    seen: list[int] = []
    real_bind = socket.socket.bind

    def spy_bind(self, addr):  # the mode right after bind: never wider than asked
        real_bind(self, addr)
        if addr == path:
            seen.append(stat.S_IMODE(os.lstat(path).st_mode))

    old_umask = os.umask(0)  # the most permissive umask: --mode must not rely on it
    try:
        socket.socket.bind = spy_bind
        server = _unix_server(path, mode)
    finally:
        socket.socket.bind = real_bind
        os.umask(old_umask)
    try:
        assert seen and seen[0] & ~mode == 0
        assert stat.S_IMODE(os.lstat(path).st_mode) == mode
    finally:
        server.server_close()
    assert not os.path.exists(path)


def test_server_close_leaves_a_replaced_file_alone(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s")
    server = _unix_server(path, None)
    os.unlink(path)
    with open(path, "w") as f:
        f.write("someone else's")
    server.server_close()
    assert os.path.exists(path)
