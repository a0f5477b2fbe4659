"""A lock held on both sides of a partition, seen lost after the merge by
redis-py clients: as a RESP3 push, and in-band as -LOST on RESP3 and RESP2.

Usage: duplicate.py PORT_A PORT_B (the agents of the two sides). Prints
"locked" once both sides granted, then waits for a line on stdin (the
partition healed).
"""
import sys
import time

import redis

A, B = int(sys.argv[1]), int(sys.argv[2])


def conn(port, protocol):
    return redis.Redis(port=port, protocol=protocol, single_connection_client=True, socket_timeout=10)


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


r3 = {"a": conn(A, 3), "b": conn(B, 3)}
r2 = {"a": conn(A, 2), "b": conn(B, 2)}
t3 = {side: c.execute_command("LOCK", "dup3", 5000) for side, c in r3.items()}
t2 = {side: c.execute_command("LOCK", "dup2", 5000) for side, c in r2.items()}
check(f"both sides granted dup3 {t3} and dup2 {t2}", all(isinstance(t, int) for t in [*t3.values(), *t2.values()]))
print("locked", flush=True)
sys.stdin.readline()

# RESP3: the loser is pushed `lost dup3 token duplicate` without asking.
pushes = {}
deadline = time.monotonic() + 30
while not pushes and time.monotonic() < deadline:
    for side, c in r3.items():
        if c.connection.can_read(timeout=0.05):
            pushes[side] = c.connection.read_response(push_request=True)
check(f"one RESP3 holder was pushed a loss: {pushes}", len(pushes) == 1)
(loser, push), = pushes.items()
winner = "b" if loser == "a" else "a"
check("the lower token lost", t3[loser] < t3[winner])
check(f"the push is lost, name, token, reason", push == [b"lost", b"dup3", t3[loser], b"duplicate"])
e = error_of(lambda: r3[loser].execute_command("UNLOCK", "dup3"))
check(f"and the next command naming it is -LOST in-band ({e!r})", e == f"LOST dup3 {t3[loser]} duplicate")
check("the winner still holds it", r3[winner].execute_command("HOLDS", "dup3") == 1)

# RESP2: no pushes; the next command naming the lock tells.
loser2 = "a" if t2["a"] < t2["b"] else "b"
winner2 = "b" if loser2 == "a" else "a"
e = None
deadline = time.monotonic() + 10
while e is None and time.monotonic() < deadline:
    e = error_of(lambda: r2[loser2].execute_command("HOLDS", "dup2"))
    time.sleep(0.02)
check(f"RESP2: the lower token's holder is answered -LOST in-band ({e!r})", e == f"LOST dup2 {t2[loser2]} duplicate")
check("RESP2: the winner still holds it", r2[winner2].execute_command("HOLDS", "dup2") == 1)
print("duplicate: all checks passed")
