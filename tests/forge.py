"""Bodies as MiniFlow's own processes would send them, for tests that put messages on a queue by hand."""

from __future__ import annotations

from typing import Any

from miniflow.protocol import codec
from miniflow.protocol.auth import SIG_OPTION, ClientKey, CoreKey, KeySource, canonical_of


def sign(fields: dict[str, Any], signer: CoreKey | ClientKey) -> dict[str, Any]:
    """The envelope with its mf_sig (as the Signing middleware would add it)."""
    signed = {**fields, "options": dict(fields["options"])}
    signed["options"].pop(SIG_OPTION, None)
    signed["options"][SIG_OPTION] = signer.sign(canonical_of(signed))
    return signed


def core_body(keys: KeySource | None, fields: dict[str, Any]) -> bytes:
    """Packed bytes of an envelope signed by the core key of ``keys`` (unsigned when auth is off)."""
    signer = keys.core_signer() if keys is not None else None
    return codec.pack(sign(fields, signer) if signer is not None else fields)
