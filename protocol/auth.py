"""Who sent a message: signatures on MiniFlow's own messages, keys of producers and executors, and
the capability of one step attempt.

    sender       proof                                                  checked by
    core         Ed25519 signature in the option ``mf_sig`` ("ed1.")    every node; executors hold
                 (coordinator, results, timer) on step messages;        the public keys only
                 HMAC under a key derived from it ("hc1.") on the       core nodes (they hold the
                 rest, which only core nodes consume                    core key)
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
    worker_heartbeat               core, executor

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

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature

from .codes import Reason
from .errors import MessageRejected
from .keys import (
    HEADER_KEY,
    HEADER_MAC,
    ClientKey,
    CoreKey,
    KeySource,
    StaticKeys,
    b64,
    mac_key_of,
    new_token,
    parse_public_keys,
    public_key,
    token_hash,
    unb64,
)
from .keys import KID as _KID
from .names import (
    CANCEL_RUN,
    EXECUTE_STEP,
    RECORD_DEAD_LETTER,
    RECORD_RESULT,
    RETRY_RUN,
    START_WORKFLOW,
    STEP_FINISHED,
    STEP_PROGRESS,
    WORKER_HEARTBEAT,
)

SIG_OPTION = "mf_sig"

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
    WORKER_HEARTBEAT: _REPORTERS,
}

_B64 = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_HEX_MAC = re.compile(r"^[0-9a-f]{64}$")
__all__ = ["ADMIN", "CLIENT_ROLES", "CORE", "EXECUTOR", "HEADER_KEY", "HEADER_MAC", "MAY_SEND", "OPERATOR",
           "PRODUCER", "SIG_OPTION", "VIEWER", "Capabilities", "ClientKey", "CoreKey", "KeySource", "Sender",
           "StaticKeys", "Verifier", "b64", "canonical", "canonical_of", "mac_key_of", "new_token",
           "parse_public_keys", "public_key", "token_hash", "unb64"]


def canonical(queue_name: str, actor_name: str, message_id: str, timestamp: int, args: Sequence[Any],
              kwargs: Mapping[str, Any], options: Mapping[str, Any]) -> bytes:
    """The bytes an ``mf_sig`` signs: what the message means, not how dramatiq moves it."""
    base = queue_name[:-3] if queue_name.endswith(".DQ") else queue_name
    packed: bytes = msgpack.packb(["mf1", base, actor_name, message_id, timestamp, list(args), dict(kwargs),
                                   options.get("time_limit")], use_bin_type=True)
    return packed


def canonical_of(fields: Mapping[str, Any]) -> bytes:
    return canonical(fields["queue_name"], fields["actor_name"], fields["message_id"],
                     fields["message_timestamp"], fields["args"], fields["kwargs"], fields["options"])


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
        if alg not in ("ed1", "hc1", "hm1") or not _KID.fullmatch(kid) or not _B64.fullmatch(value):
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
        if alg == "hc1":
            core = self.keys.core(kid)
            if core is None:
                raise MessageRejected(Reason.UNKNOWN_KEY, f"signed by core key {kid}, which is not accepted here",
                                      "options")
            if not hmac.compare_digest(core.mac(data), sig):
                raise MessageRejected(Reason.BAD_SIGNATURE, f"the signature of core key {kid} does not match "
                                      "the message", "options")
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
        data = msgpack.packb(["cap1", run_id, step, attempt], use_bin_type=True)
        return b64(hmac.new(key, data, hashlib.sha256).digest()[:18])

    def issue(self, run_id: str, step: str, attempt: int) -> str | None:
        core = self.keys.core_signer()
        return None if core is None else f"{core.kid}.{self._mac(core.cap_key, run_id, step, attempt)}"

    def check(self, cap: str | None, run_id: str, step: str, attempt: int) -> None:
        """MessageRejected (bad_capability) unless ``cap`` was issued for this attempt."""
        kid, _, value = (cap or "").partition(".")
        core = self.keys.core(kid) if _KID.fullmatch(kid) else None
        if core is None or not hmac.compare_digest(self._mac(core.cap_key, run_id, step, attempt), value):
            raise MessageRejected(Reason.BAD_CAPABILITY, f"no capability for run {run_id[:36]} step {step[:64]!r} "
                                  f"attempt {attempt}: only the executor given an attempt may report on it", "cap")
