"""The baseline: plain dramatiq on the same RabbitMQ, in this process (run as a child of bench.run).

Prints one JSON line: no-op drain msg/s with N threads in one process, and the sequential hop
latency of an actor that sends the next message from inside itself. With a fifth argument
`confirmed`, the broker is set up as MiniFlow's is: publisher confirms and priority queues.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
import uuid

import dramatiq
import pika
from dramatiq.brokers.rabbitmq import RabbitmqBroker


def main(url: str, messages: int, threads: int, hops: int, confirmed: bool = False) -> dict[str, float]:
    """``confirmed``: the broker as MiniFlow sets it up (publisher confirms, priority queues)."""
    prefix = f"rawbench_{uuid.uuid4().hex[:6]}"
    broker = RabbitmqBroker(url=url, confirm_delivery=True, max_priority=10) if confirmed else RabbitmqBroker(url=url)
    dramatiq.set_broker(broker)
    done = threading.Event()
    count = [0]
    lock = threading.Lock()
    hop_times: list[float] = []

    @dramatiq.actor(queue_name=f"{prefix}_drain", broker=broker)
    def noop() -> None:
        with lock:
            count[0] += 1
            if count[0] >= messages:
                done.set()

    hop_done = threading.Event()

    @dramatiq.actor(queue_name=f"{prefix}_hop", broker=broker)
    def hop(n: int) -> None:
        hop_times.append(time.perf_counter())
        if n > 0:
            hop.send(n - 1)
        else:
            hop_done.set()

    for _ in range(messages):
        noop.send()
    worker = dramatiq.Worker(broker, worker_threads=threads)
    start = time.perf_counter()
    worker.start()
    done.wait(300)
    drain_s = time.perf_counter() - start
    hop.send(hops)
    hop_done.wait(300)
    worker.stop()
    gaps = [b - a for a, b in zip(hop_times, hop_times[1:], strict=False)]
    broker.close()
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    for q in (f"{prefix}_drain", f"{prefix}_hop"):
        for suffix in ("", ".DQ", ".XQ"):
            channel.queue_delete(q + suffix)
    connection.close()
    return {"drain_msgs_per_s": messages / drain_s, "hop_ms_median": statistics.median(gaps) * 1000,
            "hop_ms_p99": sorted(gaps)[int(len(gaps) * 0.99) - 1] * 1000, "threads": threads}


if __name__ == "__main__":
    url, messages, threads, hops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(main(url, messages, threads, hops, confirmed=sys.argv[5:6] == ["confirmed"])))
