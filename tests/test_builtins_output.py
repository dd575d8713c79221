"""The output of stdout and stdio, and what the adapters share (receive buffers, options)."""

from __future__ import annotations

import dataclasses
import io
import os

import pytest

from sockserve import builtins as bh
from sockserve.builtins.output import OutputFailed, OutputWriter
from sockserve.builtins.shared import Buffers


def test_output_closed_without_file_descriptor() -> None:
    out = io.BytesIO()
    out.close()
    writer = OutputWriter(out)
    with pytest.raises(bh.OutputClosed):
        writer.write(b"x")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_raises_output_failed() -> None:
    with open("/dev/full", "wb") as full:
        writer = OutputWriter(full)
        with pytest.raises(OutputFailed) as info:
            writer.write(b"lost")
    assert str(info.value) == "cannot write to stdout: no space left on device"
    assert info.value.hint == "free some space where stdout goes, or redirect it elsewhere"


def test_a_buffer_is_ready_before_the_first_connection() -> None:
    """Made up front, so fork mode's children take the parent's copy instead of zeroing one."""
    pool = Buffers(4096)
    (ready,) = pool._free
    assert pool.get() is ready and len(ready) == 4096
    assert len(pool.get()) == 4096 and pool._free == []


def test_handler_options_are_frozen() -> None:
    options = bh.HandlerOptions(reply=b"x")
    assert options == bh.HandlerOptions(reply=b"x") and options.chunk_size == 65536
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.reply = b"y"  # type: ignore[misc] # the point of the test
