"""Engines, URLs, transactions and migrations for Postgres (psycopg2) and SQLite (embedded mode).

``Database`` is what the rest of MiniFlow holds: an engine plus ``transaction()``, which yields a
Core connection inside one transaction. On SQLite every write transaction is serialised by a
process-wide lock (the embedded mode is one process; SQLite has no row locks), on Postgres run
rows are locked with SELECT ... FOR UPDATE by the repository.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, InterfaceError, OperationalError

from miniflow.protocol.errors import ConfigError, DatabaseUnavailable, DataRejected, PersistenceError
from miniflow.protocol.masking import mask_url

DEFAULT_SQLITE_URL = "sqlite:///miniflow.db"
CONNECT_TIMEOUT_S = 10  # a database that does not answer fails a connection attempt after this long
_AFTER_COMMIT = "miniflow.after_commit"
logger = logging.getLogger("miniflow.db")


def after_commit(conn: Connection, callback: Callable[[], None]) -> None:
    """Call ``callback`` once the transaction of ``conn`` (from ``Database.transaction``) has
    committed; never if it rolls back. Outside such a transaction it is called at once."""
    pending = conn.info.get(_AFTER_COMMIT)
    if pending is None:
        callback()
    else:
        pending.append(callback)


def normalise_url(url: str) -> str:
    """postgres:// and postgresql:// mean psycopg2 here (SQLAlchemy 2.1 would pick psycopg 3)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"database URL {mask_url(url)!r} is not a valid URL") from exc
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if parsed.drivername not in ("postgresql+psycopg2", "sqlite", "sqlite+pysqlite"):
        raise ConfigError(f"database URL scheme {parsed.drivername!r} is not supported: "
                          "use postgresql+psycopg2:// or sqlite://")
    return parsed.render_as_string(hide_password=False)


class Database:
    """An engine and its transactions. Create one per process and share it between threads."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = normalise_url(url)
        self.masked_url = mask_url(self.url)
        # hide_parameters: a failing statement's bound values (params, outputs: maybe secrets) never
        # reach an exception text, a log line or a span.
        kwargs: dict[str, Any] = {"echo": echo, "future": True, "hide_parameters": True}
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            # No pre-ping (a round trip per checkout): a connection broken by a database restart
            # fails its transaction, which the actors' infrastructure retries redo on a fresh one.
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800,
                          connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
        self.engine: Engine = create_engine(self.url, **kwargs)
        self._write_lock = threading.RLock() if self.is_sqlite else None
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction: commit on success, roll back on error. DB errors become MiniFlow errors."""
        lock = self._write_lock or contextlib.nullcontext()
        callbacks: list[Callable[[], None]] = []
        with lock:
            try:
                with self.engine.begin() as conn:
                    conn.info[_AFTER_COMMIT] = callbacks
                    try:
                        yield conn
                    finally:
                        conn.info.pop(_AFTER_COMMIT, None)
            except DBAPIError as exc:
                raise self._translate(exc) from exc
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - what happens after a commit must never undo or fail it
                logger.exception("after-commit callback failed")

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads (autobegin; nothing is committed). DB errors become MiniFlow errors."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except DBAPIError as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: DBAPIError) -> PersistenceError:
        """The one place SQLAlchemy's errors become MiniFlow's: a lost or refused connection is
        DatabaseUnavailable, any other failed statement a PersistenceError (first line only: bound
        values are hidden from error texts by ``hide_parameters``)."""
        if isinstance(exc, (OperationalError, InterfaceError)) or exc.connection_invalidated:
            return DatabaseUnavailable(f"database {self.masked_url} failed: {_first_line(exc.orig)}")
        if isinstance(exc, DataError):
            return DataRejected(f"the database refused a value ({type(exc.orig).__name__}): {_first_line(exc.orig)}")
        return PersistenceError(f"database statement failed ({type(exc.orig).__name__}): {_first_line(exc.orig)}")

    def ping(self) -> None:
        """Check that the database answers; DatabaseUnavailable (URL masked) when it does not."""
        with self.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def upgrade(self, revision: str = "head") -> None:
        """Create or migrate the schema to ``revision`` with Alembic."""
        from alembic import command
        from alembic.config import Config

        ini = resources.files("miniflow.persistence") / "alembic.ini"
        config = Config(str(ini))
        config.set_main_option("script_location", str(resources.files("miniflow.persistence") / "migrations"))
        try:
            with self.engine.begin() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, revision)
        except DBAPIError as exc:
            raise DatabaseUnavailable(f"migrating {self.masked_url} failed: {_first_line(exc.orig)}") from exc

    def dispose(self) -> None:
        self.engine.dispose()


def _first_line(exc: BaseException | None) -> str:
    text = str(exc or "").strip().splitlines()
    return text[0] if text else type(exc).__name__


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
