"""`make bench`: MiniFlow beside raw dramatiq on the same RabbitMQ, in one invocation.

Measures (full persistence in Postgres, workers as separate processes):
  baseline      raw dramatiq: no-op drain msg/s (1 process x --threads threads) and sequential hop
                latency, and the hop again with publisher confirms and priority queues as MiniFlow sets them
  diamond-10    1 -> 8 parallel -> 1 no-op steps, RUNS runs started at once: steps/s and runs/s
  chain-10      ten sequential steps, one run at a time: ms per step (median, p99)
  start latency publish of a start -> first step running (median, p99)
  fan-out-100   one run of 100 parallel no-op steps: publish to run finished (median of FANOUT_RUNS)
  wide runs     the growth curve: one run of 100 / 300 / 1,000 parallel steps, and 1,000 with a join,
                as seconds and steps/s next to diamond-10's steps/s (the cost per result must not grow);
                and map-1000: one run of a map step over 1,000 elements (then a join), the same way
  scale         diamond-10 of I/O-bound steps (a 100 ms sleep) with 1, 2 and 4 executor processes,
                against the ideal (executor threads / step time), with how busy the machine's cores
                were and the workers' CPU time per step (where the ceiling is)
  tracing       diamond-10 again with every process exporting spans over OTLP to a receiver
  metrics       diamond-10 A/B: both workers serving /metrics, scraped every 5 s, against none
  running       diamond-10 again with the executor reporting every step as running (the worst case)
  auth          diamond-10 and chain-10 signed and with MINIFLOW_AUTH=off, alternated 3 times (A/B)
  memory        peak RSS of each worker process
  cron          fire lateness of a per-second schedule over 70 ticks (bench/cron_lateness.py)
  peers         Celery on the same RabbitMQ, Redis and Postgres result backends: diamond-10 and chain-10,
                and MiniFlow's ratio to each (bench/celery_peer.py; --skip-peers leaves it out)
Writes bench/results.json and prints a table with each figure's ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import psycopg2

from bench.api import api_figures
from bench.harness import (
    ADMIN_DSN,
    BROKER_URL,
    ROOT,
    Worker,
    bench_env,
    delete_queues,
    machine,
    miniflow,
    provision,
    scratch_database,
    wait_terminal,
)

DIAMOND = "name: bench-diamond\nsteps:\n  - {name: first, task: bench.noop}\n" + "".join(
    f"  - {{name: p{i}, task: bench.noop, needs: [first]}}\n" for i in range(8)) + \
    "  - {name: last, task: bench.noop, needs: [" + ", ".join(f"p{i}" for i in range(8)) + "]}\n"
FANOUT = "name: bench-fanout\nsteps:\n" + "".join(f"  - {{name: f{i}, task: bench.noop}}\n" for i in range(100))
FANOUT_WIDTHS = (100, 300, 1000)  # the growth curve: one run of that many parallel steps at a time


def fanout_workflow(width: int, join: bool = False) -> str:
    """``width`` steps: all parallel no-ops, or (``join``) ``width - 1`` of them and one that needs
    them all (a workflow has at most 1,000 steps)."""
    name = f"bench-fanout-{width}" + ("-join" if join else "")
    parallel = width - 1 if join else width
    text = f"name: {name}\nsteps:\n" + "".join(f"  - {{name: f{i}, task: bench.noop}}\n" for i in range(parallel))
    if join:
        text += f"  - {{name: join, task: bench.noop, needs: [{', '.join(f'f{i}' for i in range(parallel))}]}}\n"
    return text


BIG = ("name: bench-big\nsteps:\n  - {name: make, task: bench.blob, config: {kib: 250}}\n"
       "  - {name: take, task: bench.noop, needs: [make]}\n")
BIG_RUNS = 100
SLEEP_S = 0.1
SLEEPY = DIAMOND.replace("bench-diamond", "bench-diamond-io").replace(
    "task: bench.noop", f"task: bench.sleep, config: {{seconds: {SLEEP_S}}}")
FANOUT_RUNS = 5
SCALE_RUNS = 100
SCALE_EXECUTORS = (1, 2, 4)
CHAIN = "name: bench-chain\nsteps:\n  - {name: s0, task: bench.noop}\n" + "".join(
    f"  - {{name: s{i}, task: bench.noop, needs: [s{i - 1}]}}\n" for i in range(1, 10))


PEER_BACKENDS = ("redis", "redis_durable", "postgres")  # Celery's result backends (and settings) measured


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered))) - 1))]


def baseline(threads: int) -> dict[str, float]:
    """Raw dramatiq: drain and hop with its default broker, and the hop again with publisher
    confirms and priority queues (MiniFlow's broker settings)."""
    figures = {}
    for args, prefix in ((["5000"], ""), (["500"], "confirmed_")):
        out = subprocess.run([sys.executable, "-m", "bench.raw_dramatiq", BROKER_URL, *args, str(threads), "300",
                              *(["confirmed"] if prefix else [])],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        figures.update({prefix + k: v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()})
    return figures


class Cluster:
    def __init__(self, env: dict[str, str], threads: int, *executor_args: str,
                 coordinator_args: tuple[str, ...] = ()) -> None:
        self.coordinator = Worker(env, "--role", "coordinator", "--role", "results", "--threads", str(threads),
                                  *coordinator_args)
        self.executor = Worker(env, "--steps", "bench.steps", "--threads", str(threads), *executor_args)
        self.coordinator.wait_ready()
        self.executor.wait_ready()

    def rss(self) -> dict[str, float]:
        return {"coordinator+results": round(self.coordinator.peak_rss_mb(), 1),
                "executor": round(self.executor.peak_rss_mb(), 1)}

    def cpu_seconds(self) -> float:
        """CPU time (user + system) both workers have used so far, from /proc."""
        return cpu_seconds(self.coordinator, self.executor)

    def metrics_urls(self) -> list[str]:
        """The /metrics of both workers, when they serve them (`--metrics-port`)."""
        urls = []
        for worker in (self.coordinator, self.executor):
            ready = next((x for x in worker.lines if "miniflow worker ready" in x), "")
            if "metrics=" in ready:
                urls.append(ready.split("metrics=", 1)[1].split()[0].replace("0.0.0.0", "127.0.0.1"))
        return urls

    def stop(self) -> None:
        self.coordinator.stop()
        self.executor.stop()

    def spans_lost(self) -> int:
        """Spans the stopped workers say they lost ("tracing: N of M spans lost"; none said: none)."""
        lost = 0
        for worker in (self.coordinator, self.executor):
            worker.pumped.wait(10)
            lost += sum(int(line.split("tracing: ", 1)[1].split()[0]) for line in worker.lines if "spans lost" in line)
        return lost


def cpu_seconds(*workers: Worker) -> float:
    """CPU time (user + system) the workers have used so far, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for worker in workers:
        fields = Path(f"/proc/{worker.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def host_jiffies() -> tuple[int, int]:
    """(busy, all) CPU time of the whole machine so far, every core, from /proc/stat; busy counts
    time stolen by the hypervisor too (it was not ours to use)."""
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def diamond(env: dict[str, str], runs: int, workflow: str = "bench-diamond") -> dict[str, float]:
    from miniflow.protocol.publisher import Publisher

    dsn = env["MINIFLOW_DATABASE_URL"]
    with psycopg2.connect(dsn.replace("postgresql+psycopg2", "postgresql")) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from runs")
        before = cur.fetchone()[0]
    with Publisher(BROKER_URL, env["MINIFLOW_NAMESPACE"]) as pub:
        start = time.monotonic()
        for _ in range(runs):
            pub.start_workflow(workflow, idempotency_key=str(uuid.uuid4()))
    end = wait_terminal(dsn, before + runs)
    elapsed = end - start
    return {"runs": runs, "seconds": round(elapsed, 3), "steps_per_s": round(runs * 10 / elapsed, 1),
            "runs_per_s": round(runs / elapsed, 1)}


def one_at_a_time(env: dict[str, str], workflow: str, runs: int) -> list[float]:
    """Seconds from publish to the end of each of ``runs`` runs of ``workflow``, one at a time."""
    from miniflow.protocol.publisher import Publisher

    dsn = env["MINIFLOW_DATABASE_URL"]
    times = []
    with Publisher(BROKER_URL, env["MINIFLOW_NAMESPACE"]) as pub:
        for _ in range(runs):
            with psycopg2.connect(dsn.replace("postgresql+psycopg2", "postgresql")) as conn, conn.cursor() as cur:
                cur.execute("select count(*) from runs where status in ('succeeded','failed','cancelled')")
                before = cur.fetchone()[0]
            start = time.monotonic()
            pub.start_workflow(workflow, idempotency_key=str(uuid.uuid4()))
            times.append(wait_terminal(dsn, before + 1) - start)
    return times


MAP_1000 = ("name: bench-map-1000\nsteps:\n  - {name: split, task: bench.range, config: {n: 1000}}\n"
            "  - {name: each, task: bench.noop, needs: [split], map: {over: split, concurrency: 1000}}\n"
            "  - {name: join, task: bench.noop, needs: [each]}\n")


def fanout(env: dict[str, str], runs: int) -> dict[str, float]:
    """One run of 100 parallel steps at a time: seconds from publish to the run's end."""
    times = one_at_a_time(env, "bench-fanout", runs)
    return {"fanout100_s_median": round(statistics.median(times), 3), "fanout100_s_max": round(max(times), 3),
            "fanout100_steps_per_s": round(100 / statistics.median(times), 1)}


def wide_runs(env: dict[str, str], diamond_steps_per_s: float) -> dict[str, Any]:
    """The growth curve: one run of 100, 300 and 1,000 parallel steps (and 999 with a join), and of
    a map step over 1,000 elements, each as seconds and steps/s (median of 3, or of 2 at 1,000),
    next to diamond-10's steps/s."""
    curve: dict[str, Any] = {}
    shapes = [(f"bench-fanout-{w}", w) for w in FANOUT_WIDTHS]
    shapes += [(f"bench-fanout-{FANOUT_WIDTHS[-1]}-join", FANOUT_WIDTHS[-1]), ("bench-map-1000", 1000)]
    for name, steps in shapes:  # a map's steps counted: its elements
        times = one_at_a_time(env, name, 2 if steps >= 1000 else 3)
        median = statistics.median(times)
        curve[name.removeprefix("bench-")] = {"s_median": round(median, 3), "steps_per_s": round(steps / median, 1),
                                              "vs_diamond10": round(steps / median / diamond_steps_per_s, 2)}
        print(f"{name}: {curve[name.removeprefix('bench-')]}", flush=True)
    return curve


def memory_after_burst(env: dict[str, str], cluster: Cluster) -> dict[str, Any]:
    """BIG_RUNS runs at once whose 250 KiB output travels inline (in a result, then in the next
    step's message): each worker's resident memory 5 s after the last run ended, and its peak, and
    both as they were before the burst (the peak is the process's: what came before counts too)."""
    from miniflow.protocol.publisher import Publisher

    dsn = env["MINIFLOW_DATABASE_URL"]
    with psycopg2.connect(dsn.replace("postgresql+psycopg2", "postgresql")) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from runs")
        before = cur.fetchone()[0]
    workers = (("coordinator+results", cluster.coordinator), ("executor", cluster.executor))
    was = {role: {"now": round(w.rss_mb(), 1), "peak": round(w.peak_rss_mb(), 1)} for role, w in workers}
    with Publisher(BROKER_URL, env["MINIFLOW_NAMESPACE"]) as pub:
        for _ in range(BIG_RUNS):
            pub.start_workflow("bench-big", idempotency_key=str(uuid.uuid4()))
    wait_terminal(dsn, before + BIG_RUNS)
    time.sleep(5)  # what stays resident once the burst is over (each worker's main loop trims its heap every 5 s)
    return {role: {"before": was[role], "now": round(worker.rss_mb(), 1), "peak": round(worker.peak_rss_mb(), 1)}
            for role, worker in workers}


def scale(env: dict[str, str], cluster: Cluster, threads: int) -> dict[str, Any]:
    """diamond-10 with 100 ms sleeping steps and 1, 2, 4 executor processes (the cluster's one + extra);
    each point with its share of the ideal, every executor thread always busy sleeping."""
    curve: dict[str, Any] = {}
    extra: list[Worker] = []
    try:
        for count in SCALE_EXECUTORS:
            while len(extra) + 1 < count:
                extra.append(Worker(env, "--steps", "bench.steps", "--threads", str(threads)).wait_ready())
            workers, host = cpu_seconds(cluster.coordinator, cluster.executor, *extra), host_jiffies()
            point: dict[str, Any] = diamond(env, SCALE_RUNS, "bench-diamond-io")
            busy, every = (after - before for after, before in zip(host_jiffies(), host, strict=True))
            # where the ceiling is: the machine's cores busy (all processes: Postgres, RabbitMQ too)
            point["host_cpu_busy"] = round(busy / every, 3) if every else None
            point["worker_cpu_ms_per_step"] = round(
                (cpu_seconds(cluster.coordinator, cluster.executor, *extra) - workers) * 1000 / (SCALE_RUNS * 10), 2)
            point["ideal_steps_per_s"] = round(count * threads / SLEEP_S, 1)
            point["share_of_ideal"] = round(point["steps_per_s"] / point["ideal_steps_per_s"], 3)
            curve[str(count)] = point
            print(f"scale, {count} executor(s): {curve[str(count)]}", flush=True)
    finally:
        for worker in extra:
            worker.stop()
    return curve


def chain_and_start_latency(env: dict[str, str], runs: int) -> dict[str, float]:
    from miniflow.protocol.publisher import Publisher

    dsn = env["MINIFLOW_DATABASE_URL"].replace("postgresql+psycopg2", "postgresql")
    per_step, start_latency = [], []
    with Publisher(BROKER_URL, env["MINIFLOW_NAMESPACE"]) as pub, psycopg2.connect(dsn) as conn:
        conn.autocommit = True
        cur = conn.cursor()
        for _ in range(runs):
            key = str(uuid.uuid4())
            published = time.time()
            pub.start_workflow("bench-chain", idempotency_key=key)
            deadline = time.monotonic() + 60
            while True:
                cur.execute("select id, status from runs where idempotency_key = %s", (key,))
                row = cur.fetchone()
                if row and row[1] in ("succeeded", "failed"):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("chain run did not finish")
                time.sleep(0.002)
            cur.execute("select step, extract(epoch from started_at), extract(epoch from finished_at) "
                        "from step_attempts where run_id = %s order by started_at", (row[0],))
            attempts = cur.fetchall()
            first_start, last_end = float(attempts[0][1]), float(attempts[-1][2])
            start_latency.append((first_start - published) * 1000)
            per_step.append((last_end - first_start) * 1000 / 9)  # nine gaps between ten steps
    return {"chain10_ms_per_step_median": round(statistics.median(per_step), 2),
            "chain10_ms_per_step_p99": round(pct(per_step, 0.99), 2),
            "start_latency_ms_median": round(statistics.median(start_latency), 2),
            "start_latency_ms_p99": round(pct(start_latency, 0.99), 2)}


AB_ROUNDS = 3
TRACE_ROUNDS = 2
PEER_ROUNDS = 2
METRICS_ROUNDS = 4
METRICS_SCRAPE_S = 1.0


def sides(round_: int) -> tuple[str, str]:
    """The order of an A/B round: on first, then off first, and so on, so that a machine getting
    faster or slower during the bench does not favour one side."""
    return ("on", "off") if round_ % 2 == 0 else ("off", "on")


def decode_cost() -> dict[str, float]:
    """What the consumer's check costs per body (in this process, no broker): a real start, and the
    worst body under the size limit the budget allows, 99,000 empty maps (median of 50 each)."""
    from miniflow.actors.guard import Guard
    from miniflow.protocol import codec
    from miniflow.protocol.envelope import envelope
    from miniflow.protocol.names import QueueNames

    names = QueueNames("bench")
    guard = Guard(names)
    start = codec.pack(envelope(names.ingress, "start_workflow", {"v": 1, "workflow": "w", "params": {"x": 1}}))
    bomb: bytes = msgpack.packb({"queue_name": names.ingress, "args": [[{}] * 99_000]}, use_bin_type=True)

    def median_ms(body: bytes) -> float:
        times = []
        for _ in range(50):
            began = time.perf_counter()
            guard.inspect(names.ingress, body)
            times.append((time.perf_counter() - began) * 1000)
        return round(statistics.median(times), 3)

    return {"start_ms": median_ms(start), "bomb_ms": median_ms(bomb), "bomb_bytes": len(bomb)}


def metrics_ab(env: dict[str, str], threads: int) -> dict[str, float]:
    """The cost of Prometheus metrics, A/B: clusters with `--metrics-port 0` on both workers, scraped
    every METRICS_SCRAPE_S (three times as often as the 15 s of docs/dashboards.md), and without,
    alternated METRICS_ROUNDS times; medians of diamond-10 steps/s."""
    import httpx

    seen: dict[str, list[float]] = {"on": [], "off": []}
    cpu: dict[str, list[float]] = {"on": [], "off": []}  # ms of worker CPU per step: less noisy than steps/s
    scrapes = 0
    for round_ in range(METRICS_ROUNDS):
        for side in sides(round_):
            extra = ("--metrics-port", "0") if side == "on" else ()
            cluster = Cluster(env, threads, *extra, coordinator_args=extra)
            stop = threading.Event()

            def scrape(urls: list[str], stop: threading.Event) -> None:
                nonlocal scrapes
                with httpx.Client(timeout=5) as client:  # one client, as a scraper keeps its connections
                    while not stop.wait(METRICS_SCRAPE_S):
                        for url in urls:
                            client.get(url)
                            scrapes += 1

            scraper = threading.Thread(target=scrape, args=(cluster.metrics_urls(), stop), daemon=True)
            try:
                scraper.start()
                diamond(env, 20)
                used = cluster.cpu_seconds()
                seen[side].append(diamond(env, 100)["steps_per_s"])
                steps = 100 * 10  # diamond-10: ten steps a run
                cpu[side].append(round((cluster.cpu_seconds() - used) * 1000 / steps, 3))
            finally:
                stop.set()
                scraper.join(timeout=10)
                cluster.stop()
    on, off = statistics.median(seen["on"]), statistics.median(seen["off"])
    cpu_on, cpu_off = statistics.median(cpu["on"]), statistics.median(cpu["off"])
    print(f"metrics A/B: steps/s on {seen['on']} off {seen['off']}; worker CPU ms per step on {cpu['on']} off "
          f"{cpu['off']} ({scrapes} scrapes)", flush=True)
    return {"diamond10_steps_per_s_on": on, "diamond10_steps_per_s_off": off,
            "diamond10_on_vs_off": round(on / off, 3), "cpu_ms_per_step_on": cpu_on, "cpu_ms_per_step_off": cpu_off,
            "cpu_on_vs_off": round(cpu_on / cpu_off, 3), "scrapes": scrapes}


def auth_ab(env: dict[str, str], threads: int) -> dict[str, float]:
    """The cost of message authentication, measured A/B: clusters signed and with MINIFLOW_AUTH=off,
    alternated AB_ROUNDS times (the load of a shared machine drifts more than the cost itself),
    medians of each side."""
    seen: dict[str, dict[str, list[float]]] = {"on": {"steps": [], "chain": []}, "off": {"steps": [], "chain": []}}
    for round_ in range(AB_ROUNDS):
        for side in sides(round_):
            cluster = Cluster(dict(env, MINIFLOW_AUTH=side), threads)
            try:
                diamond(env, 20)
                seen[side]["steps"].append(diamond(env, 100)["steps_per_s"])
                seen[side]["chain"].append(chain_and_start_latency(env, 20)["chain10_ms_per_step_median"])
            finally:
                cluster.stop()
    on = {k: statistics.median(v) for k, v in seen["on"].items()}
    off = {k: statistics.median(v) for k, v in seen["off"].items()}
    print(f"auth A/B: steps/s on {seen['on']['steps']} off {seen['off']['steps']}; chain ms on "
          f"{seen['on']['chain']} off {seen['off']['chain']}", flush=True)
    return {"diamond10_steps_per_s_on": on["steps"], "diamond10_steps_per_s_off": off["steps"],
            "diamond10_on_vs_off": round(on["steps"] / off["steps"], 3),
            "chain10_ms_per_step_on": on["chain"], "chain10_ms_per_step_off": off["chain"],
            "chain10_ms_per_step_added": round(on["chain"] - off["chain"], 2)}


def deploy_all(env: dict[str, str], namespace: str) -> None:
    wide = [(f"fanout{w}", fanout_workflow(w)) for w in FANOUT_WIDTHS]
    wide.append((f"fanout{FANOUT_WIDTHS[-1]}join", fanout_workflow(FANOUT_WIDTHS[-1], join=True)))
    wide.append(("map1000", MAP_1000))
    for name, text in (("diamond", DIAMOND), ("chain", CHAIN), ("fanout", FANOUT), ("io", SLEEPY), ("big", BIG),
                       *wide):
        path = Path(f"/tmp/{namespace}-{name}.yaml")
        path.write_text(text)
        miniflow(env, "deploy", str(path))


def miniflow_figures(env: dict[str, str], args: argparse.Namespace, results: dict[str, Any]) -> None:
    """diamond-10, memory, chain-10 and start latency, the wide runs; then (not --quick) fan-out-100,
    the API's figures and the scale curve: one cluster, plain settings."""
    cluster = Cluster(env, args.threads)
    try:
        diamond(env, 20)  # warm-up: connections, caches
        results["diamond10"] = diamond(env, args.runs)
        print(f"diamond-10: {results['diamond10']}", flush=True)
        results["rss_mb"] = cluster.rss()
        results.update(chain_and_start_latency(env, args.chain_runs))
        if args.quick:
            results["wide_runs"] = wide_runs(env, results["diamond10"]["steps_per_s"])
            return
        results.update(fanout(env, FANOUT_RUNS))
        print(f"fan-out-100: {results['fanout100_s_median']} s", flush=True)
        results["wide_runs"] = wide_runs(env, results["diamond10"]["steps_per_s"])
        results.update(api_figures(env, args.chain_runs))
        print(f"api: start latency {results['api_start_latency_ms_median']} ms, GET /runs/{{id}} "
              f"{results['api_get_run_per_s_1_clients']} / {results['api_get_run_per_s_4_clients']} per s",
              flush=True)
        results["rss_after_burst_mb"] = memory_after_burst(env, cluster)
        print(f"memory after a burst of 250 KiB messages: {results['rss_after_burst_mb']}", flush=True)
        results["scale"] = scale(env, cluster, args.threads)
    finally:
        cluster.stop()


def traced_diamond(env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """diamond-10 with every process exporting spans to a receiver; the spans it received once the
    workers have stopped (and flushed), and those the workers say they lost (dropped or refused)."""
    from miniflow.ops.tracesink import OtlpReceiver

    with OtlpReceiver(defer=True) as receiver:  # decoded after the measurement, as a collector elsewhere would
        cluster = Cluster(dict(env, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint), args.threads)
        try:
            diamond(env, 20)
            figures: dict[str, Any] = diamond(env, args.runs)
        finally:
            cluster.stop()
        figures["spans_received"] = len(receiver.received())
    figures["spans_lost"] = cluster.spans_lost()
    return figures


def plain_diamond(env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    cluster = Cluster(env, args.threads)
    try:
        diamond(env, 20)
        return diamond(env, args.runs)
    finally:
        cluster.stop()


def tracing_ab(env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """diamond-10 with tracing off, exporting, and exporting with SQL spans, in TRACE_ROUNDS rounds
    (the order turned round each time), each side's median, the spans received and lost."""
    sides_of = {"off": lambda: plain_diamond(env, args), "on": lambda: traced_diamond(env, args),
                "sql": lambda: traced_diamond(dict(env, MINIFLOW_TRACE_SQL="on"), args)}
    seen: dict[str, list[dict[str, Any]]] = {side: [] for side in sides_of}
    for round_ in range(TRACE_ROUNDS):
        for side in (list(sides_of) if round_ % 2 == 0 else list(reversed(sides_of))):
            seen[side].append(sides_of[side]())
    steps = {side: statistics.median(f["steps_per_s"] for f in got) for side, got in seen.items()}
    out = {f"diamond10_steps_per_s_{side}": value for side, value in steps.items()}
    out.update(on_vs_off=round(steps["on"] / steps["off"], 3), sql_vs_off=round(steps["sql"] / steps["off"], 3),
               spans_received_per_run=round(statistics.median(f["spans_received"] for f in seen["on"]) /
                                            (args.runs + 20), 1),
               spans_received_per_run_sql=round(statistics.median(f["spans_received"] for f in seen["sql"]) /
                                                (args.runs + 20), 1),
               spans_lost=sum(f["spans_lost"] for side in ("on", "sql") for f in seen[side]))
    print(f"tracing A/B: steps/s off {[f['steps_per_s'] for f in seen['off']]} on "
          f"{[f['steps_per_s'] for f in seen['on']]} sql {[f['steps_per_s'] for f in seen['sql']]}; {out}", flush=True)
    return out


def side_figures(env: dict[str, str], args: argparse.Namespace, results: dict[str, Any]) -> None:
    """diamond-10 with tracing exporting, signed and not, with metrics scraped, with every step
    reporting running: each on a cluster of its own."""
    results["tracing"] = tracing_ab(env, args)
    results["auth"] = auth_ab(env, args.threads)
    results["metrics"] = metrics_ab(env, args.threads)
    # Worst case of the "running" reports: every step reports, however short (by default a
    # step reports only when still running after 0.2 s, so no-op steps send nothing).
    cluster = Cluster(env, args.threads, "--report-running-after", "0")
    try:
        diamond(env, 20)
        results["diamond10_running_reports"] = diamond(env, args.runs)
    finally:
        cluster.stop()


def peer_figures(env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """Celery on the same RabbitMQ with a Redis and a Postgres result backend (bench/celery_peer.py)
    and MiniFlow (a fresh cluster) in PEER_ROUNDS alternating rounds, diamond-10 and chain-10 each,
    the medians of each side, and MiniFlow's ratio to each: diamond-10 steps/s (above 1: MiniFlow
    leads) and chain-10 ms per step (below 1: MiniFlow leads)."""
    from bench.celery_peer import peers

    ours: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    with scratch_database() as peer_db:
        for _ in range(PEER_ROUNDS):
            cluster = Cluster(env, args.threads)
            try:
                diamond(env, 20)
                mine: dict[str, Any] = {"diamond10": diamond(env, args.runs)}
                mine.update(chain_and_start_latency(env, args.chain_runs))
                ours.append(mine)
            finally:
                cluster.stop()
            rounds.append(peers(peer_db))
    figures: dict[str, Any] = {k: rounds[0][k] for k in ("celery", "pool", "concurrency")}
    def median(values: Any) -> float:
        return round(float(statistics.median(values)), 2)

    figures["miniflow"] = {"diamond10_steps_per_s": median(m["diamond10"]["steps_per_s"] for m in ours),
                           "chain10_ms_per_step_median": median(m["chain10_ms_per_step_median"] for m in ours)}
    for backend in PEER_BACKENDS:
        figures[backend] = {
            "diamond10": {"steps_per_s": median(r[backend]["diamond10"]["steps_per_s"] for r in rounds)},
            "chain10_ms_per_step_median": median(r[backend]["chain10_ms_per_step_median"] for r in rounds),
            "rounds": [r[backend] for r in rounds]}
    ours_steps = figures["miniflow"]["diamond10_steps_per_s"]
    ours_chain = figures["miniflow"]["chain10_ms_per_step_median"]
    print(f"miniflow beside the peers: diamond-10 {[m['diamond10']['steps_per_s'] for m in ours]} steps/s, "
          f"chain-10 {[m['chain10_ms_per_step_median'] for m in ours]} ms/step", flush=True)
    for backend in PEER_BACKENDS:
        theirs = figures[backend]
        theirs["miniflow_diamond10_ratio"] = round(ours_steps / theirs["diamond10"]["steps_per_s"], 2)
        theirs["miniflow_chain10_ratio"] = round(ours_chain / theirs["chain10_ms_per_step_median"], 2)
        print(f"celery {figures['celery']}, {backend} results: diamond-10 {theirs['diamond10']['steps_per_s']} "
              f"steps/s (MiniFlow {theirs['miniflow_diamond10_ratio']}x), chain-10 "
              f"{theirs['chain10_ms_per_step_median']} ms/step (MiniFlow {theirs['miniflow_chain10_ratio']}x)",
              flush=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200, help="diamond-10 runs started at once")
    parser.add_argument("--chain-runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=16,
                        help="threads of every worker process and of the raw dramatiq baseline")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    parser.add_argument("--skip-cron", action="store_true", help="leave out the 70 s cron lateness run")
    parser.add_argument("--skip-ui", action="store_true", help="leave out the web UI's first render (100k runs)")
    parser.add_argument("--skip-scenarios", action="store_true", help="leave out the test engine's suite figure")
    parser.add_argument("--skip-peers", action="store_true",
                        help="leave out Celery on the same broker and its ratios (bench/celery_peer.py)")
    parser.add_argument("--quick", action="store_true",
                        help="only the baseline, diamond-10, chain-10, the wide runs and the peers (a quick check)")
    args = parser.parse_args()

    results: dict[str, Any] = {"machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "threads": args.threads}
    print(f"machine: {results['machine']}", flush=True)
    results["decode"] = decode_cost()
    print(f"guard check: a start {results['decode']['start_ms']} ms, 99,000 empty maps "
          f"{results['decode']['bomb_ms']} ms", flush=True)
    results["baseline"] = base = baseline(args.threads)
    print(f"raw dramatiq: {base['drain_msgs_per_s']:.0f} msg/s, hop {base['hop_ms_median']:.2f} ms, with confirms "
          f"and priorities {base['confirmed_hop_ms_median']:.2f} ms", flush=True)

    namespace = f"bench_{uuid.uuid4().hex[:6]}"
    with scratch_database() as db:
        env = bench_env(namespace, db)
        try:
            env = provision(env)
            deploy_all(env, namespace)
            miniflow_figures(env, args, results)
            if not args.skip_peers:  # alternating with MiniFlow's own rounds, one side's workers at a time
                results["peers"] = peer_figures(env, args)
            if args.quick:
                print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2), flush=True)
                return 0
            side_figures(env, args, results)
        finally:
            delete_queues(namespace)

    if not args.skip_ui:
        from bench.ui import ui_figures
        results["ui"] = ui_figures()
        print(f"ui: {results['ui']}", flush=True)

    if not args.skip_scenarios:
        from bench.scenarios import against_figures, scenario_figures
        results["scenarios"] = scenario_figures()
        print(f"scenarios (embedded, examples/scenarios): {results['scenarios']}", flush=True)
        results["scenarios_against"] = against_figures(BROKER_URL, ADMIN_DSN.replace("postgresql:",
                                                                                     "postgresql+psycopg2:"))
        print(f"scenarios (--against, examples/scenarios): {results['scenarios_against']}", flush=True)

    if not args.skip_cron:
        cron_out = Path(f"/tmp/{namespace}-cron.json")
        done = subprocess.run([sys.executable, "-m", "bench.cron_lateness", "--out", str(cron_out)],
                              cwd=ROOT, timeout=900)
        if done.returncode == 0:
            results["cron_lateness"] = json.loads(cron_out.read_text())

    steps = results["diamond10"]["steps_per_s"]
    results["ratios"] = {
        "diamond10_steps_per_s_vs_raw_drain": round(steps / base["drain_msgs_per_s"], 3),
        "chain10_ms_per_step_vs_raw_hop": round(results["chain10_ms_per_step_median"] / base["hop_ms_median"], 2),
        "chain10_ms_per_step_vs_confirmed_hop": round(
            results["chain10_ms_per_step_median"] / base["confirmed_hop_ms_median"], 2),
        "tracing_on_vs_off": results["tracing"]["on_vs_off"],
        "tracing_sql_vs_off": results["tracing"]["sql_vs_off"],
        "auth_on_vs_off": results["auth"]["diamond10_on_vs_off"],
        "metrics_on_vs_off": results["metrics"]["diamond10_on_vs_off"],
        "auth_cost_ms_per_step_chain": results["auth"]["chain10_ms_per_step_added"],
        "running_report_every_step_vs_default": round(
            results["diamond10_running_reports"]["steps_per_s"] / steps, 3),
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return 0


def print_table(r: dict[str, Any]) -> None:
    base = r["baseline"]
    rows = [
        (f"raw dramatiq no-op drain (1 proc x {r['threads']} threads)", f"{base['drain_msgs_per_s']:.0f} msg/s",
         "1.00"),
        ("raw dramatiq sequential hop", f"{base['hop_ms_median']:.2f} ms", "1.00"),
        ("raw dramatiq hop, confirms + priority queues", f"{base['confirmed_hop_ms_median']:.2f} ms",
         f"{base['confirmed_hop_ms_median'] / base['hop_ms_median']:.2f}x hop"),
        ("diamond-10 steps/s", f"{r['diamond10']['steps_per_s']:.0f}",
         f"{r['ratios']['diamond10_steps_per_s_vs_raw_drain']:.2f} of drain"),
        ("diamond-10 runs/s", f"{r['diamond10']['runs_per_s']:.1f}", ""),
        ("chain-10 ms per step (median / p99)",
         f"{r['chain10_ms_per_step_median']:.2f} / {r['chain10_ms_per_step_p99']:.2f}",
         f"{r['ratios']['chain10_ms_per_step_vs_raw_hop']:.1f}x hop, "
         f"{r['ratios']['chain10_ms_per_step_vs_confirmed_hop']:.1f}x confirmed hop"),
        ("start latency ms (median / p99)",
         f"{r['start_latency_ms_median']:.2f} / {r['start_latency_ms_p99']:.2f}",
         f"{r['start_latency_ms_median'] / base['hop_ms_median']:.1f}x hop"),
        ("start latency through the HTTP API ms (median / p99)",
         f"{r['api_start_latency_ms_median']:.2f} / {r['api_start_latency_ms_p99']:.2f}",
         f"{r['api_start_latency_ms_median'] / r['start_latency_ms_median']:.2f}x the direct publish"),
        ("POST /runs round trip through the HTTP API ms (median)", f"{r['api_start_round_trip_ms_median']:.2f}",
         f"{r['api_start_round_trip_ms_median'] / base['confirmed_hop_ms_median']:.2f}x confirmed hop"),
        ("GET /runs/{id} per s (1 client / 4 clients)",
         f"{r['api_get_run_per_s_1_clients']:.0f} / {r['api_get_run_per_s_4_clients']:.0f}", ""),
        ("fan-out-100, one run, s (median of 5)", f"{r['fanout100_s_median']:.3f}",
         f"{r['fanout100_steps_per_s'] / base['drain_msgs_per_s']:.2f} of drain"),
        *[(f"wide: one run of {name}, s (steps/s)", f"{v['s_median']:.2f} ({v['steps_per_s']:.0f})",
           f"{v['vs_diamond10']:.2f} of diamond-10's steps/s") for name, v in r.get("wide_runs", {}).items()],
        *[(f"scale: diamond-10, 100 ms steps, {n} executor(s), steps/s", f"{v['steps_per_s']:.0f}",
           f"{v['steps_per_s'] / r['scale']['1']['steps_per_s']:.2f}x one, {v['share_of_ideal']:.2f} of ideal, "
           + (f"cores {v['host_cpu_busy']:.0%} busy, workers {v['worker_cpu_ms_per_step']} ms CPU a step"
              if v.get("host_cpu_busy") is not None else "cores: n/a"))
          for n, v in r["scale"].items()],
        *[(f"Celery {r['peers']['celery']} ({r['peers']['pool']} x {r['peers']['concurrency']}), {backend} results: "
            "diamond-10 steps/s / chain-10 ms per step",
            f"{r['peers'][backend]['diamond10']['steps_per_s']:.0f} / "
            f"{r['peers'][backend]['chain10_ms_per_step_median']:.2f}",
            f"MiniFlow ({r['peers']['miniflow']['diamond10_steps_per_s']:.0f} / "
            f"{r['peers']['miniflow']['chain10_ms_per_step_median']:.2f}) "
            f"{r['peers'][backend]['miniflow_diamond10_ratio']:.2f}x the steps/s, "
            f"{r['peers'][backend]['miniflow_chain10_ratio']:.2f}x the ms per step")
          for backend in (PEER_BACKENDS if "peers" in r else ())],
        ("A/B diamond-10 steps/s, tracing exporting / with SQL spans / off",
         f"{r['tracing']['diamond10_steps_per_s_on']:.0f} / {r['tracing']['diamond10_steps_per_s_sql']:.0f} / "
         f"{r['tracing']['diamond10_steps_per_s_off']:.0f}",
         f"{r['ratios']['tracing_on_vs_off']:.2f} / {r['ratios']['tracing_sql_vs_off']:.2f} of tracing off"),
        ("spans received per run (tracing / with SQL spans), spans lost",
         f"{r['tracing']['spans_received_per_run']} / {r['tracing']['spans_received_per_run_sql']}, "
         f"{r['tracing']['spans_lost']}", "lost: dropped by a full queue or refused"),
        ("A/B diamond-10 steps/s, signed / MINIFLOW_AUTH=off",
         f"{r['auth']['diamond10_steps_per_s_on']:.0f} / {r['auth']['diamond10_steps_per_s_off']:.0f}",
         f"signed is {r['ratios']['auth_on_vs_off']:.2f} of off"),
        ("A/B diamond-10 steps/s, metrics served and scraped / off",
         f"{r['metrics']['diamond10_steps_per_s_on']:.0f} / {r['metrics']['diamond10_steps_per_s_off']:.0f}",
         f"metrics on is {r['ratios']['metrics_on_vs_off']:.2f} of off"),
        ("A/B worker CPU ms per step, metrics on / off",
         f"{r['metrics']['cpu_ms_per_step_on']:.2f} / {r['metrics']['cpu_ms_per_step_off']:.2f}",
         f"metrics cost {r['metrics']['cpu_on_vs_off']:.2f}x the CPU"),
        ("A/B chain-10 ms per step, signed / MINIFLOW_AUTH=off",
         f"{r['auth']['chain10_ms_per_step_on']:.2f} / {r['auth']['chain10_ms_per_step_off']:.2f}",
         f"signing adds {r['ratios']['auth_cost_ms_per_step_chain']:.2f} ms per step"),
        ("diamond-10 steps/s, every step reporting running", f"{r['diamond10_running_reports']['steps_per_s']:.0f}",
         f"{r['ratios']['running_report_every_step_vs_default']:.2f} of the default (no reports for short steps)"),
        ("guard check of a body: a start / 99,000 empty maps, ms",
         f"{r['decode']['start_ms']:.3f} / {r['decode']['bomb_ms']:.3f}", "rejected by the decode budget"),
        ("peak RSS MB (coordinator+results / executor)",
         f"{r['rss_mb']['coordinator+results']} / {r['rss_mb']['executor']}", ""),
        *([(f"RSS MB 5 s after {BIG_RUNS} runs of 250 KiB messages, now / peak (coordinator+results; executor)",
            f"{burst['coordinator+results']['now']} / {burst['coordinator+results']['peak']}; "
            f"{burst['executor']['now']} / {burst['executor']['peak']}",
            "target: under 120 MB" + (f"; peak before it {burst['coordinator+results']['before']['peak']}; "
                                      f"{burst['executor']['before']['peak']}"
                                      if "before" in burst["coordinator+results"] else ""))]
          if (burst := r.get("rss_after_burst_mb")) else []),
    ]
    if "cron_lateness" in r:
        cron = r["cron_lateness"]["run_created_ms"]
        rows.append(("cron fire lateness ms (median / p99)", f"{cron['median']:.1f} / {cron['p99']:.1f}", ""))
    for label, page in (("run list", "run_list"), ("run list, status+workflow filter", "run_list_filtered"),
                        ("run list, text search", "run_list_text_search"), ("100-step run page", "run_page_100_steps")):
        if "ui" in r:
            ui = r["ui"][page]
            rows.append((f"UI first render ms, {label}, 100k runs (median / max)",
                         f"{ui['first_render_ms_median']:.0f} / {ui['first_render_ms_max']:.0f}",
                         f"server {ui['server_ms_median']:.0f} ms; target < {r['ui']['target_ms']:.0f}"))
    width = max(len(a) for a, _, _ in rows)
    print(f"\n{'figure'.ljust(width)}  {'value':>20}  ratio")
    for name, value, ratio in rows:
        print(f"{name.ljust(width)}  {value:>20}  {ratio}")


if __name__ == "__main__":
    sys.exit(main())
