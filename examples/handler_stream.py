"""Number the lines clients send: sockserve tcp :9999 -H examples/handler_stream.py"""

import itertools

import sockserve as socketserver  # or the stdlib's: import socketserver

counter = itertools.count(1)  # one count per process: shared by threads, copied by fork


class Numbered(socketserver.StreamRequestHandler):
    def handle(self):  # called once per connection
        for line in self.rfile:  # until the client closes its side
            self.wfile.write(b"%d %s" % (next(counter), line))
