"""Secret params at rest: sealed with AES-256-GCM before they reach a column, opened only to be sent
to the executor that needs them.

A sealed value is the text ``mfenc:v1:<key id>:<base64url of nonce + ciphertext>`` standing where
the param's value was (the value itself is JSON-encoded first, so any JSON value can be sealed).
The key id travels with the ciphertext, so keys rotate without downtime: a key ring holds the
current key (which seals) and older ones (which still open); ``reseal`` moves stored values to the
current key, after which the old ones may be dropped.

Keys come from MINIFLOW_DATA_KEY (one key) or MINIFLOW_DATA_KEY_FILE (one ``id:key`` per line, the
first one current), each key 32 random bytes in base64url (``miniflow keys new-data-key`` makes one).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from miniflow.protocol.errors import ConfigError, SealError

PREFIX = "mfenc:v1:"
_KEY_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")
_NONCE = 12


def new_key_line(key_id: str | None = None) -> str:
    """A fresh ``id:key`` line for a key file (or, without the id, for MINIFLOW_DATA_KEY)."""
    key = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    kid = key_id or hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{kid}:{key}"


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise ConfigError(f"{where}: a data key must be base64url text") from None
    if len(key) != 32:
        raise ConfigError(f"{where}: a data key must be 32 bytes (base64url of 32 random bytes), not {len(key)}")
    return key


class KeyRing:
    """Data keys by id; the first is the current one (it seals), the others only open."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise ConfigError("a key ring needs at least one data key")
        self.current = keys[0][0]
        self._keys = {kid: AESGCM(key) for kid, key in keys}

    @classmethod
    def parse(cls, text: str, where: str) -> KeyRing:
        """Key lines ``id:key`` (or one bare key, whose id is derived from it); # starts a comment."""
        keys: list[tuple[str, bytes]] = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            kid, sep, key = line.partition(":")
            if not sep:
                kid, key = hashlib.sha256(line.encode()).hexdigest()[:8], line
            if not _KEY_ID.fullmatch(kid):
                raise ConfigError(f"{where} line {number}: a key id must be 1-32 letters, digits, '_', '.', '-'")
            if kid in {k for k, _ in keys}:
                raise ConfigError(f"{where} line {number}: key id {kid!r} appears twice")
            keys.append((kid, _decode_key(key.strip(), f"{where} line {number}")))
        if not keys:
            raise ConfigError(f"{where} holds no data key")
        return cls(keys)

    @classmethod
    def from_file(cls, path: str) -> KeyRing:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"MINIFLOW_DATA_KEY_FILE {path!r} cannot be read: {exc.strerror}") from None
        return cls.parse(text, f"MINIFLOW_DATA_KEY_FILE {path!r}")

    @classmethod
    def ephemeral(cls) -> KeyRing:
        """A key that lives as long as this process (the embedded mode, when none is configured)."""
        return cls([("ephemeral", os.urandom(32))])

    def seal(self, value: Any, name: str) -> str:
        nonce = os.urandom(_NONCE)
        data = self._keys[self.current].encrypt(nonce, json.dumps(value).encode(), _aad(name))
        return f"{PREFIX}{self.current}:{base64.urlsafe_b64encode(nonce + data).decode()}"

    def open(self, sealed: str, name: str) -> Any:
        kid, _, data = sealed[len(PREFIX):].partition(":")
        aead = self._keys.get(kid)
        if aead is None:
            raise SealError(f"secret param {name!r} is sealed with data key {kid!r}, which is not configured "
                            "(add it to MINIFLOW_DATA_KEY_FILE)")
        try:
            raw = base64.urlsafe_b64decode(data)
            return json.loads(aead.decrypt(raw[:_NONCE], raw[_NONCE:], _aad(name)))
        except (InvalidTag, ValueError):
            raise SealError(f"secret param {name!r} cannot be opened: the sealed value was altered") from None


def _aad(name: str) -> bytes:
    return f"miniflow param {name}".encode()


def is_sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def seal_params(params: Mapping[str, Any], secrets: Collection[str], keys: KeyRing | None) -> dict[str, Any]:
    """Params to store: the secret ones sealed (ConfigError when there are some and no key)."""
    present = [name for name in secrets if params.get(name) is not None and not is_sealed(params[name])]
    if not present:
        return dict(params)
    if keys is None:
        raise ConfigError(f"secret param(s) {sorted(present)} need a data key to be stored: set MINIFLOW_DATA_KEY "
                          "or MINIFLOW_DATA_KEY_FILE (`miniflow keys new-data-key` makes one)")
    return {k: keys.seal(v, k) if k in present else v for k, v in params.items()}


def open_params(params: Mapping[str, Any], keys: KeyRing | None) -> dict[str, Any]:
    """Stored params with their sealed values opened (to send to an executor)."""
    if not any(is_sealed(v) for v in params.values()):
        return dict(params)
    if keys is None:
        raise SealError("the params hold sealed secrets but no data key is configured (MINIFLOW_DATA_KEY or "
                        "MINIFLOW_DATA_KEY_FILE)")
    return {k: keys.open(v, k) if is_sealed(v) else v for k, v in params.items()}


def reseal(params: Mapping[str, Any], keys: KeyRing) -> dict[str, Any] | None:
    """The params with every sealed value sealed again with the current key; None when none needs it."""
    stale = [k for k, v in params.items() if is_sealed(v) and not v.startswith(f"{PREFIX}{keys.current}:")]
    if not stale:
        return None
    return {k: keys.seal(keys.open(v, k), k) if k in stale else v for k, v in params.items()}
