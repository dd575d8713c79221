"""The seed's TCP example as a whole program, on sockserve: `import sockserve as socketserver`.

Run as `python upper_server.py`: listens on 127.0.0.1 (port 0, printed on stdout), upper-cases
one message per connection and runs until Ctrl-C, exactly as a stdlib program would.
"""

import sys

import sockserve as socketserver


class UpperHandler(socketserver.BaseRequestHandler):
    """Answer one message with the same text, upper-cased."""

    def handle(self):
        message = self.request.recv(1024).strip()
        print(f"{self.client_address[0]} wrote: {message!r}", flush=True)
        self.request.sendall(message.upper())


if __name__ == "__main__":
    with socketserver.TCPServer(("127.0.0.1", 0), UpperHandler) as server:
        print("port", server.server_address[1], flush=True)
        try:
            server.serve_forever()
        finally:
            print("closing", flush=True)
    sys.exit("not reached: Ctrl-C ends serve_forever with KeyboardInterrupt")
