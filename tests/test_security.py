"""What taskfuture never does: unpickle, eval, run unregistered names, leak passwords."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from taskfuture import ConfigurationError, Settings, StorageError, TaskFailedError, TaskService
from taskfuture.codec import encode_exception, make_error
from taskfuture.remote import rebuild_exception

SOURCE = Path(__file__).parents[1] / "src" / "taskfuture"
FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


def python_files() -> list[Path]:
    return sorted(SOURCE.rglob("*.py"))


@pytest.mark.parametrize("path", python_files(), ids=lambda path: path.name)
def test_source_has_no_pickle_or_eval(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {alias.name.split(".")[0] for alias in node.names}
            assert not names & FORBIDDEN_MODULES, f"{path}:{node.lineno} imports {names}"
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            assert module not in FORBIDDEN_MODULES, f"{path}:{node.lineno} imports {module}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in FORBIDDEN_CALLS, f"{path}:{node.lineno} calls {node.func.id}"


class Dangerous(Exception):
    constructed = False

    def __init__(self, *args: object) -> None:
        Dangerous.constructed = True
        super().__init__(*args)


def test_unregistered_type_named_in_storage_is_never_built() -> None:
    stored = encode_exception(Dangerous("payload"), "traceback text")
    Dangerous.constructed = False

    rebuilt = rebuild_exception("0190b2a4-5c1e-7d2f-9a3b-4c5d6e7f8091", stored, {})

    assert type(rebuilt) is TaskFailedError
    assert not Dangerous.constructed


def test_stored_module_name_is_never_imported() -> None:
    stored = make_error("os", "system", "rm -rf /")

    rebuilt = rebuild_exception("0190b2a4-5c1e-7d2f-9a3b-4c5d6e7f8091", stored, {})

    assert type(rebuilt) is TaskFailedError
    assert rebuilt.type_name == "os.system"


def test_builtin_non_exception_name_is_not_called() -> None:
    stored = make_error("builtins", "print", "hello")

    rebuilt = rebuild_exception("0190b2a4-5c1e-7d2f-9a3b-4c5d6e7f8091", stored, {})

    assert type(rebuilt) is TaskFailedError


def test_base_exception_is_not_rebuilt() -> None:
    stored = make_error("builtins", "SystemExit", "0")

    rebuilt = rebuild_exception("0190b2a4-5c1e-7d2f-9a3b-4c5d6e7f8091", stored, {})

    assert type(rebuilt) is TaskFailedError


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://user:s3cr3t-pw@127.0.0.1:1/test",
        "mysql://root:s3cr3t-pw@127.0.0.1:1/test",
        "redis://:s3cr3t-pw@127.0.0.1:1/0",
    ],
)
def test_password_never_in_errors_logs_or_reprs(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    texts = [repr(Settings(dsn=dsn))]
    try:
        service = TaskService(dsn, connect_timeout_s=1)
        texts.append(repr(service))
        texts.append(repr(service.storage.description))
        service.create_schema()
        service.status("0190b2a4-5c1e-7d2f-9a3b-4c5d6e7f8091")
    except (StorageError, ConfigurationError) as exc:
        texts.append(str(exc))
        texts.append(repr(exc))
        cause = exc.__cause__
        while cause is not None:
            texts.append(str(cause))
            cause = cause.__cause__
    texts.append(caplog.text)

    for text in texts:
        assert "s3cr3t-pw" not in text


def test_table_name_cannot_inject_sql() -> None:
    with pytest.raises(ConfigurationError, match="invalid table name"):
        TaskService("sqlite:///unused.db", table='tasks" ; DROP TABLE x; --')
