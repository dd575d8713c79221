"""Answer each datagram reversed: sockserve udp :9999 -H examples/handler_dgram.py"""

import sockserve as socketserver  # or the stdlib's: import socketserver


class Reverse(socketserver.DatagramRequestHandler):
    def handle(self):  # called once per datagram
        data = self.rfile.read().rstrip(b"\n")  # the whole datagram
        self.wfile.write(data[::-1] + b"\n")  # sent back to the client as one datagram
