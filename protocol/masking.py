"""Masking of secrets, written once for every layer: passwords in URLs, secret params by field, and
the values of secret params inside free text (a step's error message).

Nothing here knows where the text goes (a log line, a span, a column, the terminal): callers mask
before they hand text on, and truncate only after masking (a cut could split a secret).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any

MASK = "***"
MIN_TEXT_SECRET_LEN = 8  # shorter secret values are masked by field only, never searched in text
# scheme://user:password@ -- the password runs to the last '@' before the host (it may hold '@').
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^\s/]+)@", re.I)


def mask_urls(text: str) -> str:
    """Replace the password of every URL in a text by ***: ``amqp://guest:***@host/``."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def mask_url(url: str) -> str:
    """One URL with its password replaced by ***, safe for logs and error messages. A text that
    is not quite a URL but holds ``user:password@`` loses everything before the '@'."""
    masked = mask_urls(url)
    if masked == url and "@" in url and ":" in url.rsplit("@", 1)[0].split("://")[-1]:
        return f"{MASK}@{url.rsplit('@', 1)[1]}"
    return masked


def mask_params(params: Mapping[str, Any], secrets: Collection[str]) -> dict[str, Any]:
    """Params for display: the values of the secret ones replaced by ***."""
    return {k: (MASK if k in secrets else v) for k, v in params.items()}


def mask_fields(value: Any, secrets: Collection[str]) -> Any:
    """Plain data (a step's output or config) for display: the value of every map key named like a
    secret param is replaced by ***, at any depth."""
    if isinstance(value, dict):
        return {k: (MASK if k in secrets else mask_fields(v, secrets)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_fields(v, secrets) for v in value]
    return value


def mask_values(text: str, params: Mapping[str, Any], secrets: Collection[str]) -> str:
    """Replace the values of secret params where they appear in a free text (an error message, a
    traceback) by ***, whole values only.

    Scalars nested in lists and maps are found too, each in its plain, repr() and JSON forms; a form
    shorter than MIN_TEXT_SECRET_LEN characters is left alone, because it cannot be told from an
    ordinary word (a secret ``t`` would otherwise turn "timeout" into "***imeou***"). Such short
    secrets are still masked wherever they stand as a field of their own."""
    found: list[str] = []
    stack: list[Any] = [params.get(name) for name in secrets]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif value is not None and not isinstance(value, bool):
            found += [str(value), repr(value), json.dumps(value)]
    for form in sorted({f for f in found if len(f) >= MIN_TEXT_SECRET_LEN}, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text
