"""The web UI, served by `miniflow api` under /ui: server-rendered pages (Jinja2, autoescaped) over the
same functions as the HTTP API's routes, so a page shows exactly what the API answers and a button
does exactly what the API does (the same role and scope checks, the same audit trail, the same
signed messages to the coordinator). A small script of our own (static/ui.js, no inline script)
makes pages live: the run page follows the run's events stream, lists refresh their rows.

Every page needs a session (sessions.py); every route has an entry in UI_POLICY (deny by default,
checked when the app is built); every POST needs the session's CSRF token; every answer carries a
strict Content-Security-Policy.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import anyio
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.staticfiles import StaticFiles

from miniflow import __version__
from miniflow.protocol.errors import ApiError, ConfigError, MiniFlowError

from ..api import errors
from ..api.common import Api
from ..api.security import GLOBAL, WORKFLOW, Perm
from .graph import Layouts
from .sessions import COOKIE, Session, Sessions

log = logging.getLogger("miniflow.ui")
PRE_COOKIE = "mf_signin"  # the double-submit token of the sign-in form (there is no session yet)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
MAX_FORM = 64 * 1024

# route name -> (the permission it needs, what it acts on): the API's roles and kinds. A GLOBAL page
# (monitor, dead letters, keys, audit, sessions) is refused to a key scoped to some workflows, as the
# API's global routes are; the other pages check the scope through the API's own functions.
UI_POLICY: dict[str, tuple[Perm, str]] = {}
POLL_HEADER = "x-miniflow-poll"  # sent by ui.js when it refreshes a page by itself: not a user's activity
# The banners a redirect may ask for (?said=CODE): fixed texts, so a link cannot put words on a page.
SAID = {"signed_out": "signed out", "started": "started", "existing": "this idempotency key's run",
        "published": "start published; no run yet: is a coordinator running?", "cancel": "cancel requested",
        "ended": "the run had ended: nothing to cancel", "retried": "retried", "retry": "retry requested",
        "paused": "paused", "resumed": "resumed", "triggered": "triggered", "revoked": "key revoked",
        "session_ended": "session ended"}
Handler = Callable[..., Awaitable[Response]]


_CODES = {401: errors.UNAUTHENTICATED, 403: errors.FORBIDDEN, 404: errors.NOT_FOUND, 409: errors.CONFLICT}


def refuse(status: int, message: str) -> ApiError:
    """The error a page answers with (the API's own error, so one tree of errors)."""
    return ApiError(status, _CODES.get(status, errors.INVALID_REQUEST), message)


def _env() -> Environment:
    env = Environment(loader=PackageLoader("miniflow.ops.ui", "templates"),
                      autoescape=select_autoescape(["html"], default_for_string=True), trim_blocks=True,
                      lstrip_blocks=True)
    from . import filters
    filters.install(env)
    return env


class Ui:
    """What the pages share."""

    def __init__(self, api: Api, secure_cookies: bool = False) -> None:
        self.api, self.secure_cookies = api, secure_cookies
        self.sessions = Sessions(api.database, api.auth)
        self.layouts = Layouts()
        self.env = _env()

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        session: Session | None = getattr(request.state, "ui_session", None)
        principal = session.principal if session else None
        context.update(
            request=request, session=session, principal=principal, version=__version__,
            csrf=session.csrf if session else "", path=request.url.path,
            may={p.value: bool(principal and principal.may(p)) for p in Perm},
            said=SAID.get(request.query_params.get("said", ""), ""))
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status)


def ui_of(request: Request) -> Ui:
    ui: Ui = request.app.state.ui
    return ui


router = APIRouter(prefix="/ui", include_in_schema=False)


def page(path: str, name: str, perm: Perm, methods: tuple[str, ...] = ("GET",), kind: str = WORKFLOW
         ) -> Callable[[Handler], Handler]:
    """Register a page: its session, permission, scope and (for POST) CSRF checks run before ``fn``."""
    UI_POLICY[name] = (perm, kind)

    def wrap(fn: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            ui = ui_of(request)
            try:
                form = await _guard(request, ui, perm, kind)
                return await fn(request, ui, form, **request.path_params)
            except (MiniFlowError, ValueError, RecursionError) as exc:
                return _failure(request, ui, exc)

        endpoint.__name__ = name
        router.add_api_route(path, endpoint, methods=list(methods), name=name, response_class=HTMLResponse)
        return fn

    return wrap


async def _guard(request: Request, ui: Ui, perm: Perm, kind: str) -> dict[str, str]:
    """The session (401 without one), the permission, and for a POST its form with the
    session's CSRF token (403 otherwise)."""
    session: Session | None = None
    if perm != Perm.PUBLIC:
        active = request.headers.get(POLL_HEADER) != "1"  # a page's own refresh does not keep a session alive
        session = await anyio.to_thread.run_sync(ui.sessions.resolve, request.cookies.get(COOKIE), active)
        if session is None:
            raise refuse(401, "you are not signed in (or your session ended): sign in again")
        request.state.ui_session = session
        request.state.principal = session.principal  # the audit trail's who
        if not session.principal.may(perm):
            raise refuse(403, f"your key ({session.principal.role}) may not do this: it needs the {perm.value} "
                               "permission")
        if kind == GLOBAL and session.principal.scope:
            raise refuse(403, f"your key is scoped to workflows ({', '.join(session.principal.scope)}): this page "
                              "is not one workflow's")
    if request.method != "POST":
        return {}
    form = await _form(request)
    if session is not None and not session.csrf_ok(form.get("csrf")):
        raise refuse(403, "this form was not sent by a page of this session (CSRF token missing or wrong): "
                           "reload the page and try again")
    return form


def _failure(request: Request, ui: Ui, exc: Exception) -> Response:
    if isinstance(exc, ApiError) and exc.status == 401 and request.method == "GET":
        return RedirectResponse(f"/ui/login?next={quote(_local(str(request.url.path)))}", 303)
    if isinstance(exc, ApiError):
        return ui.render(request, "error.html", exc.status, title=_title(exc.status), message=exc.message)
    if isinstance(exc, RecursionError):
        return ui.render(request, "error.html", 422, title="Not valid", message="the value is nested too deeply")
    if isinstance(exc, ConfigError | ValueError):  # ValueError: a pydantic model refused a form's value
        return ui.render(request, "error.html", 422, title="Not valid", message=str(exc).splitlines()[0][:500]
                         if isinstance(exc, ValueError) and not isinstance(exc, ConfigError) else str(exc))
    log.warning("a UI page could not be served: %s: %s", type(exc).__name__, exc)
    return ui.render(request, "error.html", 503, title="Unavailable",
                     message="the database or the broker is not reachable now: try again in a moment")


def _title(status: int) -> str:
    return {400: "Bad request", 401: "Signed out", 403: "Refused", 404: "Not found", 409: "Conflict",
            422: "Not valid", 429: "Too many tries", 503: "Unavailable"}.get(status, "Error")


def _local(target: str) -> str:
    """Only a path of the UI itself may be a redirect target (no open redirects)."""
    return target if target.startswith("/ui/") and not target.startswith("//") and "\\" not in target else "/ui/runs"


async def _form(request: Request) -> dict[str, str]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM:
        raise refuse(413, f"the form is larger than {MAX_FORM // 1024} KiB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM:
            raise refuse(413, f"the form is larger than {MAX_FORM // 1024} KiB")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        return {}
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise refuse(415, "forms are sent as application/x-www-form-urlencoded")
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200))
    except (UnicodeDecodeError, ValueError):
        raise refuse(400, "the form cannot be read (not UTF-8, or too many fields)") from None


def redirect(to: str, said: str = "") -> RedirectResponse:
    """A 303 to ``to``, with the banner of code ``said`` (a key of SAID)."""
    assert not said or said in SAID, said
    if said:
        to += ("&" if "?" in to else "?") + urlencode({"said": said})
    return RedirectResponse(to, 303)


def cookie_secure(request: Request) -> bool:
    """Secure cookies over HTTPS, and always with ``miniflow api --secure-cookies`` (TLS at a proxy)."""
    return request.url.scheme == "https" or ui_of(request).secure_cookies


def install(app: FastAPI, api: Api, *, secure_cookies: bool = False) -> None:
    """Mount the UI on the API's app."""
    from . import pages, pages_more  # noqa: F401  (register the pages on the router)

    app.state.ui = Ui(api, secure_cookies)
    static = Path(str(resources.files("miniflow.ops.ui") / "static"))
    app.mount("/ui/static", StaticFiles(directory=static), name="ui_static")
    app.router.routes.extend(router.routes)

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        if request.url.path.startswith("/ui"):
            response.headers["Content-Security-Policy"] = CSP
            response.headers["X-Frame-Options"] = "DENY"
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Referrer-Policy"] = "same-origin"
            if not request.url.path.startswith("/ui/static/"):
                response.headers["Cache-Control"] = "no-store"
        return response


def new_pre_token() -> str:
    return secrets.token_urlsafe(24)


def as_json(value: Any, limit: int = 20_000) -> str:
    """Data shown in a <pre>: JSON, cut at ``limit`` characters (escaped by the template)."""
    text = json.dumps(value, indent=2, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more characters)"
