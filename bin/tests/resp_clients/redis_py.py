"""swimlock's client endpoint driven by redis-py (>= 5), as an application would.

Usage: redis_py.py PORT. Exits non-zero on the first failed check.
"""
import socket
import sys
import time

import redis

PORT = int(sys.argv[1])
assert tuple(int(x) for x in redis.__version__.split(".")[:2]) >= (5, 0), redis.__version__


def conn(protocol):
    # A dedicated connection: the locks belong to it.
    return redis.Redis(port=PORT, protocol=protocol, single_connection_client=True, socket_timeout=10)


def check(what, cond):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        sys.exit(1)


def error_of(f):
    try:
        f()
    except redis.ResponseError as e:
        return str(e)
    return None


a = conn(3)  # HELLO 3; redis-py checks the `proto` of the reply, then sends CLIENT SETINFO (an error it ignores)
b = conn(2)
check("PING over RESP3", a.ping() is True)
check("PING over RESP2", b.ping() is True)

# Lock, re-entry, unlock.
t1 = a.execute_command("LOCK", "py/a", 1000)
check("LOCK replies the token as an integer", isinstance(t1, int) and t1 > 0)
t2 = a.execute_command("LOCK", "py/a", 1000)
check("re-entry gets the same token", t2 == t1)
check("HOLDS counts the holds", a.execute_command("HOLDS", "py/a") == 2)
check("LEASE is milliseconds left", 0 < a.execute_command("LEASE", "py/a") <= 60_000)

# Two connections exclude each other.
check("TRYLOCK of a held lock is a null reply", b.execute_command("TRYLOCK", "py/a") is None)
started = time.monotonic()
e = error_of(lambda: b.execute_command("LOCK", "py/a", 300))
waited = time.monotonic() - started
check(f"a blocking LOCK times out with -TIMEOUT ({e!r} after {waited:.2f}s)", e is not None and e.startswith("TIMEOUT") and 0.25 < waited < 5)
check("UNLOCK", a.execute_command("UNLOCK", "py/a") in (b"OK", "OK", True))
check("the lock is still held once", a.execute_command("HOLDS", "py/a") == 1)
check("UNLOCK again", a.execute_command("UNLOCK", "py/a") in (b"OK", "OK", True))
e = error_of(lambda: a.execute_command("UNLOCK", "py/a"))
check(f"UNLOCK of what is not held is -NOTHELD ({e!r})", e is not None and e.startswith("NOTHELD"))
t3 = b.execute_command("TRYLOCK", "py/a")
check("the other connection takes it once free, with a higher token", isinstance(t3, int) and t3 > t1)

# A blocking LOCK is granted when the holder lets go.
c = conn(3)
c.execute_command("LOCK", "py/wait")
import threading
got = {}
waiter = threading.Thread(target=lambda: got.setdefault("t", b.execute_command("LOCK", "py/wait", 5000)))
waiter.start()
time.sleep(0.2)
check("the waiter waits", waiter.is_alive())
c.execute_command("UNLOCK", "py/wait")
waiter.join(5)
check("the waiter is granted once the holder unlocks", isinstance(got.get("t"), int))

# A connection that closes releases its locks.
d = conn(3)
d.execute_command("LOCK", "py/drop")
d.close()
t = None
deadline = time.monotonic() + 5
while t is None and time.monotonic() < deadline:
    t = a.execute_command("TRYLOCK", "py/drop")
    time.sleep(0.02)
check("a dropped connection's lock is released", isinstance(t, int))

# Pipelining: replies in order, a LOCK that waits holds back what follows.
p = a.pipeline(transaction=False)
p.execute_command("LOCK", "py/p1", 1000)
p.execute_command("HOLDS", "py/p1")
p.execute_command("TRYLOCK", "py/p2")
p.execute_command("UNLOCK", "py/p1")
p.execute_command("UNLOCK", "py/p2")
p.execute_command("HOLDS", "py/p1")
r = p.execute(raise_on_error=False)
check(f"pipelined replies come in order ({r!r})", isinstance(r[0], int) and r[1] == 1 and isinstance(r[2], int) and r[5] == 0)

# STATUS is a map.
s = a.execute_command("STATUS")
keys = {k.decode() if isinstance(k, bytes) else k for k in s}
want = {"node", "view_id", "members", "coordinator", "mode", "quorum", "locks", "version"}
check(f"STATUS has {sorted(want)}", want <= keys)
members = s[b"members"] if b"members" in s else s["members"]
check("members carry their state", all((m.get(b"state") or m.get("state")) in (b"alive", "alive") for m in members))
s2 = b.execute_command("STATUS")
check("STATUS over RESP2 is a flat list of keys and values", isinstance(s2, list) and b"node" in s2[::2])

# Errors with codes, never a close.
for cmd in (["SELECT", "0"], ["COMMAND", "DOCS"], ["CLIENT", "SETINFO", "LIB-NAME", "x"], ["SET", "k", "v"], ["LOCK"]):
    e = error_of(lambda: a.execute_command(*cmd))
    check(f"{' '.join(cmd)} is an error ({e!r})", e is not None)
e = error_of(lambda: a.execute_command("LOCK", b"\xff\xfe"))
check(f"a non-UTF-8 name is -BADNAME ({e!r})", e is not None and e.startswith("BADNAME"))
check("the connection still serves", a.ping() is True)
print("redis-py: all checks passed")
