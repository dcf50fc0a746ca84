"""The HTTP API (`miniflow api`): app.py the routes, security.py keys, roles and the policy,
errors.py the one error shape, models.py the bodies (and so the OpenAPI document)."""

from .app import create_app

__all__ = ["create_app"]
