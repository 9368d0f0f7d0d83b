"""JSON encoding of task arguments, results and errors, with tagged extra types.

Plain JSON values pass through unchanged. ``datetime``, ``date``, ``time``,
``UUID``, ``Decimal``, ``bytes``, ``tuple``, ``set``, ``frozenset`` and dicts
whose keys are not all strings are written as a one-key object
``{"__tf__": [TAG, VALUE]}`` and rebuilt as themselves. Anything else raises
:class:`TypeError` naming the path of the bad value, such as
``kwargs['rows'][3]``. No pickle: decoding only ever builds these types.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from taskfuture.models import ErrorInfo

TAG = "__tf__"
#: Deepest nesting of lists, tuples, sets and dicts that a value may have. Python's
#: recursion limit would stop a deeper one anyway, with a RecursionError and no path.
MAX_DEPTH = 100

# ASCII output escapes every non-ASCII character, lone surrogates included, so
# any Python string can be stored by every engine and decoded back.
_encode_json = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode
_decode_json = json.JSONDecoder().decode


_TOO_DEEP = (
    "the stored value is nested too deeply to decode; taskfuture writes at most "
    f"{MAX_DEPTH} levels, so something else wrote it"
)


class PayloadTooLargeError(ValueError):
    """An encoded payload or result is larger than the configured limit."""


def _tagged(tag: str, value: Any) -> dict[str, Any]:
    return {TAG: [tag, value]}


def _to_json(value: Any, path: str, active: set[int]) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else _tagged("float", repr(value))
    if kind is list or kind is tuple or kind is set or kind is frozenset:
        marker = id(value)
        if marker in active:
            raise TypeError(f"cannot encode {path}: it contains itself (a cyclic reference)")
        _check_depth(path, active)
        active.add(marker)
        items = value if kind is list or kind is tuple else _sorted_items(value)
        encoded = [_to_json(item, f"{path}[{index}]", active) for index, item in enumerate(items)]
        active.discard(marker)
        if kind is list:
            return encoded
        return _tagged(kind.__name__, encoded)
    if kind is dict:
        return _dict_to_json(value, path, active)
    return _scalar_to_json(value, path)


def _check_depth(path: str, active: set[int]) -> None:
    """Raise TypeError for a container deeper than MAX_DEPTH; ``active`` contains its parents."""
    if len(active) >= MAX_DEPTH:
        short_path = path if len(path) <= 80 else f"{path[:60]}...{path[-17:]}"
        raise TypeError(
            f"cannot encode {short_path}: it is nested more than {MAX_DEPTH} levels deep; "
            "flatten the value or pass a reference to where the data is kept"
        )


def _sorted_items(items: set[Any] | frozenset[Any]) -> list[Any]:
    try:
        return sorted(items)
    except TypeError:
        return list(items)


def _dict_to_json(value: dict[Any, Any], path: str, active: set[int]) -> Any:
    marker = id(value)
    if marker in active:
        raise TypeError(f"cannot encode {path}: it contains itself (a cyclic reference)")
    _check_depth(path, active)
    active.add(marker)
    try:
        if all(type(key) is str for key in value) and TAG not in value:
            return {key: _to_json(item, f"{path}[{key!r}]", active) for key, item in value.items()}
        pairs = [
            [
                _to_json(key, f"{path}.keys()[{index}]", active),
                _to_json(item, f"{path}[{key!r}]", active),
            ]
            for index, (key, item) in enumerate(value.items())
        ]
        return _tagged("dict", pairs)
    finally:
        active.discard(marker)


def _scalar_to_json(value: Any, path: str) -> Any:
    if isinstance(value, dt.datetime):
        return _tagged("datetime", value.isoformat())
    if isinstance(value, dt.date):
        return _tagged("date", value.isoformat())
    if isinstance(value, dt.time):
        return _tagged("time", value.isoformat())
    if isinstance(value, dt.timedelta):
        return _tagged("timedelta", [value.days, value.seconds, value.microseconds])
    if isinstance(value, uuid.UUID):
        return _tagged("uuid", str(value))
    if isinstance(value, decimal.Decimal):
        return _tagged("decimal", str(value))
    if isinstance(value, bytes | bytearray | memoryview):
        return _tagged("bytes", base64.b64encode(bytes(value)).decode("ascii"))
    if isinstance(value, bool | int | str):
        # Subclasses such as IntEnum or StrEnum travel as their plain value.
        return int(value) if isinstance(value, int) else str(value)
    if isinstance(value, float):
        return _to_json(float(value), path, set())
    if isinstance(value, Mapping):
        return _dict_to_json(dict(value), path, set())
    if isinstance(value, Sequence):
        return _to_json(list(value), path, set())
    raise TypeError(
        f"cannot encode {path}: {type(value).__qualname__} is not JSON-serializable; "
        "pass plain JSON values, datetime, date, time, timedelta, UUID, Decimal, bytes, "
        "tuple, set or dict, or convert the value first"
    )


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "float": float,
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": lambda parts: dt.timedelta(days=parts[0], seconds=parts[1], microseconds=parts[2]),
    "uuid": uuid.UUID,
    "decimal": decimal.Decimal,
    "bytes": base64.b64decode,
    "dict": lambda pairs: {_freeze(key): item for key, item in pairs},
}


def _freeze(key: Any) -> Any:
    """Make a decoded dict key hashable again (lists come back from JSON arrays)."""
    if isinstance(key, list):
        return tuple(_freeze(item) for item in key)
    return key


def _from_json(value: Any) -> Any:
    kind = type(value)
    if kind is list:
        return [_from_json(item) for item in value]
    if kind is not dict:
        return value
    if len(value) == 1 and TAG in value:
        tag, inner = value[TAG]
        decoder = _DECODERS.get(tag)
        if decoder is None:
            raise ValueError(f"cannot decode stored value: unknown type tag {tag!r}")
        return decoder(_from_json(inner))
    return {key: _from_json(item) for key, item in value.items()}


def encode(value: Any, path: str = "value") -> str:
    """Encode ``value`` as JSON text; raise TypeError naming the path of a bad value."""
    return str(_encode_json(_to_json(value, path, set())))


def decode(text: str) -> Any:
    """Decode JSON text made by :func:`encode`; raise ValueError on malformed text."""
    try:
        return _from_json(_decode_json(text))
    except RecursionError:
        raise ValueError(_TOO_DEEP) from None


def encode_call(args: Sequence[Any], kwargs: Mapping[str, Any], limit: int | None = None) -> str:
    """Encode a task's arguments as ``{"args": [...], "kwargs": {...}}`` JSON text."""
    for key in kwargs:
        if type(key) is not str:
            raise TypeError(f"cannot encode kwargs: keyword names must be str, not {key!r}")
    active: set[int] = set()
    encoded_args = [_to_json(item, f"args[{index}]", active) for index, item in enumerate(args)]
    encoded_kwargs = {
        key: _to_json(item, f"kwargs[{key!r}]", active) for key, item in kwargs.items()
    }
    text = str(_encode_json({"args": encoded_args, "kwargs": encoded_kwargs}))
    check_size(text, "arguments", limit)
    return text


def decode_call(text: str, limit: int | None = None) -> tuple[list[Any], dict[str, Any]]:
    """Decode a payload made by :func:`encode_call`; raise ValueError when malformed.

    ``limit`` bounds the stored text as :func:`encode_call` bounds new payloads,
    so a payload written into storage by other means cannot be bigger.
    """
    check_size(text, "arguments", limit)
    try:
        data = _decode_json(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"stored arguments are not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError(_TOO_DEEP) from None
    if not isinstance(data, dict):
        raise ValueError("stored arguments must be a JSON object with 'args' and 'kwargs'")
    args = data.get("args", [])
    kwargs = data.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError("stored arguments have the wrong shape: expected a list and an object")
    try:
        return _from_json(args), _from_json(kwargs)
    except (TypeError, ValueError, KeyError, IndexError, decimal.InvalidOperation) as exc:
        raise ValueError(f"stored arguments cannot be decoded: {exc}") from None
    except RecursionError:
        raise ValueError(_TOO_DEEP) from None


def check_size(text: str, what: str, limit: int | None) -> None:
    """Raise PayloadTooLargeError when ``text`` is over ``limit`` bytes in UTF-8."""
    if limit is None or len(text) * 4 <= limit:
        return
    size = len(text.encode("utf-8"))
    if size > limit:
        raise PayloadTooLargeError(
            f"encoded {what} are {size} bytes, over the limit of {limit} bytes; "
            "store large data elsewhere and pass a reference, or raise max_payload_bytes"
        )


def encode_exception(exc: BaseException, traceback_text: str) -> str:
    """Encode an exception as JSON text: type, message, traceback and, if possible, args."""
    kind = type(exc)
    values = list(exc.args)
    if isinstance(exc, OSError) and exc.filename is not None:
        # OSError keeps the file names outside args; its constructor takes them back
        # as (errno, strerror, filename, winerror, filename2).
        values = [exc.errno, exc.strerror, exc.filename]
        if exc.filename2 is not None:
            values += [None, exc.filename2]
    try:
        args: str | None = encode(values, "exception args")
    except (TypeError, ValueError, RecursionError):
        args = None
    data = {
        "module": kind.__module__,
        "type": kind.__qualname__,
        "message": str(exc),
        "traceback": traceback_text,
        "args": args,
    }
    return str(_encode_json(data))


def decode_error(text: str) -> ErrorInfo:
    """Decode an error made by :func:`encode_exception`, tolerating damaged records."""
    try:
        data = _decode_json(text)
    except (TypeError, json.JSONDecodeError, RecursionError):
        return ErrorInfo(
            "", "UnreadableError", f"the stored error is not valid JSON: {text[:200]!r}"
        )
    if not isinstance(data, dict):
        return ErrorInfo(
            "", "UnreadableError", f"the stored error has the wrong shape: {text[:200]!r}"
        )
    args = data.get("args")
    return ErrorInfo(
        module=str(data.get("module", "")),
        type_name=str(data.get("type", "Exception")),
        message=str(data.get("message", "")),
        traceback=str(data.get("traceback", "")),
        args=args if isinstance(args, str) else None,
    )


def make_error(module: str, type_name: str, message: str, traceback_text: str = "") -> str:
    """Encode an error raised by the library itself rather than by the task."""
    data = {"module": module, "type": type_name, "message": message, "traceback": traceback_text}
    return str(_encode_json({**data, "args": encode([message])}))
