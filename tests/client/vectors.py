"""A Milvus client as an operator's application would be: connect through the load
balancer, write vectors, search them.

  vectors.py HOST PORT write   create the collection, insert 1000 vectors, index, load
  vectors.py HOST PORT check   the collection is there: count and a nearest-neighbour search
  vectors.py HOST PORT count   like check, but only prints {"count": N, "top": ID} (no verdict)
  vectors.py HOST PORT login   one attempt, no retry: prints "logged in" or why not
  vectors.py HOST[,HOST...] PORT watch STOPFILE
                               search ten times a second through each host's load balancer
                               until STOPFILE exists; print one JSON line per load balancer:
                               searches, failures, and the longest gap between answers

Logs in as root with the password in MILVUS_PASSWORD (the cluster's, from
/etc/milvus-fleet/credentials/milvus; Milvus' first one, "Milvus", when unset).
Prints one line per step; exits non-zero on any failure.
"""
import os
import random
import sys
import time

from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, connections, utility

NAME, DIM, ROWS = "fleet_smoke", 16, 1000
LOGIN = {"user": "root", "password": os.environ.get("MILVUS_PASSWORD", "Milvus")}


def vectors():
    rng = random.Random(7)  # the same vectors on every run
    return [[rng.random() for _ in range(DIM)] for _ in range(ROWS)]


def watch(hosts, port, stopfile):
    """A client's view during a fault: each load balancer searched on its own thread."""
    import json
    import os
    import threading

    data = vectors()
    results = {}

    def one(host):
        alias = f"lb-{host}"
        searches = failures = 0
        errors = {}
        start = last_answer = time.monotonic()
        longest = 0.0
        collection = None
        while not os.path.exists(stopfile):
            tick = time.monotonic()
            try:
                if collection is None:
                    connections.connect(alias=alias, host=host, port=port, timeout=2, **LOGIN)
                    collection = Collection(NAME, using=alias)
                hits = collection.search([data[123]], "vec", {"metric_type": "L2", "params": {}},
                                         limit=1, timeout=2)[0]
                if hits[0].id != 123:
                    raise RuntimeError(f"wrong top hit {hits[0].id}")
                now = time.monotonic()
                longest = max(longest, now - last_answer)
                last_answer = now
            except Exception as e:  # noqa: BLE001 - every failure is what the client sees
                failures += 1
                kind = type(e).__name__
                errors[kind] = errors.get(kind, 0) + 1
                collection = None
                try:
                    connections.disconnect(alias)
                except Exception:  # noqa: BLE001
                    pass
            searches += 1
            time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
        longest = max(longest, time.monotonic() - last_answer)
        results[host] = {"lb": host, "searches": searches, "failures": failures,
                         "longest_gap_s": round(longest, 3), "errors": errors,
                         "seconds": round(time.monotonic() - start, 1)}

    threads = [threading.Thread(target=one, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for h in hosts:
        print(json.dumps(results[h]))


def login(host, port):
    """One login and one call that needs it; exits non-zero with the reason when refused."""
    try:
        connections.connect(host=host, port=port, timeout=10, **LOGIN)
        utility.list_collections(timeout=10)
    except Exception as e:  # noqa: BLE001 - the refusal is the answer
        sys.exit(f"refused: {type(e).__name__}: {e}")
    print("logged in")


def main(host, port, mode):
    deadline = time.time() + 120
    while True:  # the server may still be starting behind the load balancer
        try:
            connections.connect(host=host, port=port, timeout=10, **LOGIN)
            print("server version:", utility.get_server_version())
            break
        except Exception as e:  # noqa: BLE001 - any failure to connect is retried
            if time.time() > deadline:
                raise
            print("waiting for Milvus:", type(e).__name__)
            time.sleep(2)
    data = vectors()
    if mode == "write":
        if utility.has_collection(NAME):
            utility.drop_collection(NAME)
        schema = CollectionSchema([
            FieldSchema("id", DataType.INT64, is_primary=True),
            FieldSchema("vec", DataType.FLOAT_VECTOR, dim=DIM),
        ])
        collection = Collection(NAME, schema)
        collection.insert([list(range(ROWS)), data])
        collection.flush()
        collection.create_index("vec", {"index_type": "FLAT", "metric_type": "L2", "params": {}})
        print("inserted", ROWS)
    collection = Collection(NAME)
    # Bounded waits: a server that cannot serve fails the caller instead of hanging it.
    collection.load(timeout=300)
    hits = collection.search([data[123]], "vec", {"metric_type": "L2", "params": {}}, limit=3, timeout=60)[0]
    count = collection.query("id >= 0", output_fields=["count(*)"], timeout=60)[0]["count(*)"]
    if mode == "count":
        import json
        print(json.dumps({"count": count, "top": hits[0].id}))
        return
    print(f"top hit for vector #123: id={hits[0].id} distance={hits[0].distance:.6f}; count {count}")
    if hits[0].id != 123 or count != ROWS:
        sys.exit("wrong answer")


if __name__ == "__main__":
    if sys.argv[3] == "watch":
        watch(sys.argv[1].split(","), sys.argv[2], sys.argv[4])
    elif sys.argv[3] == "login":
        login(sys.argv[1], sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2], sys.argv[3])
