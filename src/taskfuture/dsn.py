"""DSN parsing, password masking and the registry from DSN scheme to backend."""

from __future__ import annotations

import importlib
import re
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING

from taskfuture.errors import ConfigurationError

if TYPE_CHECKING:
    from taskfuture.backends.base import TaskStorage
    from taskfuture.config import Settings

#: Scheme (before any ``+driver``) -> "module:factory" of the backend, imported lazily.
BACKENDS: dict[str, str] = {
    "memory": "taskfuture.backends.memory:MemoryStorage",
    "sqlite": "taskfuture.backends.sql:SQLStorage",
    "postgresql": "taskfuture.backends.sql:SQLStorage",
    "postgres": "taskfuture.backends.sql:SQLStorage",
    "mysql": "taskfuture.backends.sql:SQLStorage",
    "mariadb": "taskfuture.backends.sql:SQLStorage",
    "redis": "taskfuture.backends.redis:RedisStorage",
    "rediss": "taskfuture.backends.redis:RedisStorage",
}

#: Scheme -> the pip extra that installs its driver.
EXTRAS: dict[str, str] = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "redis": "redis",
    "rediss": "redis",
}

_PASSWORD = re.compile(r"(?P<head>^[a-zA-Z][\w+.-]*://[^:/@]*:)(?P<password>[^@]*)(?P<tail>@)")


def mask_password(dsn: str) -> str:
    """Return ``dsn`` with any password replaced by ``***``."""
    masked = _PASSWORD.sub(r"\g<head>***\g<tail>", dsn)
    parts = urllib.parse.urlsplit(masked) if "://" in masked else None
    if parts is None or not parts.query:
        return masked
    query = [
        (key, "***" if key.lower() in ("password", "passwd", "pwd") else value)
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, safe="*")))


def scheme_of(dsn: str) -> str:
    """Return the base scheme of ``dsn`` (``postgresql+psycopg://`` gives ``postgresql``)."""
    if not isinstance(dsn, str) or "://" not in dsn:
        raise ConfigurationError(
            f"invalid DSN {mask_password(str(dsn))!r}: expected SCHEME://..., for example "
            f"sqlite:///taskfuture.db; known schemes: {', '.join(sorted(BACKENDS))}"
        )
    scheme = dsn.split("://", 1)[0].lower()
    base = scheme.split("+", 1)[0]
    if base not in BACKENDS:
        raise ConfigurationError(
            f"unknown DSN scheme {scheme!r} in {mask_password(dsn)!r}; "
            f"known schemes: {', '.join(sorted(BACKENDS))}"
        )
    return base


def open_storage(settings: Settings) -> TaskStorage:
    """Build the backend that ``settings.dsn`` names, importing it only now."""
    scheme = scheme_of(settings.dsn)
    module_name, _, attr = BACKENDS[scheme].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = EXTRAS.get(scheme, "all")
        raise ConfigurationError(
            f"the {scheme} backend needs a driver that is not installed ({exc}); "
            f"install it with: pip install 'taskfuture[{extra}]'"
        ) from exc
    factory: Callable[[Settings], TaskStorage] = getattr(module, attr)
    return factory(settings)
