"""Who sent a message: signatures on MiniFlow's own messages, keys of producers and executors, and
the capability of one step attempt.

    sender       proof                                                  checked by
    core         Ed25519 signature in the option ``mf_sig`` ("ed1.")    every node; executors hold
                 (coordinator, results, timer)                          the public keys only
    client key   HMAC-SHA256 in the option ``mf_sig`` ("hm1."), or in   core nodes (they hold the
                 the AMQP headers x-miniflow-key / x-miniflow-mac over   MAC keys, sealed in the
                 the exact body (a producer in any language)            database)

An ``mf_sig`` covers a canonical form of what the message means: its base queue, actor, message id,
timestamp, args, kwargs and step time limit, packed with msgpack. It leaves out the options that
dramatiq changes on the way (retries, eta, traceback, the decline count), so a signature survives
infrastructure retries and delay queues; a copy of a signed message is a redelivery, which every
consumer already dedupes. The header MAC covers the body byte for byte; after it has been checked
once, a core node that re-publishes the message (a retry) signs it as core.

Who may send what (deny by default; a client key has exactly one role):

    start_workflow                 core, producer, operator, admin (unsigned too, unless signed
                                   starts are required)
    cancel_run, retry_run          core, operator, admin
    execute_step, step_finished    core
    record_result, step_progress   core, executor   (and the attempt's capability, below)
    record_dead_letter             core, executor

A capability is an HMAC, under a key derived from a core key, of (run id, step, attempt): the
coordinator puts it in each step message and the executor returns it with the attempt's progress
and result. An executor can therefore report only on attempts it was given, and a client key
cannot make one up. Key ids travel with signatures and capabilities, so keys rotate without
downtime: every key still accepted verifies, the current one signs.

Client tokens are ``mf_<12 hex key id>_<43 base64url characters>``. The MAC key is
``SHA-256("miniflow-mac-v1:" + token)``: the database keeps that (sealed) and a SHA-256 of the token,
never the token itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import codec
from .codes import Reason
from .errors import ConfigError, MessageRejected
from .names import (
    CANCEL_RUN,
    EXECUTE_STEP,
    RECORD_DEAD_LETTER,
    RECORD_RESULT,
    RETRY_RUN,
    START_WORKFLOW,
    STEP_FINISHED,
    STEP_PROGRESS,
)

SIG_OPTION = "mf_sig"
HEADER_KEY = "x-miniflow-key"
HEADER_MAC = "x-miniflow-mac"

CORE = "core"
EXECUTOR = "executor"
PRODUCER = "producer"
VIEWER = "viewer"
OPERATOR = "operator"
ADMIN = "admin"
CLIENT_ROLES = (EXECUTOR, PRODUCER, VIEWER, OPERATOR, ADMIN)

_STARTERS = frozenset({CORE, PRODUCER, OPERATOR, ADMIN})
_OPERATORS = frozenset({CORE, OPERATOR, ADMIN})
_REPORTERS = frozenset({CORE, EXECUTOR})
MAY_SEND: dict[str, frozenset[str]] = {
    START_WORKFLOW: _STARTERS, CANCEL_RUN: _OPERATORS, RETRY_RUN: _OPERATORS,
    EXECUTE_STEP: frozenset({CORE}), STEP_FINISHED: frozenset({CORE}),
    STEP_PROGRESS: _REPORTERS, RECORD_RESULT: _REPORTERS, RECORD_DEAD_LETTER: _REPORTERS,
}

_KID = re.compile(r"^[0-9a-f]{12}$")
_TOKEN = re.compile(r"^mf_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_B64 = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_HEX_MAC = re.compile(r"^[0-9a-f]{64}$")
MAC_KEY_CONTEXT = b"miniflow-mac-v1:"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_kid() -> str:
    return secrets.token_hex(6)


def canonical(queue_name: str, actor_name: str, message_id: str, timestamp: int, args: Sequence[Any],
              kwargs: Mapping[str, Any], options: Mapping[str, Any]) -> bytes:
    """The bytes an ``mf_sig`` signs: what the message means, not how dramatiq moves it."""
    base = queue_name[:-3] if queue_name.endswith(".DQ") else queue_name
    return codec.pack(["mf1", base, actor_name, message_id, timestamp, list(args), dict(kwargs),
                       options.get("time_limit")])


def canonical_of(fields: Mapping[str, Any]) -> bytes:
    return canonical(fields["queue_name"], fields["actor_name"], fields["message_id"],
                     fields["message_timestamp"], fields["args"], fields["kwargs"], fields["options"])


# -- keys ---------------------------------------------------------------------------------------
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

    @property
    def seed(self) -> bytes:
        return self.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption())

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def public_b64(self) -> str:
        return b64(self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    @property
    def cap_key(self) -> bytes:
        return hmac.new(self.seed, b"miniflow capability key v1", hashlib.sha256).digest()

    def sign(self, data: bytes) -> str:
        return f"ed1.{self.kid}.{b64(self.private.sign(data))}"


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
        if not sep or not _KID.fullmatch(kid):
            raise ConfigError(f"{where}: each entry must be <12 hex key id>:<public key>")
        keys[kid] = public_key(key, where)
    if not keys:
        raise ConfigError(f"{where} holds no key")
    return keys


class KeySource(Protocol):
    """The keys a process knows: what it verifies with, and what it signs with."""

    def core_public(self, kid: str) -> Ed25519PublicKey | None: ...
    def client(self, kid: str) -> ClientKey | None: ...
    def cap_key(self, kid: str) -> bytes | None: ...
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

    def cap_key(self, kid: str) -> bytes | None:
        key = self._core.get(kid)
        return key.cap_key if key is not None else None

    def core_signer(self) -> CoreKey | None:
        return next(iter(self._core.values()), None)

    def signer(self) -> CoreKey | ClientKey | None:
        return self.core_signer() or self._own


# -- checking -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sender:
    role: str
    kid: str


class Verifier:
    """Who sent a message, and whether that sender may send it (MessageRejected otherwise)."""

    def __init__(self, keys: KeySource, *, signed_starts: bool = False) -> None:
        self.keys = keys
        self.signed_starts = signed_starts

    def check(self, fields: Mapping[str, Any], headers: Mapping[str, Any] | None = None,
              body: bytes = b"") -> Sender | None:
        actor = fields["actor_name"]
        sender = self.sender(fields, headers, body)
        allowed = MAY_SEND.get(actor, frozenset())
        if sender is None:
            if actor == START_WORKFLOW and not self.signed_starts:
                return None
            raise MessageRejected(Reason.UNSIGNED, f"{actor} must be signed by a key of role "
                                  f"{' or '.join(sorted(allowed))}", "options")
        if sender.role not in allowed:
            raise MessageRejected(Reason.KEY_NOT_ALLOWED, f"key {sender.kid} ({sender.role}) may not send {actor}; "
                                  f"it takes {' or '.join(sorted(allowed))}", "options")
        return sender

    def sender(self, fields: Mapping[str, Any], headers: Mapping[str, Any] | None, body: bytes) -> Sender | None:
        sig = fields["options"].get(SIG_OPTION)
        if sig is not None:
            return self._signature(sig, fields)
        if headers and (HEADER_MAC in headers or HEADER_KEY in headers):
            return self._header(headers, body)
        return None

    def _signature(self, sig: str, fields: Mapping[str, Any]) -> Sender:
        alg, _, rest = sig.partition(".")
        kid, _, value = rest.partition(".")
        if alg not in ("ed1", "hm1") or not _KID.fullmatch(kid) or not _B64.fullmatch(value):
            raise MessageRejected(Reason.BAD_SIGNATURE, "option mf_sig is not a MiniFlow signature", "options")
        data = canonical_of(fields)
        if alg == "ed1":
            public = self.keys.core_public(kid)
            if public is None:
                raise MessageRejected(Reason.UNKNOWN_KEY, f"signed by core key {kid}, which is not accepted here "
                                      "(unknown or retired)", "options")
            try:
                public.verify(unb64(value), data)
            except (InvalidSignature, ValueError):
                raise MessageRejected(Reason.BAD_SIGNATURE, f"the signature of core key {kid} does not match "
                                      "the message", "options") from None
            return Sender(CORE, kid)
        client = self._client(kid)
        if not hmac.compare_digest(client.sign(data), sig):
            raise MessageRejected(Reason.BAD_SIGNATURE, f"the signature of key {kid} does not match the message",
                                  "options")
        return Sender(client.role, kid)

    def _header(self, headers: Mapping[str, Any], body: bytes) -> Sender:
        kid, mac = (v.decode("ascii", "replace") if isinstance(v, bytes) else v
                    for v in (headers.get(HEADER_KEY), headers.get(HEADER_MAC)))
        if not isinstance(kid, str) or not _KID.fullmatch(kid) or not isinstance(mac, str) \
                or not _HEX_MAC.fullmatch(mac.lower()):
            raise MessageRejected(Reason.BAD_SIGNATURE, f"headers {HEADER_KEY} (a key id) and {HEADER_MAC} "
                                  "(64 hex digits) must come together", "headers")
        client = self._client(kid)
        if not hmac.compare_digest(client.header_mac(body), mac.lower()):
            raise MessageRejected(Reason.BAD_SIGNATURE, f"the {HEADER_MAC} of key {kid} does not match the body",
                                  "headers")
        return Sender(client.role, kid)

    def _client(self, kid: str) -> ClientKey:
        client = self.keys.client(kid)
        if client is None:
            raise MessageRejected(Reason.UNKNOWN_KEY, f"key {kid} is unknown, revoked or expired", "options")
        return client


class Capabilities:
    """Issues and checks the capability of a step attempt."""

    def __init__(self, keys: KeySource) -> None:
        self.keys = keys

    @staticmethod
    def _mac(key: bytes, run_id: str, step: str, attempt: int) -> str:
        return b64(hmac.new(key, codec.pack(["cap1", run_id, step, attempt]), hashlib.sha256).digest()[:18])

    def issue(self, run_id: str, step: str, attempt: int) -> str | None:
        core = self.keys.core_signer()
        return None if core is None else f"{core.kid}.{self._mac(core.cap_key, run_id, step, attempt)}"

    def check(self, cap: str | None, run_id: str, step: str, attempt: int) -> None:
        """MessageRejected (bad_capability) unless ``cap`` was issued for this attempt."""
        kid, _, value = (cap or "").partition(".")
        key = self.keys.cap_key(kid) if _KID.fullmatch(kid) else None
        if key is None or not hmac.compare_digest(self._mac(key, run_id, step, attempt), value):
            raise MessageRejected(Reason.BAD_CAPABILITY, f"no capability for run {run_id[:36]} step {step[:64]!r} "
                                  f"attempt {attempt}: only the executor given an attempt may report on it", "cap")
