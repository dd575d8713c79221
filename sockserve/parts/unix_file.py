"""UnixFilePart: the socket file of a unix server, from the stale-file check to its removal."""

from __future__ import annotations

import errno
import os
import socket
import stat

from ..errors import EnvironmentProblem
from ..socketserver import TCPServer


def prepare_unix_path(path: str, socket_type: int) -> None:
    """Make `path` free for bind: remove a stale socket file; refuse anything else.

    Raises EnvironmentProblem when a server is listening there, or when the path is a regular
    file, directory, symlink or other non-socket (those are never deleted).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise EnvironmentProblem(
            f"refusing to replace {path}: it is {_file_kind(st.st_mode)}, not a socket",
            hint="remove it yourself if it is yours, or choose another path",
        )
    probe = socket.socket(socket.AF_UNIX, socket_type)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: a stale file left by a dead server
        return
    except OSError as exc:
        if exc.errno == errno.EPROTOTYPE:
            raise EnvironmentProblem(
                f"{path} is a unix socket of another type in use by a running program",
                hint="choose another path",
            ) from None
        raise EnvironmentProblem(
            f"cannot check the existing socket {path}: {exc.strerror}",
            hint="remove it if it is stale, or choose another path",
        ) from None
    finally:
        probe.close()
    raise EnvironmentProblem(
        f"{path} is already in use by a running server",
        hint="stop that server, or choose another path",
    )


def _file_kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    return "a special file"


class UnixFilePart(TCPServer):
    """Bind a unix path safely (stale file replaced, others refused, created with
    `unix_mode`) and remove the file on close, only if it is still the one we made.

    Extends server_bind and server_close. Abstract names (a leading NUL) have no file.
    """

    #: --mode: the permission bits of the socket file (None: as the umask makes them).
    unix_mode: int | None = None
    #: (path, st_dev, st_ino) of the file we made; None: nothing to remove (a worker sets it
    #: to None: the supervisor removes the file).
    _unix_file: tuple[str, int, int] | None = None

    def server_bind(self) -> None:
        """Bind; for a unix path, replace a stale socket file and apply --mode via umask."""
        path = self.server_address
        if (
            self.address_family != getattr(socket, "AF_UNIX", None)
            or not isinstance(path, str)
            or path.startswith("\0")  # abstract namespace: no file to prepare or remove
        ):
            super().server_bind()
            return
        prepare_unix_path(path, self.socket_type)
        old_umask = None
        if self.unix_mode is not None:
            old_umask = os.umask(0o777 & ~self.unix_mode)
        try:
            super().server_bind()
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        st = os.stat(path)
        self._unix_file = (path, st.st_dev, st.st_ino)
        if self.unix_mode is not None:
            os.chmod(path, self.unix_mode)

    def server_close(self) -> None:
        """Close the server, then remove the unix socket file this server created."""
        super().server_close()
        if self._unix_file is not None:
            path, dev, ino = self._unix_file
            self._unix_file = None
            try:
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):
                    os.unlink(path)
            except FileNotFoundError:
                pass
