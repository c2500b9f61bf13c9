"""How a shop's application talks to sessionrec over Kafka, with confluent-kafka only.

    python shop_client.py --bootstrap localhost:9092 send u42 view 1001
    python shop_client.py --bootstrap localhost:9092 item 1001 --name "Trail shoe" --price 89
    python shop_client.py --bootstrap localhost:9092 listen [--user u42]

`send` produces one interaction event, `item` one catalog upsert, `listen` prints the
recommendations the workers send (one line each) until interrupted. The message formats are
those of docs/integration.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Iterator

from confluent_kafka import Consumer, Producer


def make_producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            # THE PARTITIONER NOTE. Events are keyed by user_id, so that all of a user's events
            # reach the one worker that holds the user's session. The query API finds that
            # worker by Kafka's murmur2 hash of the key, as the Java client and KafkaJS
            # partition. librdkafka (confluent-kafka, and clients built on it) hashes with
            # CRC32 unless told otherwise: tell it, or the API asks the wrong worker.
            "partitioner": "murmur2_random",
            "enable.idempotence": True,  # no duplicates when the producer retries
            "linger.ms": 5,
        }
    )


def send_event(
    producer: Producer,
    user_id: str,
    item_id: str,
    event_type: str = "view",
    ts_ms: int | None = None,
    topic: str = "events",
) -> None:
    """One interaction: view, cart, remove_from_cart or buy. The key is the user_id."""
    event = {
        "user_id": user_id,
        "item_id": item_id,
        "type": event_type,
        "ts": ts_ms if ts_ms is not None else int(time.time() * 1000),
    }
    producer.produce(topic, key=user_id.encode(), value=json.dumps(event).encode())


def send_item(producer: Producer, item: dict[str, object], topic: str = "items") -> None:
    """A catalog upsert (item_id, name, category, brand, price; deleted: true to remove).
    The key is the item_id: the topic is compacted to the latest record of each item."""
    producer.produce(topic, key=str(item["item_id"]).encode(), value=json.dumps(item).encode())


def recommendations(
    bootstrap: str,
    topic: str = "recommendations",
    group: str | None = None,
    from_beginning: bool = False,
    timeout_s: float | None = None,
) -> Iterator[dict[str, object]]:
    """Recommendation messages as they arrive (each one a user's fresh list). A shop's app
    keeps one consumer group (`group`), so that each answer is read once by one of its
    replicas; without one, a fresh group reads on its own."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group or f"shop-client-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest" if from_beginning else "latest",
        }
    )
    consumer.subscribe([topic])
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while deadline is None or time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                print(f"consumer: {msg.error()}", file=sys.stderr)
                continue
            yield json.loads(msg.value())
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="localhost:9092", help="Kafka bootstrap servers")
    parser.add_argument("--events-topic", default="events")
    parser.add_argument("--items-topic", default="items")
    parser.add_argument("--recommendations-topic", default="recommendations")
    commands = parser.add_subparsers(dest="command", required=True)
    send = commands.add_parser("send", help="produce one interaction event")
    send.add_argument("user_id")
    send.add_argument("type", choices=["view", "cart", "remove_from_cart", "buy"])
    send.add_argument("item_id")
    item = commands.add_parser("item", help="produce one catalog upsert")
    item.add_argument("item_id")
    item.add_argument("--name")
    item.add_argument("--category")
    item.add_argument("--brand")
    item.add_argument("--price", type=float)
    listen = commands.add_parser("listen", help="print recommendations as they arrive")
    listen.add_argument("--user", help="only this user's")
    listen.add_argument("--from-beginning", action="store_true")
    listen.add_argument("--count", type=int, help="stop after this many")
    listen.add_argument("--timeout", type=float, help="stop after this many seconds")
    args = parser.parse_args(argv)

    if args.command in ("send", "item"):
        producer = make_producer(args.bootstrap)
        if args.command == "send":
            send_event(producer, args.user_id, args.item_id, args.type, topic=args.events_topic)
        else:
            fields = {k: getattr(args, k) for k in ("name", "category", "brand", "price")}
            given = {k: v for k, v in fields.items() if v is not None}
            send_item(producer, {"item_id": args.item_id, **given}, topic=args.items_topic)
        if producer.flush(10) != 0:
            print("could not deliver within 10 s: is the broker reachable?", file=sys.stderr)
            return 1
        return 0

    seen = 0
    for answer in recommendations(
        args.bootstrap,
        args.recommendations_topic,
        from_beginning=args.from_beginning,
        timeout_s=args.timeout,
    ):
        if args.user and answer["user_id"] != args.user:
            continue
        items = " ".join(str(i["item_id"]) for i in answer["items"])  # type: ignore[attr-defined]
        print(f"{answer['user_id']}: {items}", flush=True)
        seen += 1
        if args.count and seen >= args.count:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
