"""Prometheus metrics of a MiniFlow process (issue 14), with the official client library.

Every process may serve them (``--metrics-port`` or ``MINIFLOW_METRICS_PORT``; off when unset). When
off, the process holds ``NULL``, whose methods do nothing, so metrics cost nothing there. Label sets
stay bounded: workflow and step names come from deployed definitions (and are cut to 100 characters),
and past ``MAX_SERIES`` label sets per metric a new one is counted under the value ``_other``; run ids
are never labels.

    name                                   type       labels                      where
    miniflow_build_info                    gauge      version, kind               every process
    miniflow_runs_started_total            counter    workflow                    coordinator
    miniflow_runs_finished_total           counter    workflow, status            coordinator
    miniflow_step_attempts_total           counter    workflow, step, outcome     executor
    miniflow_step_retries_total            counter    workflow, step              executor (attempts after the 1st)
    miniflow_step_duration_seconds         histogram  workflow, step              executor (the step's body)
    miniflow_step_queue_wait_seconds       histogram  workflow, step              executor (sent to started)
    miniflow_messages_total                counter    actor, outcome              every worker (ok, error)
    miniflow_messages_rejected_total       counter    reason                      every consumer (the guard)
    miniflow_dead_letters_total            counter    reason                      results (archived letters)
    miniflow_outbox_backlog                gauge                                  coordinator, api (when scraped)
    miniflow_outbox_publish_seconds        histogram                              coordinator, results, timer
    miniflow_run_batch_size                histogram                              coordinator (results or events
                                                                                  of one run in one transaction)
    miniflow_large_bodies_total            counter    waited (yes, no)            coordinator, results (bodies of
                                                                                  64 KiB or more: actors/turns.py)
    miniflow_reconciler_repairs_total      counter    kind                        coordinator
    miniflow_cron_fire_lateness_seconds    histogram                              timer
    miniflow_reconnects_total              counter    service (broker, database)  every process
    miniflow_worker_threads                gauge                                  every worker
    miniflow_worker_threads_busy           gauge                                  every worker
    miniflow_queue_messages                gauge      queue, state (ready,        coordinator, api (read when
                                                      unacked)                    scraped, at most every 5 s)
    miniflow_queue_consumers               gauge      queue                       coordinator, api
    miniflow_workers                       gauge      state (alive, late, gone,   coordinator, api
                                                      stopped)
    miniflow_runs_active                   gauge      status (queued, running)    coordinator, api
    miniflow_oldest_active_run_seconds     gauge                                  coordinator, api
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from miniflow.coordinator.instrument import Instrument
from miniflow.protocol.codes import Reason

REASONS = frozenset(str(r) for r in Reason)
MAX_SERIES = 500  # label sets per metric before new ones are counted as "_other"
MAX_LABEL_LEN = 100
OTHER = "_other"
# Steps last milliseconds to hours: buckets from 5 ms to 1 h, few of them (each is a series per label set
# that every scrape renders, under the GIL the worker threads need).
DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.5, 2.5, 10, 60, 300, 3600)
LATENCY_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

NAMES = (
    "miniflow_build_info", "miniflow_runs_started_total", "miniflow_runs_finished_total",
    "miniflow_step_attempts_total", "miniflow_step_retries_total", "miniflow_step_duration_seconds",
    "miniflow_step_queue_wait_seconds", "miniflow_messages_total", "miniflow_messages_rejected_total",
    "miniflow_dead_letters_total", "miniflow_outbox_backlog", "miniflow_outbox_publish_seconds",
    "miniflow_run_batch_size", "miniflow_large_bodies_total",
    "miniflow_reconciler_repairs_total", "miniflow_cron_fire_lateness_seconds", "miniflow_reconnects_total",
    "miniflow_worker_threads", "miniflow_worker_threads_busy", "miniflow_queue_messages",
    "miniflow_queue_consumers", "miniflow_workers", "miniflow_runs_active", "miniflow_oldest_active_run_seconds",
)


class _Bounded:
    """Label values of one metric, cut to MAX_LABEL_LEN, at most MAX_SERIES distinct sets."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, ...]] = set()
        self.lock = threading.Lock()

    def __call__(self, *values: str) -> tuple[str, ...]:
        key = tuple(str(v)[:MAX_LABEL_LEN] for v in values)
        if key in self.seen:
            return key
        with self.lock:
            if len(self.seen) >= MAX_SERIES:
                return tuple(OTHER for _ in key)
            self.seen.add(key)
        return key


class Metrics:
    """The metrics of one process, on a registry of its own (tests build as many as they like)."""

    enabled = True

    def __init__(self, kind: str, version: str) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: fewer lines per scrape
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge("miniflow_build_info", "MiniFlow version and process kind", ["version", "kind"],
              registry=r).labels(version[:40], kind).set(1)
        self._runs_started = Counter("miniflow_runs_started", "Runs created", ["workflow"], registry=r)
        self._runs_finished = Counter("miniflow_runs_finished", "Runs ended, by final status",
                                      ["workflow", "status"], registry=r)
        self._attempts = Counter("miniflow_step_attempts", "Step attempts executed, by outcome",
                                 ["workflow", "step", "outcome"], registry=r)
        self._retries = Counter("miniflow_step_retries", "Step attempts after the first",
                                ["workflow", "step"], registry=r)
        self._duration = Histogram("miniflow_step_duration_seconds", "Time a step's body ran",
                                   ["workflow", "step"], buckets=DURATION_BUCKETS, registry=r)
        self._queue_wait = Histogram("miniflow_step_queue_wait_seconds", "From the step message's send to its start",
                                     ["workflow", "step"], buckets=DURATION_BUCKETS, registry=r)
        self._messages = Counter("miniflow_messages", "Messages handled, by actor and outcome", ["actor", "outcome"],
                                 registry=r)
        self._rejected = Counter("miniflow_messages_rejected", "Bodies refused by the guard, by reason code",
                                 ["reason"], registry=r)
        self._dead = Counter("miniflow_dead_letters", "Rejected messages archived, by reason code", ["reason"],
                             registry=r)
        self._publish = Histogram("miniflow_outbox_publish_seconds", "Publishing a batch of committed messages",
                                  buckets=LATENCY_BUCKETS, registry=r)
        self._batch = Histogram("miniflow_run_batch_size", "Results or events of one run applied in one transaction",
                                buckets=BATCH_BUCKETS, registry=r)
        self._large = Counter("miniflow_large_bodies", "Large bodies handled in turns, and whether they waited",
                              ["waited"], registry=r)
        self._repairs = Counter("miniflow_reconciler_repairs", "Runs and steps repaired by the reconciler", ["kind"],
                                registry=r)
        self._lateness = Histogram("miniflow_cron_fire_lateness_seconds", "Cron fire time minus its due time",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self._reconnects = Counter("miniflow_reconnects", "Outages of a dependency that ended", ["service"],
                                   registry=r)
        self._threads = Gauge("miniflow_worker_threads", "Worker threads", registry=r)
        self._busy = Gauge("miniflow_worker_threads_busy", "Worker threads handling a message now", registry=r)
        self._bounds: dict[str, _Bounded] = {}
        # Children that exist from the start at 0, so that increase() sees their first event.
        for service in ("broker", "database"):
            self._reconnects.labels(service)
        self._busy_lock = threading.Lock()
        self._busy_now = 0

    def _b(self, metric: str, *values: str) -> tuple[str, ...]:
        bound = self._bounds.get(metric)
        if bound is None:
            bound = self._bounds.setdefault(metric, _Bounded())
        return bound(*values)

    # -- the coordinator ---------------------------------------------------------------------------
    def run_started(self, workflow: str) -> None:
        self._runs_started.labels(*self._b("started", workflow)).inc()

    def run_finished(self, workflow: str, status: str) -> None:
        self._runs_finished.labels(*self._b("finished", workflow, status)).inc()

    def repaired(self, kind: str, count: int = 1) -> None:
        if count:
            self._repairs.labels(kind).inc(count)

    # -- the executor -----------------------------------------------------------------------------
    def step_executed(self, workflow: str, step: str, attempt: int, ok: bool, duration_s: float,
                      queue_wait_s: float | None) -> None:
        labels = self._b("step", workflow, step)
        self._attempts.labels(*labels, "succeeded" if ok else "failed").inc()
        if attempt > 1:
            self._retries.labels(*labels).inc()
        self._duration.labels(*labels).observe(max(duration_s, 0.0))
        if queue_wait_s is not None:
            self._queue_wait.labels(*labels).observe(max(queue_wait_s, 0.0))

    # -- every worker -----------------------------------------------------------------------------
    def message_began(self) -> None:
        with self._busy_lock:
            self._busy_now += 1
            self._busy.set(self._busy_now)

    def message_ended(self, actor: str, ok: bool) -> None:
        with self._busy_lock:
            self._busy_now = max(0, self._busy_now - 1)
            self._busy.set(self._busy_now)
        self._messages.labels(*self._b("messages", actor), "ok" if ok else "error").inc()

    def threads(self, count: int) -> None:
        self._threads.set(count)

    def rejected(self, reason: str) -> None:
        self._rejected.labels(*self._b("rejected", reason)).inc()

    def archives_dead_letters(self) -> None:
        """This process records dead letters (the results role): show every reason code at 0 from the
        start, so that an alert on increase() sees the first letter of each."""
        for code in REASONS:
            self._dead.labels(code)

    def dead_letter(self, reason: str) -> None:
        """``reason`` comes from a report (a message): only the known codes become label values."""
        self._dead.labels(reason if reason in REASONS else OTHER).inc()

    def outbox(self, publish_s: float) -> None:
        self._publish.observe(publish_s)

    def run_batch(self, size: int) -> None:
        self._batch.observe(size)

    def large_body(self, waited: bool) -> None:
        self._large.labels("yes" if waited else "no").inc()

    def cron_fired(self, lateness_s: float) -> None:
        self._lateness.observe(max(lateness_s, 0.0))

    def reconnected(self, service: str) -> None:
        self._reconnects.labels(service).inc()

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)


class CountingInstrument(Instrument):
    """The coordinator's hooks with run outcomes counted; everything else goes to the wrapped one."""

    def __init__(self, inner: Instrument, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    def outgoing(self, actor_name: str, queue_name: str, attributes: dict[str, Any]) -> dict[str, Any]:
        return self.inner.outgoing(actor_name, queue_name, attributes)

    def run_finished(self, run_id: str, workflow: str, status: str, error: str | None) -> None:
        self.metrics.run_finished(workflow, status)
        self.inner.run_finished(run_id, workflow, status, error)


class _Null(Metrics):
    """Metrics off: every method does nothing."""

    enabled = False

    def __init__(self) -> None:  # noqa: D107 - nothing to build
        self.registry = CollectorRegistry()

    def __getattribute__(self, name: str) -> Any:
        if name in ("enabled", "registry", "add_collector") or name.startswith("__"):  # the rest: no-ops
            return object.__getattribute__(self, name)
        return _nothing


def _nothing(*_args: Any, **_kwargs: Any) -> None:
    return None


NULL: Metrics = _Null()


class ScrapeGauges(Collector):
    """Gauges read when scraped (the queue monitor, the workers registry, active runs), from a function
    that returns ``{metric name: [(labels, value), ...]}``, cached ``max_age_s`` so a busy scraper
    cannot turn into load on the broker or the database."""

    def __init__(self, read: Callable[[], dict[str, list[tuple[dict[str, str], float]]]], *,
                 max_age_s: float = 5.0, clock: Callable[[], float] | None = None) -> None:
        import time

        self.read = read
        self.max_age_s = max_age_s
        self.clock = clock or time.monotonic
        self._cached: dict[str, list[tuple[dict[str, str], float]]] = {}
        self._at = float("-inf")
        self._lock = threading.Lock()

    HELP = {
        "miniflow_queue_messages": "Messages in a MiniFlow queue (ready: waiting; unacked: delivered, not done)",
        "miniflow_queue_consumers": "Consumers of a MiniFlow queue",
        "miniflow_workers": "Registered processes by state (alive, late, gone, stopped)",
        "miniflow_runs_active": "Runs not yet ended, by status",
        "miniflow_oldest_active_run_seconds": "Age of the oldest run not yet ended (0: none)",
        "miniflow_outbox_backlog": "Outbox rows committed and not yet published",
    }

    def describe(self) -> Iterable[Any]:
        return []  # read when scraped only, never at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if self.clock() - self._at >= self.max_age_s:
                try:
                    self._cached = self.read()
                except Exception:  # noqa: BLE001 - a scrape must not fail because a dependency is away
                    self._cached = {}
                self._at = self.clock()
            cached = self._cached
        for name, samples in cached.items():
            labels = sorted({k for sample, _ in samples for k in sample})
            family = GaugeMetricFamily(name, self.HELP.get(name, name), labels=labels)
            for sample, value in samples:
                family.add_metric([sample.get(k, "") for k in labels], value)
            yield family


def serve(metrics: Metrics, port: int, host: str = "0.0.0.0") -> Any:  # noqa: S104 - scraped from outside
    """Serve /metrics on ``port`` (0: a free one) in a daemon thread; the server (``server_port``)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server
