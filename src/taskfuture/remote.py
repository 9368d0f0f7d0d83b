"""Rebuild a task's exception on the caller's side from its stored description.

Only builtin exception types and types the application registered are ever
instantiated; any other name in storage becomes a plain TaskFailedError, so
stored data can never make the caller import or build an arbitrary class.
"""

from __future__ import annotations

import builtins
import logging
from typing import Any

from taskfuture import codec, errors
from taskfuture.models import ErrorInfo

logger = logging.getLogger(__name__)

#: Library errors a worker may store; rebuilt as themselves.
_LIBRARY_FAILURES: dict[str, type[errors.TaskFailedError]] = {
    "taskfuture.errors.DamagedRecordError": errors.DamagedRecordError,
    "taskfuture.errors.WorkerLostError": errors.WorkerLostError,
    "taskfuture.errors.TaskTimeLimitError": errors.TaskTimeLimitError,
    "taskfuture.errors.TaskFailedError": errors.TaskFailedError,
}


def exception_key(kind: type[BaseException]) -> str:
    """Return the name an exception type is stored and registered under."""
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


_REMOTE_TYPES: dict[type[Exception], type[Exception] | None] = {}


def _remote_type(base: type[Exception]) -> type[Exception] | None:
    """Return a subclass of ``base`` that is also a TaskFailedError, or None if impossible."""
    if issubclass(base, errors.TaskFailedError):
        return base
    if base not in _REMOTE_TYPES:
        try:
            _REMOTE_TYPES[base] = type(
                base.__name__,
                (base, errors.TaskFailedError),
                {"__module__": base.__module__, "__qualname__": base.__qualname__},
            )
        except TypeError:
            _REMOTE_TYPES[base] = None
    return _REMOTE_TYPES[base]


def _allowed_type(
    info: ErrorInfo, registered: dict[str, type[Exception]]
) -> type[Exception] | None:
    if info.module == "builtins":
        candidate = getattr(builtins, info.type_name, None)
        if isinstance(candidate, type) and issubclass(candidate, Exception):
            return candidate
        return None
    return registered.get(info.qualified_name)


def rebuild_exception(
    task_id: str, error_text: str, registered: dict[str, type[Exception]]
) -> BaseException:
    """Return the exception the caller should see for a stored task error."""
    info = codec.decode_error(error_text)
    library_type = _LIBRARY_FAILURES.get(info.qualified_name)
    if library_type is not None:
        failure = library_type.create(task_id, info.qualified_name, info.message, info.traceback)
        return _annotate(failure, info)
    exc = _instantiate(info, _allowed_type(info, registered))
    if exc is None:
        exc = errors.TaskFailedError.create(
            task_id, info.qualified_name, info.message, info.traceback
        )
    else:
        exc.task_id = task_id  # type: ignore[attr-defined]
        exc.type_name = info.qualified_name  # type: ignore[attr-defined]
        exc.message = info.message  # type: ignore[attr-defined]
        exc.remote_traceback = info.traceback  # type: ignore[attr-defined]
    return _annotate(exc, info)


def _instantiate(info: ErrorInfo, base: type[Exception] | None) -> Exception | None:
    if base is None:
        return None
    kind = _remote_type(base)
    if kind is None:
        return None
    try:
        args: list[Any] = codec.decode(info.args) if info.args is not None else [info.message]
        if not isinstance(args, list):
            args = [info.message]
        return kind(*args)
    except Exception as exc:
        logger.debug("Cannot rebuild %s(%r): %s", info.qualified_name, info.args, exc)
        return None


def _annotate(exc: BaseException, info: ErrorInfo) -> BaseException:
    if info.traceback:
        exc.add_note(
            f"Remote traceback (the task raised this in the worker):\n{info.traceback.rstrip()}"
        )
    return exc
