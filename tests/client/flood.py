"""Holds connections open against a port, as an outsider without a certificate would:
IDLE plain TCP connections that send nothing, and STALLED TLS handshakes that send a
record header and stop, for SECONDS; a connection the server closes is opened again a
second later.
Prints one JSON line: how many were opened in all and how many the server closed.

    python3 flood.py HOST PORT IDLE STALLED SECONDS
"""

import json
import resource
import selectors
import socket
import sys
import time

host, port = sys.argv[1], int(sys.argv[2])
idle, stalled, seconds = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

# A TLS handshake record header announcing 512 bytes that never come.
STALL = b"\x16\x03\x01\x02\x00"


def connect(kind):
    s = socket.create_connection((host, port), timeout=5)
    if kind == "stalled":
        s.sendall(STALL)
    s.setblocking(False)
    return s


held = selectors.DefaultSelector()
opened = closed = refused = 0


def open_one(kind):
    global opened, refused
    try:
        held.register(connect(kind), selectors.EVENT_READ, kind)
        opened += 1
    except OSError:
        refused += 1


for kind, count in (("idle", idle), ("stalled", stalled)):
    for _ in range(count):
        open_one(kind)

# A closed connection is opened again a second later: the flood holds its count without
# turning into a connect storm.
again = []
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    now = time.monotonic()
    while again and again[0][0] <= now:
        open_one(again.pop(0)[1])
    for key, _ in held.select(timeout=0.2):
        try:
            gone = key.fileobj.recv(4096) == b""
        except OSError:
            gone = True
        if gone:
            held.unregister(key.fileobj)
            key.fileobj.close()
            closed += 1
            again.append((time.monotonic() + 1.0, key.data))

print(json.dumps({"opened": opened, "closed_by_server": closed, "refused": refused}))
