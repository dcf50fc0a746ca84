"""PROTOCOL.md is normative: its worked example must be a valid message and its code table complete."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from miniflow.actors.guard import Guard
from miniflow.protocol import codec, messages
from miniflow.protocol.codes import Reason
from miniflow.protocol.envelope import check_envelope, payload_of
from miniflow.protocol.messages import StartWorkflow
from miniflow.protocol.names import QueueNames

DOC = Path(__file__).resolve().parent.parent / "protocol" / "PROTOCOL.md"
HEX_MARKER = "<!-- worked-example-hex -->"


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def example_body(doc: str) -> bytes:
    assert doc.count(HEX_MARKER) == 1, f"PROTOCOL.md must hold exactly one {HEX_MARKER} marker"
    after = doc.split(HEX_MARKER, 1)[1]
    block = re.match(r"\s*```[^\n]*\n(.*?)\n```", after, re.DOTALL)
    assert block, "a fenced block must follow the worked-example marker"
    body = bytearray()
    for line in block.group(1).splitlines():
        offset, _, octets = line.partition(":")
        assert int(offset, 16) == len(body), f"hex line {line!r} has the wrong offset"
        body += bytes.fromhex(octets)
    return bytes(body)


def documented_codes(doc: str) -> set[str]:
    """The codes in the first column of the rejection table (rows like ``| `code` | stage | ...``)."""
    section = doc.split("## 8. Rejections", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z][a-z0-9_]*)` \|", section, re.MULTILINE))


def test_the_worked_example_decodes_to_a_valid_envelope(example_body: bytes) -> None:
    envelope = codec.unpack(example_body)
    check_envelope(envelope)
    assert envelope["queue_name"] == "miniflow.ingress"
    assert envelope["actor_name"] == "start_workflow"
    assert envelope["kwargs"] == {} and envelope["options"] == {}
    assert envelope["message_id"] == "6f1c1d2e-0c6b-4a53-9a43-5b0e2f0d9a11"
    assert envelope["message_timestamp"] == 1795689600000


def test_the_worked_example_is_a_start_of_diamond_with_its_key(example_body: bytes) -> None:
    envelope = codec.unpack(example_body)
    start = StartWorkflow.from_payload(payload_of(envelope["args"], envelope["kwargs"]))
    assert start.workflow == "diamond"
    assert start.params == {"x": 3}
    assert start.idempotency_key == "order-1042"
    assert start.version is None
    assert start.priority == 0


def test_the_worked_example_passes_the_ingress_guard(example_body: bytes) -> None:
    assert Guard(QueueNames("miniflow")).inspect("miniflow.ingress", example_body) is None


def test_the_worked_example_is_what_our_own_encoder_writes(example_body: bytes) -> None:
    assert codec.pack(codec.unpack(example_body)) == example_body


def test_the_worked_example_states_its_length(doc: str, example_body: bytes) -> None:
    assert f"{len(example_body)} bytes" in doc


def test_every_rejection_code_is_documented(doc: str) -> None:
    codes = {reason.value for reason in Reason}
    assert len(codes) >= 30, "the code enum lost members: has the naming changed?"
    missing = sorted(codes - documented_codes(doc))
    assert not missing, f"PROTOCOL.md's rejection table lacks {missing}"


def test_every_documented_code_exists(doc: str) -> None:
    unknown = sorted(documented_codes(doc) - {reason.value for reason in Reason})
    assert not unknown, f"PROTOCOL.md's rejection table lists codes MiniFlow does not have: {unknown}"


def test_the_documented_limits_match_the_code(doc: str) -> None:
    doc = " ".join(doc.split())  # line breaks of the prose do not matter
    assert f"{codec.MAX_MESSAGE_BYTES:,} bytes" in doc
    assert f"first {codec.RAW_KEEP} bytes" in doc
    assert f"at most **{codec.MAX_DEPTH} levels**" in doc
    assert f"today it is `{{{', '.join(map(str, sorted(messages.SUPPORTED_VERSIONS)))}}}`" in doc
    assert f"The protocol version is **{messages.PROTOCOL_VERSION}**" in doc


def test_the_worked_signature_is_what_a_client_key_computes_and_the_verifier_accepts(
        doc: str, example_body: bytes) -> None:
    from miniflow.protocol.auth import PRODUCER, ClientKey, StaticKeys, Verifier, mac_key_of

    block = doc.split("<!-- worked-example-signature -->", 1)[1].split("```")[1]
    shown = dict(line.split(None, 1) for line in block.strip().splitlines() if not line.startswith("x-"))
    headers = dict(line.split(None, 1) for line in block.strip().splitlines() if line.startswith("x-"))
    key = ClientKey.from_token(shown["token"], PRODUCER)
    assert mac_key_of(shown["token"]).hex() == shown["mac"].split()[-1]
    assert key.headers(example_body) == headers
    fields = codec.unpack(example_body)
    sender = Verifier(StaticKeys(clients=[key]), signed_starts=True).check(fields, headers, example_body)
    assert sender is not None and sender.role == PRODUCER
