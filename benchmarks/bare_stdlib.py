"""The smallest stdlib socketserver echo script: how fast a Python server can start.

    python benchmarks/bare_stdlib.py 127.0.0.1:PORT

Shown beside the start-up anchor, `bare_stdlib_click.py` (this script plus `import click`).
"""

import socketserver
import sys


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


host, _, port = sys.argv[1].rpartition(":")
socketserver.ThreadingTCPServer.allow_reuse_address = True
with socketserver.ThreadingTCPServer((host, int(port)), Echo) as server:
    server.serve_forever()
