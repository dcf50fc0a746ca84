"""HTTP API figures for `make bench`: start-to-first-step latency through `miniflow api` (measured
as the direct publish's is: one run at a time, each to its end), the POST's own round trip, and
requests/s of GET /runs/{id}."""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import psycopg2

from bench.harness import ROOT, miniflow
from miniflow.ops.processes import ApiProcess

READ_SECONDS = 3.0
READ_THREADS = 4


def api_figures(env: dict[str, str], runs: int) -> dict[str, float]:
    token = json.loads(miniflow(env, "keys", "create", "--name", f"bench-api-{uuid.uuid4().hex[:6]}", "--role",
                                "operator", "--json"))["token"]
    log = Path(tempfile.mkstemp(prefix="miniflow-bench-api-", suffix=".log")[1])
    server = ApiProcess(env, ["--port", "0", "--auth-failures", "1000000"], log, cwd=ROOT)
    dsn = env["MINIFLOW_DATABASE_URL"].replace("postgresql+psycopg2", "postgresql")
    try:
        server.wait_ready()
        headers = {"Authorization": f"Bearer {token}"}
        latency: list[float] = []
        round_trip: list[float] = []
        run_id = ""
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http, psycopg2.connect(dsn) as conn:
            conn.autocommit = True
            cur = conn.cursor()
            for _ in range(runs):  # one run at a time, each to its end: as the direct start latency is measured
                sent = time.time()
                answer = http.post("/runs", json={"workflow": "bench-chain"}, params={"wait": 0})
                answered = time.time()
                answer.raise_for_status()
                key = answer.json()["idempotency_key"]
                deadline = time.monotonic() + 60
                while True:
                    cur.execute("select r.id, r.status, (select extract(epoch from min(a.started_at)) from "
                                "step_attempts a where a.run_id = r.id) from runs r where r.idempotency_key = %s",
                                (key,))
                    row = cur.fetchone()
                    if row and row[1] in ("succeeded", "failed"):
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError("a run started through the API did not finish")
                    time.sleep(0.002)
                latency.append((float(row[2]) - sent) * 1000)
                round_trip.append((answered - sent) * 1000)
                run_id = row[0]
        reads = _reads(server.url, headers, run_id)
    finally:
        server.stop()
    return {"api_start_latency_ms_median": round(statistics.median(latency), 2),
            "api_start_latency_ms_p99": round(sorted(latency)[int(0.99 * (len(latency) - 1))], 2),
            "api_start_round_trip_ms_median": round(statistics.median(round_trip), 2), **reads}


def _reads(url: str, headers: dict[str, str], run_id: str) -> dict[str, float]:
    """GET /runs/{id} requests/s: one client with keep-alive, then READ_THREADS clients at once."""
    def loop(counts: list[int], index: int, until: float) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            while time.monotonic() < until:
                http.get(f"/runs/{run_id}").raise_for_status()
                counts[index] += 1

    figures = {}
    for threads in (1, READ_THREADS):
        counts = [0] * threads
        until = time.monotonic() + READ_SECONDS
        workers = [threading.Thread(target=loop, args=(counts, i, until)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        figures[f"api_get_run_per_s_{threads}_clients"] = round(sum(counts) / READ_SECONDS, 1)
    return figures
