from __future__ import annotations

import contextlib
import datetime as dt
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskfuture import codec
from taskfuture.codec import PayloadTooLargeError

ROUND_TRIP = [
    None,
    True,
    3,
    2.5,
    "text",
    [1, [2, 3]],
    {"nested": {"list": [1, 2]}},
    (1, 2),
    {1, 2, 3},
    frozenset({"a"}),
    dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    dt.datetime(2026, 1, 2, 3, 4, 5),
    dt.date(2026, 1, 2),
    dt.time(10, 30),
    dt.timedelta(days=1, seconds=2, microseconds=3),
    uuid.UUID("0190b2a4-5c1e-7d2f-9a3b-4c5d6e7f8091"),
    Decimal("10.005"),
    b"\x00\x01binary",
    {(1, 2): "tuple key", 3: "int key"},
    {"__tf__": "a key that looks like a tag"},
    math.inf,
]


@pytest.mark.parametrize("value", ROUND_TRIP, ids=repr)
def test_value_round_trips(value: Any) -> None:
    decoded = codec.decode(codec.encode(value))

    assert decoded == value
    assert type(decoded) is type(value)


def test_nan_round_trips() -> None:
    assert math.isnan(codec.decode(codec.encode(math.nan)))


def test_encoded_text_is_strict_json() -> None:
    import json

    text = codec.encode({"a": math.nan, "b": (1,)})

    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard constant {name}"))


def test_bad_value_names_its_path() -> None:
    with pytest.raises(TypeError, match=r"kwargs\['rows'\]\[3\]: object is not"):
        codec.encode_call([], {"rows": [1, 2, 3, object()]})


def test_bad_positional_argument_names_its_path() -> None:
    with pytest.raises(TypeError, match=r"args\[1\]\['x'\]"):
        codec.encode_call([1, {"x": {1, object}}], {})


def test_cycle_is_rejected() -> None:
    value: dict[str, Any] = {}
    value["self"] = value

    with pytest.raises(TypeError, match="cyclic"):
        codec.encode(value)


def test_shared_non_cyclic_value_is_accepted() -> None:
    shared = [1, 2]

    assert codec.decode(codec.encode([shared, shared])) == [[1, 2], [1, 2]]


def test_payload_over_limit_is_rejected() -> None:
    with pytest.raises(PayloadTooLargeError, match="over the limit of 100 bytes"):
        codec.encode_call(["x" * 200], {}, limit=100)


def test_unknown_tag_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown type tag 'pickle'"):
        codec.decode('{"__tf__": ["pickle", "payload"]}')


@pytest.mark.parametrize("text", ["", "{", "[]", '{"args": 1, "kwargs": {}}', "null"])
def test_malformed_payload_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        codec.decode_call(text)


def test_malformed_error_text_is_tolerated() -> None:
    info = codec.decode_error("not json")

    assert info.type_name == "UnreadableError"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(json_values)
def test_any_json_value_round_trips(value: Any) -> None:
    assert codec.decode(codec.encode(value)) == value


@given(st.text())
def test_decode_call_never_crashes_unexpectedly(text: str) -> None:
    with contextlib.suppress(ValueError):
        codec.decode_call(text)


def test_os_error_keeps_its_file_name() -> None:
    from taskfuture.remote import rebuild_exception

    try:
        open("/no/such/file/for/taskfuture")  # noqa: SIM115
    except OSError as exc:
        stored = codec.encode_exception(exc, "")

    rebuilt = rebuild_exception("0190b2a4-5c1e-7d2f-9a3b-4c5d6e7f8091", stored, {})

    assert isinstance(rebuilt, FileNotFoundError)
    assert rebuilt.filename == "/no/such/file/for/taskfuture"
    assert "/no/such/file/for/taskfuture" in str(rebuilt)


def test_lone_surrogate_round_trips_as_ascii() -> None:
    text = codec.encode_call(["\ud800 and ünïcode"], {})

    assert text.isascii()
    assert codec.decode_call(text) == (["\ud800 and ünïcode"], {})


def _nested(depth: int) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth - 1):
        inner.append([])
        inner = inner[0]
    return outer


def test_value_at_depth_limit_round_trips() -> None:
    value = _nested(codec.MAX_DEPTH)

    assert codec.decode(codec.encode(value)) == value


@pytest.mark.parametrize("depth", [codec.MAX_DEPTH + 1, 5000])
def test_deeper_value_names_the_limit(depth: int) -> None:
    with pytest.raises(
        TypeError, match=f"nested more than {codec.MAX_DEPTH} levels deep"
    ) as caught:
        codec.encode_call([_nested(depth)], {})

    assert str(caught.value).startswith("cannot encode args[0][0]")
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize(
    "text", ["[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000]
)
def test_deep_stored_text_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        codec.decode(text)
    with pytest.raises(ValueError, match="nested too deeply"):
        codec.decode_call('{"args": [' + text + '], "kwargs": {}}')

    assert codec.decode_error(text).type_name == "UnreadableError"
