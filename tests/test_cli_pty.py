"""The real `sockserve` command in a pty: start, talk, Ctrl-C, exit codes, errors."""

from __future__ import annotations

import errno
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pexpect
import pytest
from clitools import finish, inet_address, spawn, tcp_exchange, wait_listening


def test_tcp_upper_then_ctrl_c_prints_summary_and_exits_0() -> None:
    child = spawn(["tcp", "127.0.0.1:0", "-H", "upper"])
    url = wait_listening(child)
    assert url.startswith("tcp://127.0.0.1:")
    child.expect(r"\(thread, handler=upper")
    addr = inet_address(url)
    assert tcp_exchange(addr, b"hello world\n") == b"HELLO WORLD\n"
    child.expect("close 127.0.0.1:")
    child.sendintr()
    child.expect(r"stopped after [\d.]+s: 1 connection, 12 B in, 12 B out, 0 errors")
    status, out = finish(child)
    assert status == 0
    assert "Traceback" not in out


def test_port_zero_default_is_loopback() -> None:
    child = spawn(["tcp", ":0", "--once", "-H", "echo"])
    url = wait_listening(child)
    assert url.startswith("tcp://127.0.0.1:")
    assert tcp_exchange(inet_address(url), b"x") == b"x"
    status, out = finish(child)
    assert status == 0
    assert "request limit reached" in out


def test_sigterm_stops_gracefully_and_removes_unix_socket(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "a.sock")
    child = spawn(["unix", path, "-H", "upper"])
    url = wait_listening(child)
    assert url == f"unix://{path}"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(b"abc")
        assert s.recv(10) == b"ABC"
    os.kill(child.pid, signal.SIGTERM)
    status, out = finish(child)
    assert status == 0
    assert "SIGTERM received" in out
    assert not os.path.exists(path)


def test_second_ctrl_c_forces_exit_130(tmp_path) -> None:
    handler = tmp_path / "hang.py"
    handler.write_text(
        textwrap.dedent(
            """
            import threading
            import sockserve

            class Hang(sockserve.BaseRequestHandler):
                def handle(self):
                    self.request.sendall(b"in\\n")
                    threading.Event().wait()
            """
        )
    )
    child = spawn(["tcp", ":0", "-H", f"{handler}:Hang", "--grace", "60"])
    addr = inet_address(wait_listening(child))
    with socket.create_connection(addr, timeout=10) as s:
        assert s.recv(3) == b"in\n"
        started = time.monotonic()
        child.sendintr()
        child.expect(r"stopping: waiting up to 60s for 1 request.*Ctrl-C again to force")
        child.sendintr()
        status, out = finish(child)
        assert time.monotonic() - started < 10
    assert status == 130
    assert "Traceback" not in out


def test_grace_period_aborts_a_hung_handler(tmp_path) -> None:
    handler = tmp_path / "hang.py"
    handler.write_text(
        "import threading, sockserve\n"
        "class Hang(sockserve.BaseRequestHandler):\n"
        "    def handle(self):\n"
        "        self.request.sendall(b'in')\n"
        "        self.request.recv(1)\n"
    )
    child = spawn(["tcp", ":0", "-H", str(handler), "--grace", "0.2"])
    addr = inet_address(wait_listening(child))
    with socket.create_connection(addr, timeout=10) as s:
        assert s.recv(2) == b"in"
        started = time.monotonic()
        child.sendintr()
        status, out = finish(child)
        elapsed = time.monotonic() - started
    assert status == 0
    assert 0.16 < elapsed < 5
    assert "grace period of 0.2s over" in out


def test_daemon_threads_says_it_does_not_wait(tmp_path) -> None:
    """--daemon-threads: the stop does not wait for a running request, and says so (not
    "waiting up to 60s")."""
    handler = tmp_path / "hang.py"
    handler.write_text(
        "import sockserve\n"
        "class Hang(sockserve.BaseRequestHandler):\n"
        "    def handle(self):\n"
        "        self.request.sendall(b'in')\n"
        "        self.request.recv(1)\n"
    )
    child = spawn(["tcp", ":0", "-H", str(handler), "--daemon-threads", "--grace", "60"])
    addr = inet_address(wait_listening(child))
    with socket.create_connection(addr, timeout=10) as s:
        assert s.recv(2) == b"in"
        started = time.monotonic()
        child.sendintr()
        status, out = finish(child)
        assert time.monotonic() - started < 10
    assert status == 0
    assert "stopping: not waiting for 1 request (--daemon-threads): it ends with the process" in out
    assert "waiting up to" not in out
    assert "Traceback" not in out


def _somaxconn() -> int:
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except OSError:
        return 0


@pytest.mark.skipif(_somaxconn() < 400, reason="needs net.core.somaxconn of 400 or more")
def test_a_burst_of_300_connects_waits_in_the_backlog() -> None:
    """Thread mode's default backlog (2048, capped by somaxconn) holds a burst of 300 connects
    while the server cannot accept (stopped here): none waits a SYN retry, a second later."""
    child = spawn(["tcp", ":0", "-H", "echo", "-q", "--print-address"])  # -q: no line per client
    child.expect(r"127\.0\.0\.1:(\d+)")
    addr = ("127.0.0.1", int(child.match.group(1)))
    os.kill(child.pid, signal.SIGSTOP)
    clients: list[socket.socket] = []
    try:
        for _ in range(300):
            client = socket.socket()
            clients.append(client)
            client.setblocking(False)
            assert client.connect_ex(addr) in (0, errno.EINPROGRESS)
        pending = set(clients)
        deadline = time.monotonic() + 0.5  # a SYN dropped on a full queue is resent after 1 s
        while pending and (left := deadline - time.monotonic()) > 0:
            _, writable, _ = select.select([], list(pending), [], left)
            pending -= set(writable)
        assert not pending, f"{len(pending)} of 300 connects still waiting after 0.5s"
        assert all(c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for c in clients)
        os.kill(child.pid, signal.SIGCONT)
        for client in clients:
            client.setblocking(True)
            client.settimeout(10)
            client.sendall(b"x")
        assert all(client.recv(1) == b"x" for client in clients)  # each one served
    finally:
        os.kill(child.pid, signal.SIGCONT)
        for client in clients:
            client.close()
    child.sendintr()
    status, out = finish(child)
    assert status == 0, out


def test_once_in_fork_mode_waits_for_the_child() -> None:
    child = spawn(["tcp", ":0", "--once", "-c", "fork", "-H", "upper", "-v"])
    addr = inet_address(wait_listening(child))
    assert tcp_exchange(addr, b"fork me") == b"FORK ME"
    status, out = finish(child)
    assert status == 0
    assert "7 B in, 7 B out" in out


def test_json_lines_parse(tmp_path) -> None:
    child = spawn(["tcp", ":0", "-H", "echo", "--json", "--max-requests", "2"])
    child.expect(rb'\{"event": "listening".*\}')
    listening = json.loads(child.match.group(0))
    addr = inet_address(listening["url"])
    for payload in (b"one", b"three"):
        assert tcp_exchange(addr, payload) == payload
    status, out = finish(child)
    assert status == 0
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert kinds.count("connect") == 2
    assert kinds.count("close") == 2
    assert kinds[-1] == "shutdown"
    assert events[-1]["bytes_in"] == 8
    assert events[-1]["connections"] == 2


def test_handler_error_is_logged_and_server_goes_on(tmp_path) -> None:
    handler = tmp_path / "boom.py"
    handler.write_text(
        "import sockserve\n"
        "class Boom(sockserve.BaseRequestHandler):\n"
        "    def handle(self):\n"
        "        data = self.request.recv(100)\n"
        "        if data == b'boom':\n"
        "            raise ValueError('kaboom')\n"
        "        self.request.sendall(data)\n"
    )
    child = spawn(["tcp", ":0", "-H", f"{handler}:Boom"])
    addr = inet_address(wait_listening(child))
    assert tcp_exchange(addr, b"boom") == b""
    child.expect(r"error handling 127.0.0.1:\d+: ValueError: kaboom")
    child.expect("Traceback")
    assert tcp_exchange(addr, b"fine", expect=4) == b"fine"
    child.sendintr()
    child.expect("1 error")
    status, _ = finish(child)
    assert status == 0


def test_print_address_in_a_shell_pipeline() -> None:
    script = (
        f"exec 3< <({sys.executable} -m sockserve tcp :0 --print-address --once -q -H upper)\n"
        "read -r addr <&3\n"
        f"{sys.executable} -c \"import socket,sys; h,p=sys.argv[1].rsplit(':',1); "
        "s=socket.create_connection((h,int(p)),timeout=10); s.sendall(b'piped'); "
        's.shutdown(1); print(s.recv(99).decode())" "$addr"\n'
        "wait\n"
    )
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "PIPED"


def test_print_host_port_reads_into_two_words_without_brackets() -> None:
    """--print-host-port: `read -r host port` gets ::1 and the port, which a client that
    refuses [::1] takes (the `${addr%:*}` of --print-address would keep the brackets)."""
    script = (
        f"exec 3< <({sys.executable} -m sockserve tcp [::1]:0 --print-host-port --once -q"
        " -H upper)\n"
        "read -r host port <&3\n"
        'echo "host=$host port=$port"\n'
        f'{sys.executable} -c "import socket,sys; '
        "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=10); "
        "s.sendall(b'piped'); "
        's.shutdown(1); print(s.recv(99).decode())" "$host" "$port"\n'
        "wait\n"
    )
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    first, second = out.stdout.splitlines()
    assert re.fullmatch(r"host=::1 port=\d+", first), out.stdout
    assert second == "PIPED"


def test_stdout_handler_pipes_into_another_process(tmp_path) -> None:
    out_file = tmp_path / "out.txt"
    cmd = (
        f"{sys.executable} -m sockserve tcp :0 -H stdout --max-requests 2 | tr a-z A-Z > {out_file}"
    )
    child = pexpect.spawn("bash", ["-c", cmd], timeout=15, env=dict(os.environ, NO_COLOR="1"))
    addr = inet_address(wait_listening(child))
    tcp_exchange(addr, b"first\n")
    tcp_exchange(addr, b"second\n")
    status, out = finish(child)
    assert status == 0, out
    assert out_file.read_text() == "FIRST\nSECOND\n"


def test_downstream_pipe_closing_is_a_clean_exit() -> None:
    cmd = (
        f"{sys.executable} -m sockserve tcp :0 -H stdout | head -c 5; "
        "echo status=${PIPESTATUS[0]}"
    )
    child = pexpect.spawn("bash", ["-c", cmd], timeout=15, env=dict(os.environ, NO_COLOR="1"))
    addr = inet_address(wait_listening(child))
    for _ in range(3):  # the first write fills head; a later one finds the pipe closed
        try:
            tcp_exchange(addr, b"x" * 100_000)
        except OSError:
            break
    status, out = finish(child)
    assert "status=0" in out
    assert "Traceback" not in out
    assert "stdout closed" in out


def test_port_in_use_is_one_line_exit_1() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        child = spawn(["tcp", f"127.0.0.1:{port}", "--no-reuse-address"])
        status, out = finish(child)
    assert status == 1
    lines = out.strip().splitlines()
    assert lines[0] == f"sockserve: error: address 127.0.0.1:{port} is already in use"
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("handler_src", "spec_suffix", "message"),
    [
        ("def broken(:\n", "", r"line 1"),
        ("import sockserve\nclass A(sockserve.BaseRequestHandler): pass\n", ":Nope", "Nope"),
        ("X = 3\n", ":X", "not a"),
    ],
)
def test_handler_errors_exit_2(tmp_path, handler_src: str, spec_suffix: str, message: str) -> None:
    handler = tmp_path / "h.py"
    handler.write_text(handler_src)
    child = spawn(["tcp", ":0", "-H", f"{handler}{spec_suffix}"])
    status, out = finish(child)
    assert status == 2, out
    assert "Traceback" not in out
    assert re.search(message, out), out


def test_module_not_found_exit_2() -> None:
    child = spawn(["tcp", ":0", "-H", "no_such_module_xyz:Handler"])
    status, out = finish(child)
    assert status == 2
    assert "no_such_module_xyz" in out
    assert "Traceback" not in out


def test_stream_handler_refused_for_udp(tmp_path) -> None:
    handler = tmp_path / "lines.py"
    handler.write_text(
        "import socketserver\nclass Lines(socketserver.StreamRequestHandler):\n    pass\n"
    )
    child = spawn(["udp", ":0", "-H", f"{handler}:Lines"])
    status, out = finish(child)
    assert status == 2
    assert "Traceback" not in out
    assert "udp" in out or "dgram" in out


def test_bad_address_exit_2() -> None:
    child = spawn(["tcp", "127.0.0.1:99999"])
    status, out = finish(child)
    assert status == 2
    assert "Invalid value for 'ADDRESS'" in out


def test_version_and_python_m() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sockserve", "--version"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0
    assert out.stdout.startswith("sockserve ")
    exe = shutil.which("sockserve")
    if exe:
        same = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
        assert same.stdout == out.stdout
