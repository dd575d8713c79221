"""The start-up baseline: the smallest stdlib socketserver echo script.

    python benchmarks/bare_stdlib.py 127.0.0.1:PORT

What `sockserve tcp 127.0.0.1:PORT -H echo -c thread` should start about as fast as.
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
