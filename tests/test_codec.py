"""protocol/codec.py: the msgpack wire codec, its limits and every decode rejection code."""

from __future__ import annotations

import datetime
import random
import struct

import msgpack
import pytest

from miniflow.protocol import codec
from miniflow.protocol.codes import Reason
from miniflow.protocol.errors import DecodeFailed, EncodeFailed, ProtocolError

SECRET = "sk_live_do_not_log_me"


def envelope(**params: object) -> dict[str, object]:
    """A dramatiq-style envelope around one start_workflow payload."""
    return {
        "queue_name": "miniflow.ingress",
        "actor_name": "start_workflow",
        "args": [{"v": 1, "workflow": "diamond", "params": dict(params)}],
        "kwargs": {},
        "options": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        "message_id": "0b7c6f5e-7d0c-4a57-8a1a-7f3d2c1e9b10",
        "message_timestamp": 1_764_150_000_000,
    }


def nested_lists(levels: int) -> object:
    """``levels`` lists, one inside the other, the innermost empty."""
    value: object = []
    for _ in range(levels - 1):
        value = [value]
    return value


def rejection(body: bytes, **kwargs: int) -> DecodeFailed:
    with pytest.raises(DecodeFailed) as info:
        codec.unpack(body, **kwargs)
    err = info.value
    assert len(err.raw) <= codec.RAW_KEEP
    assert err.raw == body[: codec.RAW_KEEP]
    return err


# -- round trip ----------------------------------------------------------------------------------
def test_a_dramatiq_envelope_survives_a_pack_unpack_round_trip() -> None:
    message = envelope(x=3, ratio=0.25, name="zoë", flag=True, nothing=None, big=2**64 - 1, low=-(2**63))
    assert codec.unpack(codec.pack(message)) == message


def test_tuples_come_back_as_lists() -> None:
    message = {"args": ({"v": 1},), "pair": (1, (2, 3))}
    decoded = codec.unpack(codec.pack(message))
    assert decoded == {"args": [{"v": 1}], "pair": [1, [2, 3]]}
    assert isinstance(decoded["args"], list)
    assert isinstance(decoded["pair"][1], list)


def test_bytes_round_trip_as_bytes_and_text_as_text() -> None:
    decoded = codec.unpack(codec.pack({"raw": b"\x00\xff\xc1", "text": "\u00e9t\u00e9"}))
    assert decoded["raw"] == b"\x00\xff\xc1"
    assert isinstance(decoded["raw"], bytes)
    assert decoded["text"] == "\u00e9t\u00e9"
    assert isinstance(decoded["text"], str)


def test_a_message_nested_up_to_the_limit_round_trips() -> None:
    inner: object = [1]
    for _ in range(codec.MAX_DEPTH - 2):
        inner = [inner]
    message = {"a": inner}  # the map, then 31 lists: the deepest list sits at depth 31
    assert codec.unpack(codec.pack(message)) == message


def test_pack_refuses_an_empty_container_at_the_depth_unpack_rejects() -> None:
    """Everything pack() accepts, unpack() accepts: the innermost (empty) list here sits at level 33."""
    message = {"a": nested_lists(codec.MAX_DEPTH)}
    with pytest.raises(DecodeFailed):
        codec.unpack(msgpack.packb(message, use_bin_type=True))
    with pytest.raises(EncodeFailed, match="nested deeper"):
        codec.pack(message)


# -- decode rejections ---------------------------------------------------------------------------
def test_a_body_over_max_bytes_is_rejected_as_too_large() -> None:
    body = codec.pack({"secret": SECRET, "blob": b"x" * 10_000})
    err = rejection(body, max_bytes=100)
    assert err.code == Reason.TOO_LARGE
    assert len(err.raw) == codec.RAW_KEEP
    assert SECRET not in str(err)


def test_a_body_exactly_at_max_bytes_is_accepted() -> None:
    body = codec.pack({"a": "b"})
    assert codec.unpack(body, max_bytes=len(body)) == {"a": "b"}


def test_a_truncated_body_is_rejected_as_malformed() -> None:
    body = codec.pack({"secret": SECRET})[:-3]
    err = rejection(body)
    assert err.code == Reason.MALFORMED
    assert SECRET[:-3] not in str(err)


@pytest.mark.parametrize("body", [b"\xc1", b"", b"\x81", b"\x81\xa1a", b"\xdb\x00\x00\x00\x10ab"],
                         ids=["never-used-byte", "empty", "map-without-items", "key-without-value",
                              "short-str32"])
def test_garbage_is_rejected_as_malformed(body: bytes) -> None:
    assert rejection(body).code == Reason.MALFORMED


def test_bytes_after_the_message_are_rejected_as_trailing_bytes() -> None:
    err = rejection(codec.pack({"a": 1}) + codec.pack(SECRET))
    assert err.code == Reason.TRAILING_BYTES
    assert SECRET not in str(err)


def test_nesting_of_33_levels_is_rejected_as_too_deep() -> None:
    body = msgpack.packb({"a": nested_lists(codec.MAX_DEPTH)}, use_bin_type=True)  # map + 32 lists
    assert rejection(body).code == Reason.TOO_DEEP


@pytest.mark.parametrize("prefix", [b"", b"\x81\xa1a"], ids=["top-level", "inside-a-map"])
def test_a_100000_deep_array_trips_the_decoder_stack_and_is_rejected_as_too_deep(prefix: bytes) -> None:
    body = prefix + b"\x91" * 100_000 + b"\x90"
    err = rejection(body)
    assert err.code == Reason.TOO_DEEP
    assert len(err.raw) == codec.RAW_KEEP


@pytest.mark.parametrize("body", [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
                                  b"\x81\xa1a\xdd\xff\xff\xff\xff", b"\x81\xa1a\xdf\xff\xff\xff\xff"],
                         ids=["array32", "map32", "array32-in-map", "map32-in-map"])
def test_a_length_header_claiming_4_billion_items_is_rejected_as_limit_exceeded(body: bytes) -> None:
    assert rejection(body).code == Reason.LIMIT_EXCEEDED


@pytest.mark.parametrize("body", [b"\x81\xa1a\xa1\xff", b"\x81\xa1\xff\x01"], ids=["value", "key"])
def test_a_string_that_is_not_utf8_is_rejected_as_invalid_utf8(body: bytes) -> None:
    assert rejection(body).code == Reason.INVALID_UTF8


@pytest.mark.parametrize("body", [b"\x82\xa1a\x01\xa1a\x02", b"\x81\xa1p\x82\xa1k\x01\xa1k\x02"],
                         ids=["top-level", "nested"])
def test_a_map_that_repeats_a_key_is_rejected(body: bytes) -> None:
    rejection(body)


def test_an_integer_map_key_is_rejected_as_non_str_key() -> None:
    assert rejection(b"\x81\x01\x01").code == Reason.NON_STR_KEY


def test_a_nested_integer_map_key_is_rejected_as_non_str_key() -> None:
    assert rejection(b"\x81\xa1a\x81\x01\x01").code == Reason.NON_STR_KEY


def test_a_binary_map_key_is_rejected_as_non_str_key() -> None:
    assert rejection(b"\x81\xc4\x01a\x01").code == Reason.NON_STR_KEY


@pytest.mark.parametrize("body", [b"\x81\xa1a\xd4\x01\x02", b"\xd4\x01\x02", b"\x81\xa1a\xc7\x03\x05abc"],
                         ids=["fixext1-in-map", "fixext1-top-level", "ext8"])
def test_a_msgpack_extension_is_rejected_as_ext_type(body: bytes) -> None:
    assert rejection(body).code == Reason.EXT_TYPE


@pytest.mark.parametrize("body", [b"\x81\xa1a\xd6\xff\x00\x00\x00\x01",
                                  b"\x81\xa1a\xd7\xff" + b"\x00" * 8],
                         ids=["timestamp32", "timestamp64"])
def test_a_msgpack_timestamp_extension_is_rejected_as_ext_type(body: bytes) -> None:
    assert rejection(body).code == Reason.EXT_TYPE


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("fmt", [(b"\xcb", ">d"), (b"\xca", ">f")], ids=["float64", "float32"])
def test_nan_and_infinity_are_rejected_as_non_finite_float(number: float, fmt: tuple[bytes, str]) -> None:
    marker, layout = fmt
    body = b"\x82\xa1a\x01\xa1b\x91" + marker + struct.pack(layout, number)  # {"a": 1, "b": [x]}
    assert rejection(body).code == Reason.NON_FINITE_FLOAT


@pytest.mark.parametrize("body", [b"\x93\x01\x02\x03", b"\x90", b"\x01", b"\xc0", b"\xa3abc", b"\xc2"],
                         ids=["array", "empty-array", "int", "nil", "str", "false"])
def test_a_top_level_value_that_is_not_a_map_is_rejected_as_not_a_map(body: bytes) -> None:
    assert rejection(body).code == Reason.NOT_A_MAP


def test_a_rejection_never_shows_the_payload_and_keeps_a_bounded_prefix() -> None:
    body = msgpack.packb([SECRET * 1000], use_bin_type=True)  # not a map, 21 kB
    err = rejection(body)
    assert err.code == Reason.NOT_A_MAP
    assert len(err.raw) == codec.RAW_KEEP
    assert SECRET not in str(err)
    assert SECRET not in repr(err)


def test_a_decode_failure_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        codec.unpack(b"\xc1")


def test_random_bytes_either_decode_to_a_map_or_raise_decode_failed() -> None:
    rng = random.Random(20251126)
    seeds = [codec.pack(envelope(x=1, blob=b"\x00\x01", f=1.5)), b"\x81\xa1a\x91\x92\x01\x02"]
    for _ in range(3000):
        if rng.random() < 0.5:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        else:
            mutated = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            body = bytes(mutated)
        try:
            value = codec.unpack(body)
        except DecodeFailed as err:
            assert err.code in {Reason.MALFORMED, Reason.TRAILING_BYTES, Reason.TOO_DEEP, Reason.LIMIT_EXCEEDED,
                                Reason.INVALID_UTF8, Reason.NON_STR_KEY, Reason.EXT_TYPE,
                                Reason.NON_FINITE_FLOAT, Reason.NOT_A_MAP}
            assert len(err.raw) <= codec.RAW_KEEP
        else:
            assert isinstance(value, dict)


# -- encode refusals -----------------------------------------------------------------------------
@pytest.mark.parametrize("value, path", [
    ({"message": 1, "args": [{"params": {"when": float("nan")}}]}, "message.args[0].params.when"),
    ({"x": float("inf")}, "message.x"),
    ({"x": 2**64}, "message.x"),
    ({"x": -(2**63) - 1}, "message.x"),
    ({"params": {"when": datetime.datetime(2026, 1, 1)}}, "message.params.when"),
    ({"params": {"when": datetime.date(2026, 1, 1)}}, "message.params.when"),
    ({"tags": {"a", "b"}}, "message.tags"),
    ({"tags": frozenset({"a"})}, "message.tags"),
    ({"params": {1: "one"}}, "message.params"),
    ({"params": {b"k": "v"}}, "message.params"),
    ({"obj": object()}, "message.obj"),
], ids=["nan", "inf", "2**64", "below-int64", "datetime", "date", "set", "frozenset", "int-key",
        "bytes-key", "object"])
def test_pack_refuses_what_is_not_plain_data_and_names_the_path(value: object, path: str) -> None:
    with pytest.raises(EncodeFailed) as info:
        codec.pack(value)
    assert info.value.path == path
    assert path in str(info.value)


def test_pack_refuses_nesting_deeper_than_the_limit() -> None:
    with pytest.raises(EncodeFailed, match="nested deeper"):
        codec.pack({"a": nested_lists(codec.MAX_DEPTH + 1)})


def test_pack_accepts_the_extremes_of_64_bit_integers() -> None:
    message = {"hi": 2**64 - 1, "lo": -(2**63)}
    assert codec.unpack(codec.pack(message)) == message


def test_an_encode_failure_does_not_show_the_value() -> None:
    with pytest.raises(EncodeFailed) as info:
        codec.pack({"params": {"token": {SECRET}}})
    assert SECRET not in str(info.value)
    assert info.value.path == "message.params.token"


def bomb() -> bytes:
    """99,000 empty maps in one array: under the size limit, and (without a budget) about a second
    of CPU to decode and check. Its cost with the budget is measured in `make bench`."""
    body: bytes = msgpack.packb({"queue_name": "miniflow.ingress", "args": [[{}] * 99_000]}, use_bin_type=True)
    return body


def test_a_body_of_many_small_containers_is_rejected_by_the_decode_budget() -> None:
    body = bomb()
    assert len(body) < codec.MAX_MESSAGE_BYTES
    assert rejection(body).code == Reason.LIMIT_EXCEEDED
    wide = msgpack.packb({"a": list(range(codec.MAX_ELEMENTS + 1))}, use_bin_type=True)
    assert rejection(wide).code == Reason.LIMIT_EXCEEDED
    fine = msgpack.packb({"a": [{}] * (codec.MAX_CONTAINERS - 10)}, use_bin_type=True)
    assert codec.unpack(fine)["a"][0] == {}
