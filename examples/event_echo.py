"""Echo, as a protocol-style handler: sockserve tcp :9999 -c event -H examples/event_echo.py"""

import asyncio


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)
