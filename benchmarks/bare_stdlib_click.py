"""The start-up anchor: the bare stdlib socketserver echo script, plus `import click`.

    python benchmarks/bare_stdlib_click.py 127.0.0.1:PORT

A command-line tool built on click pays for importing it (about as much as the rest of a
start-up) before it parses a single option. `sockserve tcp 127.0.0.1:PORT -H echo -c thread`
should start about as fast as this script; `bare_stdlib.py` is the same without click.
"""

import socketserver
import sys

import click  # noqa: F401  what any click command imports before it starts


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


host, _, port = sys.argv[1].rpartition(":")
socketserver.ThreadingTCPServer.allow_reuse_address = True
with socketserver.ThreadingTCPServer((host, int(port)), Echo) as server:
    server.serve_forever()
