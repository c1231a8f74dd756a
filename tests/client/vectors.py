"""A Milvus client as an operator's application would be: connect through the load
balancer, write vectors, search them.

  vectors.py HOST PORT write   create the collection, insert 1000 vectors, index, load
  vectors.py HOST PORT check   the collection is there: count and a nearest-neighbour search

Prints one line per step; exits non-zero on any failure.
"""
import random
import sys
import time

from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, connections, utility

NAME, DIM, ROWS = "fleet_smoke", 16, 1000


def vectors():
    rng = random.Random(7)  # the same vectors on every run
    return [[rng.random() for _ in range(DIM)] for _ in range(ROWS)]


def main(host, port, mode):
    deadline = time.time() + 120
    while True:  # the server may still be starting behind the load balancer
        try:
            connections.connect(host=host, port=port, timeout=10)
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
    print(f"top hit for vector #123: id={hits[0].id} distance={hits[0].distance:.6f}; count {count}")
    if hits[0].id != 123 or count != ROWS:
        sys.exit("wrong answer")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
