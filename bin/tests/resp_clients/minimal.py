"""A swimlock client written from the README's "Client protocol" section
alone: a socket, RESP encoding of commands, RESP2/RESP3 replies. No Redis
library. Usage: minimal.py PORT.
"""
import socket
import sys


class Error(Exception):
    pass


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n):
        while len(self.buf) < n + 2:
            self.buf += self.sock.recv(4096)
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        """One reply; pushes are returned as ("push", items)."""
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return Error(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            return None if int(rest) < 0 else self.exact(int(rest))
        if kind == b"_":
            return None
        if kind == b"#":
            return rest == b"t"
        if kind in (b"*", b">"):
            items = [self.reply() for _ in range(int(rest))]
            return ("push", items) if kind == b">" else items
        if kind == b"%":
            return {self.reply(): self.reply() for _ in range(int(rest))}
        raise ValueError(line)

    def call(self, *args):
        self.send(*args)
        return self.reply()


def check(what, cond):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        sys.exit(1)


port = int(sys.argv[1])
a, b = Conn(port), Conn(port)
token = a.call("LOCK", "mini", 1000)
check(f"LOCK gives a token ({token})", isinstance(token, int) and 0 < token < 2**63)
check("re-entry: the same token", a.call("LOCK", "mini", 1000) == token)
check("HOLDS", a.call("HOLDS", "mini") == 2)
check("TRYLOCK by another connection: null", b.call("TRYLOCK", "mini") is None)
err = b.call("LOCK", "mini", 100)
check(f"LOCK with a timeout: -TIMEOUT ({err})", isinstance(err, Error) and str(err).startswith("TIMEOUT"))
lease = a.call("LEASE", "mini")
check(f"LEASE: milliseconds left ({lease})", isinstance(lease, int) and lease > 0)
# Pipelined: three commands sent at once, three replies in order.
for cmd in (("UNLOCK", "mini"), ("UNLOCK", "mini"), ("UNLOCK", "mini")):
    a.send(*cmd)
replies = [a.reply() for _ in range(3)]
check(f"pipelined replies in order ({replies})", replies[:2] == ["OK", "OK"] and str(replies[2]).startswith("NOTHELD"))
status = a.call("STATUS")
fields = dict(zip(status[::2], status[1::2]))
check("STATUS over RESP2: keys and values", b"members" in fields and b"view_id" in fields)
hello = a.call("HELLO", 3)
check(f"HELLO 3: a map with proto 3", isinstance(hello, dict) and hello.get(b"proto") == 3)
status = a.call("STATUS")
check("STATUS over RESP3: a map with member states", all(m[b"state"] == b"alive" for m in status[b"members"]))
check("unknown command: an error, connection kept", isinstance(a.call("SELECT", 1), Error) and a.call("PING") == "PONG")
check("QUIT", a.call("QUIT") == "OK")
print("minimal client: all checks passed")
