"""Workflows: list, show (YAML and graph), deploy."""

from __future__ import annotations

from typing import Annotated

import yaml
from fastapi import APIRouter, Depends, Path, Request, Response

from miniflow.coordinator import loads
from miniflow.persistence import repository as repo
from miniflow.protocol.errors import ApiError
from miniflow.protocol.masking import mask_params

from ..views import iso
from .common import (
    COMMON,
    NOT_FOUND_DOC,
    Api,
    ApiDep,
    Caller,
    authorize,
)
from .errors import NOT_FOUND
from .models import (
    Deployed,
    DeployRequest,
    Graph,
    GraphEdge,
    GraphNode,
    ParamView,
    WorkflowSummary,
    WorkflowVersion,
)
from .security import Principal

router = APIRouter(dependencies=[Depends(authorize)], responses=COMMON)


@router.get("/workflows", name="list_workflows", response_model=list[WorkflowSummary], tags=["workflows"])
def list_workflows(api: ApiDep, caller: Caller) -> list[WorkflowSummary]:
    with api.database.connect() as conn:
        rows = repo.list_definitions(conn)
    versions: dict[str, list[int]] = {}
    for r in rows:
        if caller.covers(r.name):
            versions.setdefault(r.name, []).append(r.version)
    return [WorkflowSummary(name=n, latest_version=max(v), versions=sorted(v)) for n, v in sorted(versions.items())]


def _workflow(api: Api, caller: Principal, name: str, version: int | None) -> WorkflowVersion:
    caller.require_workflow(name)
    with api.database.connect() as conn:
        found = repo.get_definition(conn, name, version)
        rows = [r for r in repo.list_definitions(conn) if r.name == name]
        workflow = api.catalog.workflow(conn, name, version)
    if found is None or workflow is None:
        raise ApiError(404, NOT_FOUND, f"workflow {name!r}" + (f" has no version {version}" if version and rows
                                                               else " is not deployed"))
    stored, spec = found
    row = next((r for r in rows if r.version == stored), None)
    secrets = workflow.secret_params()
    shown = dict(spec)
    if isinstance(shown.get("params"), dict):
        shown["params"] = {k: (dict(v, default="***") if k in secrets and isinstance(v, dict) and "default" in v
                               else v) for k, v in shown["params"].items()}
    return WorkflowVersion(
        name=name, version=stored, versions=sorted(r.version for r in rows), description=workflow.description,
        source=row.source if row else None, created_at=iso(row.created_at) if row else None,
        params=[ParamView(name=p.name, required=p.required, secret=p.secret, description=p.description,
                          default=mask_params({p.name: p.default}, secrets)[p.name] if p.default is not None
                          else None) for p in workflow.params.values()],
        yaml=yaml.safe_dump(shown, sort_keys=False, allow_unicode=True),
        graph=Graph(nodes=[GraphNode(id=s.name, task=s.task, queue=s.queue, retries=s.retries, timeout=s.timeout)
                           for s in workflow.steps.values()],
                    edges=[GraphEdge(source=n, target=s.name) for s in workflow.steps.values() for n in s.needs]))


@router.get("/workflows/{name}", name="show_workflow", response_model=WorkflowVersion, tags=["workflows"],
         responses=NOT_FOUND_DOC, response_model_by_alias=True)


def show_workflow(api: ApiDep, name: str, caller: Caller) -> WorkflowVersion:
    """The latest version: its definition as YAML and as a graph of nodes and edges."""
    return _workflow(api, caller, name, None)


@router.get("/workflows/{name}/versions/{version}", name="show_workflow_version", response_model=WorkflowVersion,
         tags=["workflows"], responses=NOT_FOUND_DOC, response_model_by_alias=True)


def show_workflow_version(api: ApiDep, name: str, version: Annotated[int, Path(ge=1, le=2_147_483_647)],
                          caller: Caller) -> WorkflowVersion:
    return _workflow(api, caller, name, version)


@router.post("/workflows", name="deploy_workflow", response_model=Deployed, status_code=201, tags=["workflows"],
          responses={200: {"model": Deployed, "description": "Unchanged: already deployed as this version"}})


def deploy_workflow(api: ApiDep, body: DeployRequest, caller: Caller, request: Request, response: Response) -> Deployed:
    """Store a definition as a new immutable version (admin)."""
    workflow = loads(body.yaml, f"api ({caller.name})")
    caller.require_workflow(workflow.name)
    if body.version is not None:
        import dataclasses
        workflow = dataclasses.replace(workflow, version=body.version)
    with api.database.transaction() as conn:
        stored, created = api.catalog.deploy(conn, workflow, f"api:{caller.name}")
    request.state.audit_detail = f"{workflow.name} v{stored}" + ("" if created else " (unchanged)")
    if not created:
        response.status_code = 200
    return Deployed(name=workflow.name, version=stored, created=created)

