"""--exec in fork mode: what a request child's programs leave behind dies with the child."""

from __future__ import annotations

import contextlib
import os
import signal

from ..socketserver import ForkingMixIn


class ProgramGroupsPart(ForkingMixIn):
    """Once a request child is reaped, kill what is left of the process group that bears its
    pid, where it starts its program (`builtins.program.spawn_in_child_group`): a program
    never outlives its request child, however the child ended (even SIGKILL).

    Extends collect_children (fork mode, --exec).
    """

    def collect_children(self, *, blocking: bool = False) -> None:
        """Reap finished children (see ForkingMixIn), then kill their programs' leftovers."""
        before = set(self.active_children or ())
        super().collect_children(blocking=blocking)
        for pid in before.difference(self.active_children or ()):
            self.kill_leftovers(pid)

    def kill_leftovers(self, pid: int) -> None:
        """The request child `pid` is gone (reaped): kill the programs it may have left (also
        called by the lifecycle's abort). The number of a group is not reused while the group
        has a member: this reaches that child's programs or nothing at all."""
        with contextlib.suppress(OSError):  # nothing left
            os.killpg(pid, signal.SIGKILL)
