"""The catalog of deployed workflows, with a cache: stored versions are immutable, so a version read
once never needs reading again."""

from __future__ import annotations

import threading

from sqlalchemy.engine import Connection

from miniflow.persistence import repository as repo
from miniflow.protocol.codes import Reason
from miniflow.protocol.errors import MessageRejected

from .workflow import Workflow


class Catalog:
    """Deployed workflows by (name, version). Thread-safe."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], Workflow] = {}
        self._lock = threading.Lock()

    def deploy(self, conn: Connection, workflow: Workflow, source: str | None = None) -> tuple[int, bool]:
        """Store a workflow as a new version unless the latest is identical: (version, created)."""
        return repo.save_definition(conn, workflow.name, workflow.to_spec(), source, workflow.version)

    def to_start(self, conn: Connection, name: str, version: int | None) -> Workflow:
        """The version a start asks for; MessageRejected naming what is not deployed."""
        workflow = self.workflow(conn, name, version)
        if workflow is not None:
            return workflow
        if version is not None and self.exists(conn, name):
            raise MessageRejected(Reason.UNKNOWN_VERSION, f"workflow {name!r} has no version {version}", "version")
        raise MessageRejected(Reason.UNKNOWN_WORKFLOW, f"workflow {name!r} is not deployed", "workflow")

    def workflow(self, conn: Connection, name: str, version: int | None) -> Workflow | None:
        """A deployed version (the latest when ``version`` is None), or None."""
        if version is None:  # the latest: one small query, then the cache
            version = repo.latest_version(conn, name)
            if version is None:
                return None
        cached = self._cache.get((name, version))
        if cached is not None:
            return cached
        found = repo.get_definition(conn, name, version)
        if found is None:
            return None
        resolved, spec = found
        workflow = Workflow.from_spec(spec, resolved)
        with self._lock:
            return self._cache.setdefault((name, resolved), workflow)

    def exists(self, conn: Connection, name: str) -> bool:
        """Whether any version of the workflow is deployed."""
        return repo.latest_version(conn, name) is not None

    def secret_params(self, conn: Connection, name: str, version: int | None) -> frozenset[str]:
        """Names of the secret params of a workflow version (the latest when None): masked when shown."""
        found = self.workflow(conn, name, version)
        return found.secret_params() if found else frozenset()
