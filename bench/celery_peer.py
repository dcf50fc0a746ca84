"""The peer users pick: Celery on the same RabbitMQ, measured in the same `make bench` run as MiniFlow.

Two result backends, as Celery users deploy it: Redis (on this machine) and Postgres (the database
MiniFlow persists into). The same two workloads as MiniFlow's:

  diamond-10   one no-op task, a group of 8, one that gets their results (a chord), DIAMOND_RUNS
               canvases sent at once: steps/s from the first send to the last canvas's result
  chain-10     ten no-op tasks in a chain, one canvas at a time: each task stamps when it ran, and the
               time per step is (last end - first start) / 9, as MiniFlow's chain-10 is measured

Celery runs as its users get it: the default prefork pool with one process per core, its default
acknowledgement (early: before the task runs) and prefetch; and once more on Redis "durable", with
the settings that give it MiniFlow's delivery guarantee (acks late, reject on worker lost, publisher
confirms). Nothing of it is imported by MiniFlow; it is a dev dependency (pyproject's `dev` extra).

    python -m bench.celery_peer            both backends, a JSON line per backend
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery, chain, chord, group

ROOT = Path(__file__).resolve().parent.parent
BROKER_URL = os.environ.get("MINIFLOW_BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDIS_URL = os.environ.get("MINIFLOW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
DIAMOND_RUNS = 200
CHAIN_RUNS = 30
QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "bench_celery_peer")

app = Celery("bench_peer", broker=os.environ.get("BENCH_CELERY_BROKER", BROKER_URL),
             backend=os.environ.get("BENCH_CELERY_BACKEND", REDIS_URL))
app.conf.update(task_default_queue=QUEUE, broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
                result_expires=3600)
# "durable": the settings that give Celery MiniFlow's delivery guarantee (a task is acked after it ran,
# and redelivered if its worker dies; every publish confirmed by the broker).
DURABLE = {"task_acks_late": True, "task_reject_on_worker_lost": True,
           "broker_transport_options": {"confirm_publish": True}}
if os.environ.get("BENCH_CELERY_DURABLE") == "1":
    app.conf.update(DURABLE)


@app.task(name="peer.noop")  # type: ignore[untyped-decorator]
def noop(*_args: Any) -> None:
    return None


@app.task(name="peer.stamp")  # type: ignore[untyped-decorator]
def stamp(acc: list[list[float]] | None = None) -> list[list[float]]:
    """When this task ran, appended to what the previous task of the chain returned."""
    started = time.time()
    return [*(acc or []), [started, time.time()]]


def client(backend: str, queue: str, durable: bool) -> Celery:
    """An app for the sending side, on ``backend`` and ``queue`` (tasks named, not imported)."""
    peer = Celery("bench_peer_client", broker=BROKER_URL, backend=backend)
    peer.conf.update(task_default_queue=queue, broker_connection_retry_on_startup=True)
    if durable:
        peer.conf.update(DURABLE)
    return peer


def diamond_canvas(peer: Celery) -> Any:
    def one() -> Any:
        return peer.signature("peer.noop", immutable=True)

    return chain(one(), chord(group(one() for _ in range(8)), one()))


class PeerWorker:
    """A `celery worker` process on the queue of this run, its log in the temporary folder."""

    def __init__(self, backend: str, queue: str, durable: bool) -> None:
        self.name = f"peer-{uuid.uuid4().hex[:6]}@bench"
        self.log = Path(tempfile.mkstemp(prefix="miniflow-bench-celery-", suffix=".log")[1])
        env = dict(os.environ, BENCH_CELERY_BACKEND=backend, BENCH_CELERY_QUEUE=queue, BENCH_CELERY_BROKER=BROKER_URL,
                   BENCH_CELERY_DURABLE="1" if durable else "0")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "bench.celery_peer", "worker", "-Q", queue, "-n", self.name,
                 "-l", "WARNING", "--without-gossip", "--without-mingle"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, peer: Celery, timeout: float = 60) -> PeerWorker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Celery worker exited: {self.log.read_text()[-2000:]}")
            if peer.control.ping(destination=[self.name], timeout=0.5):
                return self
        raise RuntimeError(f"the Celery worker was not ready in {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def diamond(peer: Celery, runs: int) -> dict[str, float]:
    start = time.monotonic()
    sent = [diamond_canvas(peer).apply_async() for _ in range(runs)]
    for result in sent:
        result.get(timeout=300)
    elapsed = time.monotonic() - start
    return {"runs": runs, "seconds": round(elapsed, 3), "steps_per_s": round(runs * 10 / elapsed, 1)}


def chain10(peer: Celery, runs: int) -> dict[str, float]:
    per_step = []
    for _ in range(runs):
        tasks = [peer.signature("peer.stamp") for _ in range(10)]
        stamps = chain(*tasks).apply_async().get(timeout=60)
        per_step.append((stamps[-1][1] - stamps[0][0]) * 1000 / 9)  # nine gaps between ten tasks
    return {"chain10_ms_per_step_median": round(statistics.median(per_step), 2),
            "chain10_ms_per_step_max": round(max(per_step), 2)}


def measure(backend: str, *, durable: bool = False, diamond_runs: int = DIAMOND_RUNS,
            chain_runs: int = CHAIN_RUNS) -> dict[str, Any]:
    """diamond-10 and chain-10 on a fresh queue with ``backend``; the queue is deleted after."""
    queue = f"{QUEUE}_{uuid.uuid4().hex[:6]}"
    peer = client(backend, queue, durable)
    worker = PeerWorker(backend, queue, durable)
    try:
        worker.wait_ready(peer)
        diamond(peer, 20)  # warm-up: connections, the pool's processes
        figures: dict[str, Any] = {"diamond10": diamond(peer, diamond_runs)}
        figures.update(chain10(peer, chain_runs))
    finally:
        worker.stop()
        with peer.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        peer.close()
    return figures


def peers(database_dsn: str) -> dict[str, Any]:
    """Both backends: Redis, and Postgres at ``database_dsn`` (a postgresql:// DSN of a scratch database)."""
    import celery

    out: dict[str, Any] = {"celery": celery.__version__, "pool": "prefork", "concurrency": os.cpu_count()}
    out["redis"] = measure(REDIS_URL)
    out["redis_durable"] = measure(REDIS_URL, durable=True)
    out["postgres"] = measure("db+" + database_dsn.replace("postgresql://", "postgresql+psycopg2://", 1))
    return out


if __name__ == "__main__":
    from bench.harness import scratch_database

    with scratch_database() as dsn:
        print(json.dumps(peers(dsn)), flush=True)
