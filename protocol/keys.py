"""Keys of message authentication, in memory: the core's Ed25519 keys, client keys (tokens) and
the key sources processes verify and sign with. How they are used is in ``protocol.auth``; how
they are stored, in ``persistence.keys``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ConfigError

HEADER_KEY = "x-miniflow-key"
HEADER_MAC = "x-miniflow-mac"
KID = re.compile(r"^[0-9a-f]{12}$")
_TOKEN = re.compile(r"^mf_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
MAC_KEY_CONTEXT = b"miniflow-mac-v1:"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_kid() -> str:
    return secrets.token_hex(6)


def new_token() -> str:
    """A fresh client token (shown once; only its hash and MAC key are stored)."""
    return f"mf_{new_kid()}_{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ClientKey:
    """A producer's, operator's or executor's key: signs with HMAC-SHA256 under its MAC key."""

    kid: str
    role: str
    mac_key: bytes = field(repr=False)

    @classmethod
    def from_token(cls, token: str, role: str = "", where: str = "MINIFLOW_KEY") -> ClientKey:
        match = _TOKEN.fullmatch(token.strip())
        if match is None:  # never echo the token: it is a secret
            raise ConfigError(f"{where} is not a MiniFlow key (mf_<key id>_<secret>, as `miniflow keys create` "
                              "prints it)")
        return cls(match.group(1), role, mac_key_of(token.strip()))

    def sign(self, data: bytes) -> str:
        return f"hm1.{self.kid}.{b64(hmac.new(self.mac_key, data, hashlib.sha256).digest())}"

    def header_mac(self, body: bytes) -> str:
        """The x-miniflow-mac header of a body (hex HMAC-SHA256 over its exact bytes)."""
        return hmac.new(self.mac_key, body, hashlib.sha256).hexdigest()

    def headers(self, body: bytes) -> dict[str, str]:
        return {HEADER_KEY: self.kid, HEADER_MAC: self.header_mac(body)}


def mac_key_of(token: str) -> bytes:
    return hashlib.sha256(MAC_KEY_CONTEXT + token.encode()).digest()


@dataclass(frozen=True)
class CoreKey:
    """One Ed25519 key of the core: signs MiniFlow's own messages; derives the capability key."""

    kid: str
    private: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> CoreKey:
        return cls(new_kid(), Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, kid: str, seed: bytes) -> CoreKey:
        return cls(kid, Ed25519PrivateKey.from_private_bytes(seed))

    @cached_property
    def seed(self) -> bytes:
        return self.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption())

    @cached_property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def public_b64(self) -> str:
        return b64(self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    @cached_property
    def cap_key(self) -> bytes:
        return hmac.new(self.seed, b"miniflow capability key v1", hashlib.sha256).digest()

    @cached_property
    def mac_key(self) -> bytes:
        return hmac.new(self.seed, b"miniflow core mac key v1", hashlib.sha256).digest()

    def sign(self, data: bytes) -> str:
        """For executors, who verify with the public key only."""
        return f"ed1.{self.kid}.{b64(self.private.sign(data))}"

    def mac(self, data: bytes) -> str:
        """For other core processes, who hold the key too: the same proof, a tenth of the cost."""
        return f"hc1.{self.kid}.{b64(hmac.new(self.mac_key, data, hashlib.sha256).digest())}"


def public_key(text: str, where: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(unb64(text))
    except ValueError:
        raise ConfigError(f"{where}: a core public key must be base64url of 32 bytes") from None


def parse_public_keys(text: str, where: str = "MINIFLOW_CORE_PUBLIC_KEYS") -> dict[str, Ed25519PublicKey]:
    """``kid:key[,kid:key...]`` (as `miniflow keys core public` prints it)."""
    keys: dict[str, Ed25519PublicKey] = {}
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        kid, sep, key = item.partition(":")
        if not sep or not KID.fullmatch(kid):
            raise ConfigError(f"{where}: each entry must be <12 hex key id>:<public key>")
        keys[kid] = public_key(key, where)
    if not keys:
        raise ConfigError(f"{where} holds no key")
    return keys


class KeySource(Protocol):
    """The keys a process knows: what it verifies with, and what it signs with."""

    def core_public(self, kid: str) -> Ed25519PublicKey | None: ...
    def client(self, kid: str) -> ClientKey | None: ...
    def core(self, kid: str) -> CoreKey | None: ...
    def signer(self) -> CoreKey | ClientKey | None: ...
    def core_signer(self) -> CoreKey | None: ...


class StaticKeys:
    """Keys held in memory: the embedded mode (an ephemeral core key), an executor (the core's
    public keys and its own client key), and tests."""

    def __init__(self, *, core: Sequence[CoreKey] = (), public: Mapping[str, Ed25519PublicKey] | None = None,
                 clients: Sequence[ClientKey] = (), own: ClientKey | None = None) -> None:
        self._core = {k.kid: k for k in core}
        self._public = dict(public or {}) | {k.kid: k.public for k in core}
        self._clients = {k.kid: k for k in clients}
        self._own = own

    def core_public(self, kid: str) -> Ed25519PublicKey | None:
        return self._public.get(kid)

    def client(self, kid: str) -> ClientKey | None:
        return self._clients.get(kid)

    def core(self, kid: str) -> CoreKey | None:
        return self._core.get(kid)

    def core_signer(self) -> CoreKey | None:
        return next(iter(self._core.values()), None)

    def signer(self) -> CoreKey | ClientKey | None:
        return self.core_signer() or self._own
