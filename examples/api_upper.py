"""sockserve from Python: a server in a thread of this program while the block runs."""

import socket

import sockserve

with sockserve.serve("tcp", handler="upper") as server:  # 127.0.0.1, a free port
    with socket.create_connection(server.address, timeout=2) as sock:
        sock.sendall(b"hello\n")
        print(sock.recv(100))  # b'HELLO\n'
    server.wait_for_connections(1)
(conn,) = server.connections  # stopped: every count is final
print(conn.bytes_in, conn.bytes_out, conn.data_in)  # 6 6 b'hello\n'
