"""Settings from the environment, read only by the entry points (the CLI), never at import.

    MINIFLOW_BROKER_URL     amqp:// or amqps://; unset means the embedded broker where that makes sense
    MINIFLOW_DATABASE_URL   postgresql+psycopg2://... or sqlite:///...; unset means SQLite in the
                            working folder (miniflow.db)
    MINIFLOW_NAMESPACE      queue-name prefix (default "miniflow")
    MINIFLOW_LOG_LEVEL      DEBUG, INFO, WARNING (default), ERROR
    MINIFLOW_LOG_FORMAT     text (default) or json
    MINIFLOW_JAEGER_URL     base URL of a Jaeger UI: `miniflow runs show` then links a run's trace
    MINIFLOW_TRACE_SQL      on: a span per database statement, when tracing exports (default off)
    MINIFLOW_DATA_KEY       a data key (base64url of 32 bytes) that seals secret params at rest
    MINIFLOW_DATA_KEY_FILE  a file of data keys, one `id:key` per line, the first current (rotation)
    MINIFLOW_DEAD_LETTER_DAYS  how long archived rejected messages are kept (default 30)
    MINIFLOW_AUTH           on (default): messages are signed and checked (protocol/auth.py); off: open
    MINIFLOW_SIGNED_STARTS  required: a start must be signed too (default optional)
    MINIFLOW_KEY            a client key (mf_...) this process signs with (executor, producer, operator)
    MINIFLOW_KEY_FILE       a file holding that key instead
    MINIFLOW_CORE_PUBLIC_KEYS  the core's public keys (`miniflow keys core public`), for executors
    MINIFLOW_API_URL        the HTTP API for miniflow.Client.from_env() (then MINIFLOW_KEY is its API key)
    MINIFLOW_METRICS_PORT   serve Prometheus metrics on this port (worker, timer, api; off when unset;
                            `--metrics-port` overrides it)
    MINIFLOW_RABBITMQ_API_URL  RabbitMQ's management API for the queue monitor (default: the broker's
                            host, port 15672; used when the rabbitmq_management plugin answers there)
    MINIFLOW_ARTIFACTS      the artifact store: a directory (shared, when processes run on several
                            machines) or an fsspec URL such as s3://bucket/prefix (default:
                            .miniflow-artifacts in the working folder)
    MINIFLOW_ARTIFACT_THRESHOLD  bytes (as JSON) above which a step's output travels as an artifact
                            (default 262144; 1024 to 524288)

Any other MINIFLOW_* variable is an error (a typo must not silently change nothing), except the
test-only names below, which are checked the same way (an unknown MINIFLOW_TEST_* is an error too).

Test-only (never set them in production; they exist for MiniFlow's own test suite and benchmarks):
    MINIFLOW_TEST_FAULTPOINT   crash points (actors/faults.py): the process SIGKILLs itself there
    MINIFLOW_TEST_HOLD_DIR     where the test step `test.hold` waits for a release file
    MINIFLOW_TEST_BROKER_URL, MINIFLOW_TEST_DATABASE_URL, MINIFLOW_TEST_NO_DOCKER   test services
    MINIFLOW_BENCH_BROKER_URL, MINIFLOW_BENCH_ADMIN_DSN                             benchmark services
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from miniflow.actors.faults import POINTS
from miniflow.persistence.artifacts import ArtifactStore
from miniflow.persistence.db import DEFAULT_SQLITE_URL, normalise_url
from miniflow.persistence.offload import Offload
from miniflow.persistence.sealing import KeyRing
from miniflow.protocol.auth import ClientKey, parse_public_keys
from miniflow.protocol.errors import ConfigError
from miniflow.protocol.masking import mask_url
from miniflow.protocol.names import DEFAULT_NAMESPACE, check_namespace

KNOWN = {"MINIFLOW_BROKER_URL", "MINIFLOW_DATABASE_URL", "MINIFLOW_NAMESPACE", "MINIFLOW_LOG_LEVEL",
         "MINIFLOW_LOG_FORMAT", "MINIFLOW_JAEGER_URL", "MINIFLOW_DATA_KEY", "MINIFLOW_DATA_KEY_FILE",
         "MINIFLOW_DEAD_LETTER_DAYS", "MINIFLOW_AUTH", "MINIFLOW_SIGNED_STARTS", "MINIFLOW_KEY", "MINIFLOW_KEY_FILE",
         "MINIFLOW_CORE_PUBLIC_KEYS", "MINIFLOW_API_URL", "MINIFLOW_METRICS_PORT", "MINIFLOW_RABBITMQ_API_URL",
         "MINIFLOW_ARTIFACTS", "MINIFLOW_ARTIFACT_THRESHOLD", "MINIFLOW_TRACE_SQL"}
TEST_ONLY = {"MINIFLOW_TEST_FAULTPOINT", "MINIFLOW_TEST_HOLD_DIR", "MINIFLOW_TEST_BROKER_URL",
             "MINIFLOW_TEST_DATABASE_URL", "MINIFLOW_TEST_NO_DOCKER", "MINIFLOW_BENCH_BROKER_URL",
             "MINIFLOW_BENCH_ADMIN_DSN"}
DEFAULT_ARTIFACTS = ".miniflow-artifacts"
DEFAULT_ARTIFACT_THRESHOLD = 256 * 1024
MIN_ARTIFACT_THRESHOLD, MAX_ARTIFACT_THRESHOLD = 1024, 512 * 1024  # at most a step output's own limit
LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


@dataclass(frozen=True)
class Settings:
    broker_url: str | None = None
    database_url: str = DEFAULT_SQLITE_URL
    namespace: str = DEFAULT_NAMESPACE
    log_level: str = "WARNING"
    log_format: str = "text"
    jaeger_url: str | None = None
    faultpoints: frozenset[str] = frozenset()  # MINIFLOW_TEST_FAULTPOINT: crash points, for fault tests only
    database_configured: bool = False  # MINIFLOW_DATABASE_URL was given (not the SQLite default)
    data_keys: KeyRing | None = field(default=None, repr=False)  # MINIFLOW_DATA_KEY(_FILE)
    dead_letter_days: float = 30.0
    auth: bool = True  # MINIFLOW_AUTH
    signed_starts: bool = False  # MINIFLOW_SIGNED_STARTS=required
    client_key: ClientKey | None = field(default=None, repr=False)  # MINIFLOW_KEY(_FILE)
    core_public_keys: dict[str, Ed25519PublicKey] = field(default_factory=dict, repr=False)
    metrics_port: int | None = None  # MINIFLOW_METRICS_PORT
    trace_sql: bool = False  # MINIFLOW_TRACE_SQL
    rabbitmq_api_url: str | None = None  # MINIFLOW_RABBITMQ_API_URL
    artifacts_url: str = DEFAULT_ARTIFACTS  # MINIFLOW_ARTIFACTS
    artifact_threshold: int = DEFAULT_ARTIFACT_THRESHOLD  # MINIFLOW_ARTIFACT_THRESHOLD

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        unknown = sorted(k for k in env if k.startswith("MINIFLOW_") and k not in KNOWN
                         and k not in TEST_ONLY)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN))}")
        settings = cls()
        broker = env.get("MINIFLOW_BROKER_URL") or None
        if broker is not None:
            settings = replace(settings, broker_url=check_broker_url(broker))
        database = env.get("MINIFLOW_DATABASE_URL") or None
        if database is not None:
            settings = replace(settings, database_url=normalise_url(database), database_configured=True)
        namespace = env.get("MINIFLOW_NAMESPACE") or DEFAULT_NAMESPACE
        try:
            check_namespace(namespace)
        except ValueError as exc:
            raise ConfigError(f"MINIFLOW_NAMESPACE: {exc}") from None
        level = (env.get("MINIFLOW_LOG_LEVEL") or "WARNING").upper()
        if level not in LEVELS:
            raise ConfigError(f"MINIFLOW_LOG_LEVEL {level!r} is not one of {', '.join(sorted(LEVELS))}")
        fmt = (env.get("MINIFLOW_LOG_FORMAT") or "text").lower()
        if fmt not in ("text", "json"):
            raise ConfigError(f"MINIFLOW_LOG_FORMAT {fmt!r} must be text or json")
        jaeger = (env.get("MINIFLOW_JAEGER_URL") or "").rstrip("/") or None
        if jaeger is not None and not jaeger.startswith(("http://", "https://")):
            raise ConfigError(f"MINIFLOW_JAEGER_URL {jaeger!r} must start with http:// or https://")
        faults = frozenset(p.strip() for p in (env.get("MINIFLOW_TEST_FAULTPOINT") or "").split(",") if p.strip())
        if faults - POINTS:
            raise ConfigError(f"MINIFLOW_TEST_FAULTPOINT names unknown point(s) {sorted(faults - POINTS)}; "
                              f"known: {', '.join(sorted(POINTS))}")
        return replace(settings, namespace=namespace, log_level=level, log_format=fmt, jaeger_url=jaeger,
                       faultpoints=faults, data_keys=_data_keys(env), dead_letter_days=_days(env),
                       **_auth(env), **_monitoring(env), **_artifacts(env))

    def offload(self) -> Offload:
        """The artifact store of MINIFLOW_ARTIFACTS with its threshold (ConfigError when its URL is bad)."""
        return Offload(ArtifactStore(self.artifacts_url), self.artifact_threshold)

    def require_broker(self) -> str:
        if not self.broker_url:
            raise ConfigError("MINIFLOW_BROKER_URL is not set: give the RabbitMQ URL, e.g. "
                              "amqp://guest:guest@127.0.0.1:5672/%2F")
        return self.broker_url

    def describe(self, with_database: bool = True) -> str:
        broker = mask_url(self.broker_url) if self.broker_url else "embedded"
        database = f" database={mask_url(self.database_url)}" if with_database else ""
        return f"broker={broker}{database} namespace={self.namespace}"


def _days(env: Mapping[str, str]) -> float:
    text = env.get("MINIFLOW_DEAD_LETTER_DAYS") or "30"
    try:
        days = float(text)
    except ValueError:
        raise ConfigError(f"MINIFLOW_DEAD_LETTER_DAYS {text!r} must be a number of days") from None
    if not 0 < days <= 3650:
        raise ConfigError("MINIFLOW_DEAD_LETTER_DAYS must be more than 0 and at most 3650")
    return days


def _artifacts(env: Mapping[str, str]) -> dict[str, Any]:
    url = env.get("MINIFLOW_ARTIFACTS") or DEFAULT_ARTIFACTS
    text = env.get("MINIFLOW_ARTIFACT_THRESHOLD") or str(DEFAULT_ARTIFACT_THRESHOLD)
    if not text.isdigit() or not MIN_ARTIFACT_THRESHOLD <= int(text) <= MAX_ARTIFACT_THRESHOLD:
        raise ConfigError(f"MINIFLOW_ARTIFACT_THRESHOLD {text[:20]!r} must be a number of bytes from "
                          f"{MIN_ARTIFACT_THRESHOLD} to {MAX_ARTIFACT_THRESHOLD}")
    return {"artifacts_url": url, "artifact_threshold": int(text)}


def _monitoring(env: Mapping[str, str]) -> dict[str, Any]:
    text = env.get("MINIFLOW_METRICS_PORT") or None
    port = None
    if text is not None:
        if not text.isdigit() or not 0 <= int(text) <= 65535:
            raise ConfigError(f"MINIFLOW_METRICS_PORT {text[:20]!r} must be a port number (0-65535; 0: a free one)")
        port = int(text)
    api = (env.get("MINIFLOW_RABBITMQ_API_URL") or "").rstrip("/") or None
    if api is not None and not api.startswith(("http://", "https://")):
        raise ConfigError(f"MINIFLOW_RABBITMQ_API_URL {mask_url(api)!r} must start with http:// or https://")
    sql = (env.get("MINIFLOW_TRACE_SQL") or "off").lower()
    if sql not in ("on", "off"):
        raise ConfigError(f"MINIFLOW_TRACE_SQL {sql[:20]!r} must be on or off")
    return {"metrics_port": port, "rabbitmq_api_url": api, "trace_sql": sql == "on"}


def _auth(env: Mapping[str, str]) -> dict[str, Any]:
    auth = (env.get("MINIFLOW_AUTH") or "on").lower()
    if auth not in ("on", "off"):
        raise ConfigError(f"MINIFLOW_AUTH {auth[:20]!r} must be on or off")
    starts = (env.get("MINIFLOW_SIGNED_STARTS") or "optional").lower()
    if starts not in ("optional", "required"):
        raise ConfigError(f"MINIFLOW_SIGNED_STARTS {starts[:20]!r} must be optional or required")
    token, path = env.get("MINIFLOW_KEY") or None, env.get("MINIFLOW_KEY_FILE") or None
    if token and path:
        raise ConfigError("set MINIFLOW_KEY or MINIFLOW_KEY_FILE, not both")
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"MINIFLOW_KEY_FILE {path!r} cannot be read: {exc.strerror}") from None
    where = "MINIFLOW_KEY_FILE" if path else "MINIFLOW_KEY"
    public = env.get("MINIFLOW_CORE_PUBLIC_KEYS") or None
    return {"auth": auth == "on", "signed_starts": starts == "required",
            "client_key": ClientKey.from_token(token, where=where) if token else None,
            "core_public_keys": parse_public_keys(public) if public else {}}


def _data_keys(env: Mapping[str, str]) -> KeyRing | None:
    key, path = env.get("MINIFLOW_DATA_KEY") or None, env.get("MINIFLOW_DATA_KEY_FILE") or None
    if key and path:
        raise ConfigError("set MINIFLOW_DATA_KEY or MINIFLOW_DATA_KEY_FILE, not both")
    if path:
        return KeyRing.from_file(path)
    return KeyRing.parse(key, "MINIFLOW_DATA_KEY") if key else None


def check_broker_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise ConfigError(f"MINIFLOW_BROKER_URL {mask_url(url)!r} must be amqp://host... or amqps://host...")
    return url
