"""Every server setting in one place: defaults, environment variables, command-line flags.

Precedence is argument > command-line flag > ``PROGRESSISTA_*`` environment variable > default.
Nothing is read at import time: :meth:`ServerSettings.from_env` and :func:`parse_args` read the
environment they are given when they are called. This module only imports the standard library, so
the client can share it without pulling in the server's dependencies.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ENV_PREFIX", "ClientSettings", "ServerSettings", "SettingError", "parse_args"]

ENV_PREFIX = "PROGRESSISTA_"


class SettingError(ValueError):
    """A setting's value cannot be used; the message names the setting and the accepted form."""


_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2}
_NUMBER_WITH_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"15m"``, ``"2h"`` or ``"1d"``."""
    match = _NUMBER_WITH_UNIT.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _DURATION_UNITS:
        raise ValueError(f"{text!r} is not a duration; use seconds or a unit: 90, 90s, 15m, 2h, 1d")
    return float(match.group(1)) * _DURATION_UNITS[unit]


def parse_optional_duration(text: str) -> float | None:
    """Like :func:`parse_duration`, with ``off``/``none``/``0`` meaning "no limit"."""
    if text.strip().lower() in ("", "off", "none", "0"):
        return None
    return parse_duration(text)


def parse_optional_count(text: str) -> int | None:
    """A whole number, or ``auto`` (None): the server picks."""
    if text.strip().lower() in ("", "auto"):
        return None
    return int(text)


def parse_size(text: str) -> int:
    """Bytes from ``"1048576"``, ``"512KiB"`` or ``"1MiB"``."""
    match = _NUMBER_WITH_UNIT.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size; use bytes or a unit: 1048576, 512KiB, 1MiB")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_list(text: str) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


_EMPTY_TOKEN = "must not be empty; give a token, or leave the setting out to run without one"


def parse_token(text: str) -> str:
    """A token as given: never empty, which would switch auth on and accept an empty bearer."""
    if not text.strip():
        raise ValueError(_EMPTY_TOKEN)
    if text != text.strip():
        # Bearer tokens are compared stripped: such a token could never match.
        raise ValueError("must not begin or end with whitespace")
    return text


def parse_networks(text: str) -> tuple[str, ...]:
    """Comma-separated addresses and networks (``10.0.0.0/8, 192.0.2.7, 2001:db8::/32``)."""
    import ipaddress

    networks = []
    for part in parse_list(text):
        try:
            networks.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise ValueError(
                f"{part!r} is not an address or network; use 10.0.0.0/8, 192.0.2.7, 2001:db8::/32"
            ) from None
    return tuple(networks)


def _setting(
    default: Any,
    help: str,
    parse: Callable[[str], Any],
    *,
    choices: Sequence[str] | None = None,
    secret: bool = False,
) -> Any:
    """A dataclass field that also knows its flag, its variable and how to parse them."""
    return field(
        default=default,
        metadata={"help": help, "parse": parse, "choices": choices, "secret": secret},
    )


@dataclass(frozen=True)
class ServerSettings:
    """Everything `create_app` and ``python -m progressista.server`` can be told.

    Durations are in seconds. Each field is also a flag (``--stale-after``) and an environment
    variable (``PROGRESSISTA_STALE_AFTER``); the README's settings table lists them.
    """

    host: str = _setting("127.0.0.1", "interface to bind; 0.0.0.0 exposes the server", str)
    port: int = _setting(8000, "TCP port", int)
    stale_after: float = _setting(
        60.0, "an active task with no event for this long becomes stale", parse_duration
    )
    abandon_after: float = _setting(
        86400.0, "a stale task is removed after this much more silence", parse_duration
    )
    retention: float = _setting(
        86400.0, "completed and failed tasks are removed this long after closing", parse_duration
    )
    max_age: float | None = _setting(
        None,
        "remove any task this long after it was created (off by default)",
        parse_optional_duration,
    )
    cleanup_interval: float = _setting(
        1.0, "how often cleanup looks for expired tasks", parse_duration
    )
    broadcast_interval: float = _setting(
        0.025, "changes within this window go to viewers as one message", parse_duration
    )
    viewer_timeout: float = _setting(
        10.0, "a viewer that cannot take a message for this long is disconnected", parse_duration
    )
    heartbeat: float = _setting(30.0, "WebSocket ping interval", parse_duration)
    max_viewers: int = _setting(
        10_000, "most WebSocket viewers at once; more are refused with 503", int
    )
    read_timeout: float = _setting(
        15.0,
        "a request must arrive within this: its headers from their first byte, its body from "
        "the end of its headers; a slower one gets 408",
        parse_duration,
    )
    keepalive_timeout: float = _setting(
        75.0,
        "a connection with no request under way is closed after this (keep it above the "
        "idle timeout of a reverse proxy in front)",
        parse_duration,
    )
    max_connections: int | None = _setting(
        None,
        "most connections open at once; past it the connection idle the longest is closed "
        "(auto: what the file-descriptor limit allows)",
        parse_optional_count,
    )
    max_body: int = _setting(1024**2, "largest accepted POST /progress body", parse_size)
    max_batch: int = _setting(1000, "most events in one POST /progress", int)
    max_tasks: int = _setting(
        50_000, "most tasks stored; completed ones are evicted first, then new tasks get 429", int
    )
    write_token: str | None = _setting(
        None,
        "token required to POST /progress and to discard tasks (Authorization: Bearer)",
        parse_token,
        secret=True,
    )
    read_token: str | None = _setting(
        None,
        "token required for the dashboard, /tasks, /ws and /metrics (the write token reads too)",
        parse_token,
        secret=True,
    )
    max_token_failures: int = _setting(
        20,
        "wrong tokens a client address may send per minute; past that, its requests with a "
        "token get 429 until its budget refills",
        int,
    )
    allowed_origins: tuple[str, ...] = _setting(
        (),
        "extra origins whose pages may open /ws and send POST and DELETE (comma-separated)",
        parse_list,
    )
    allowed_hosts: tuple[str, ...] = _setting(
        (),
        "host names the server answers to (comma-separated); by default only loopback names "
        "when bound to loopback, any otherwise",
        parse_list,
    )
    trusted_proxies: tuple[str, ...] = _setting(
        (),
        "reverse proxies (addresses or networks, comma-separated) whose X-Forwarded-For or "
        "Forwarded names the client, for the access log and the per-client limits",
        parse_networks,
    )
    proxy_header: str = _setting(
        "x-forwarded-for",
        "the header the --trusted-proxies write the client's address in: x-forwarded-for or "
        "forwarded",
        str.lower,
        choices=("x-forwarded-for", "forwarded"),
    )
    store: str = _setting(
        "memory",
        "where tasks live: memory, or a Redis URL (redis://host:6379/0, rediss://, unix://) "
        "so they survive restarts and several servers share them",
        str,
    )
    redis_password: str | None = _setting(
        None, "the Redis password, if not in the --store URL", str, secret=True
    )
    redis_prefix: str = _setting(
        "progressista", "prefix of every Redis key (a hash tag: one Redis Cluster slot)", str
    )
    redis_stream_length: int = _setting(
        2000,
        "Redis change-stream entries kept: a server that falls further behind reloads",
        int,
    )
    log_level: str = _setting(
        "info", "logging level", str.lower, choices=("debug", "info", "warning", "error")
    )
    access_log: str = _setting(
        "quiet",
        "which requests are logged: all, quiet (all but accepted POST /progress) or off",
        str.lower,
        choices=("all", "quiet", "off"),
    )

    def __post_init__(self) -> None:
        positive = (
            "stale_after",
            "abandon_after",
            "retention",
            "cleanup_interval",
            "viewer_timeout",
            "heartbeat",
            "read_timeout",
            "keepalive_timeout",
            "max_body",
            "max_batch",
            "max_tasks",
            "max_viewers",
            "max_token_failures",
            "redis_stream_length",
        )
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise SettingError(f"{flag_name(name)} must be a positive number, not {value!r}")
        if self.broadcast_interval < 0 or not math.isfinite(self.broadcast_interval):
            raise SettingError(
                f"broadcast_interval must be a number ≥ 0, not {self.broadcast_interval!r}"
            )
        if self.max_connections is not None and self.max_connections < 1:
            raise SettingError(
                f"--max-connections must be a whole number ≥ 1 or auto, not {self.max_connections}"
            )
        if self.max_age is not None and not self.max_age > 0:
            raise SettingError(f"max_age must be positive or None, not {self.max_age!r}")
        if self.store != "memory" and not self.store.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise SettingError(
                f"store must be 'memory' or a Redis URL (redis://host:6379/0), not {self.store!r}"
            )
        for name in ("write_token", "read_token"):
            token = getattr(self, name)
            if token is not None and not token.strip():
                raise SettingError(f"{flag_name(name)} {_EMPTY_TOKEN}")
        if not self.redis_prefix or any(c in self.redis_prefix for c in "{}"):
            raise SettingError("redis_prefix must be non-empty and without braces")
        if not 0 <= self.port <= 65535:
            raise SettingError(f"port must be between 0 and 65535, not {self.port}")
        for name in ("log_level", "access_log", "proxy_header"):
            choices = _field(name).metadata["choices"]
            if getattr(self, name) not in choices:
                raise SettingError(f"{flag_name(name)} must be one of {', '.join(choices)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> ServerSettings:
        """Settings from ``PROGRESSISTA_*`` variables, then ``overrides`` on top."""
        values: dict[str, Any] = {}
        for setting in dataclasses.fields(cls):
            variable = env_name(setting.name)
            # An empty variable counts as unset, except for a token: there it is a token that
            # went missing (PROGRESSISTA_WRITE_TOKEN=$UNSET), and auth must not quietly go off.
            if variable in environ and (
                environ[variable] != "" or setting.metadata["parse"] is parse_token
            ):
                values[setting.name] = _parse(setting, environ[variable], variable)
        values.update(overrides)
        return cls(**values)

    def describe(self) -> dict[str, Any]:
        """The settings as a loggable dict: secrets show only whether they are set, and the
        store URL without its password."""
        described = {
            f.name: ("<set>" if getattr(self, f.name) else None)
            if f.metadata["secret"]
            else getattr(self, f.name)
            for f in dataclasses.fields(self)
        }
        described["store"] = redact_url(self.store)
        return described


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and messages)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{netloc}", parts.path, parts.query, ""))


def env_name(setting: str) -> str:
    """``stale_after`` → ``PROGRESSISTA_STALE_AFTER``."""
    return ENV_PREFIX + setting.upper()


def flag_name(setting: str) -> str:
    """``stale_after`` → ``--stale-after``."""
    return "--" + setting.replace("_", "-")


def _field(name: str) -> dataclasses.Field[Any]:
    return next(f for f in dataclasses.fields(ServerSettings) if f.name == name)


def _parse(setting: dataclasses.Field[Any], text: str, source: str) -> Any:
    try:
        return setting.metadata["parse"](text)
    except ValueError as error:
        raise SettingError(f"{source}: {error}") from None


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> ServerSettings:
    """Settings for ``python -m progressista.server``: flags win over the environment.

    Raises :class:`SettingError` naming the flag or variable that could not be used.
    """
    import argparse  # here, not at the top: the client imports this module and needs no CLI

    parser = argparse.ArgumentParser(
        prog="python -m progressista.server",
        description="Serve the Progressista dashboard and ingest API.",
        epilog="Every flag can also be given as an environment variable, e.g. "
        "--stale-after as PROGRESSISTA_STALE_AFTER. Durations take s, m, h or d; sizes KiB "
        "or MiB.",
    )
    for setting in dataclasses.fields(ServerSettings):
        default = setting.default
        shown = "unset" if setting.metadata["secret"] or default in (None, ()) else default
        parser.add_argument(
            flag_name(setting.name),
            dest=setting.name,
            metavar=setting.name.upper(),
            default=None,
            help=f"{setting.metadata['help']} (env {env_name(setting.name)}; default {shown})",
        )
    namespace = parser.parse_args(list(argv))
    overrides = {
        setting.name: _parse(setting, getattr(namespace, setting.name), flag_name(setting.name))
        for setting in dataclasses.fields(ServerSettings)
        if getattr(namespace, setting.name) is not None
    }
    return ServerSettings.from_env(environ, **overrides)


DEFAULT_URL = "http://127.0.0.1:8000"


def _json_object(text: str, source: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(text)
    except ValueError as error:
        raise SettingError(f"{source} must be a JSON object: {error}") from None
    if not isinstance(value, dict):
        raise SettingError(f'{source} must be a JSON object, like {{"team": "data"}}')
    return value


@dataclass(frozen=True)
class ClientSettings:
    """How a worker's bars reach the server (DESIGN §5).

    Read when a bar is built, from arguments first, then ``PROGRESSISTA_URL``,
    ``PROGRESSISTA_TOKEN``, ``PROGRESSISTA_PUSH_EVERY``, ``PROGRESSISTA_FLUSH_TIMEOUT``,
    ``PROGRESSISTA_KEEPALIVE``, ``PROGRESSISTA_JOB`` and ``PROGRESSISTA_META``.
    """

    #: The server's base URL.
    url: str = DEFAULT_URL
    #: The server's write token, sent as ``Authorization: Bearer``.
    token: str | None = None
    #: Seconds between batches; the state of every bar that changed goes in the next one.
    push_every: float = 0.5
    #: At interpreter exit, how long pending state may take to reach the server.
    flush_timeout: float = 2.0
    #: Open bars that did not change are re-sent this often, so the server can tell a slow bar
    #: from a dead worker (the server's ``stale_after`` defaults to 60 s).
    keepalive: float = 15.0
    #: The job label every bar carries in ``meta``; groups a run's bars on the dashboard.
    job: str | None = None
    #: Labels every bar carries (``PROGRESSISTA_META``, a JSON object), under the bar's own.
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise SettingError(
                f"the server URL must start with http:// or https://, not {self.url!r}"
            )
        for name in ("push_every", "flush_timeout", "keepalive"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise SettingError(f"{name} must be a positive number of seconds, not {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> ClientSettings:
        """Settings from the environment, with ``overrides`` (None meaning "not given") on top."""
        values: dict[str, Any] = {}
        for setting in dataclasses.fields(cls):
            text = environ.get(env_name(setting.name), "")
            if text == "":
                continue
            if setting.name in ("url", "token", "job"):
                values[setting.name] = text.rstrip("/") if setting.name == "url" else text
            elif setting.name == "meta":
                values["meta"] = _json_object(text, env_name("meta"))
            else:
                try:
                    values[setting.name] = parse_duration(text)
                except ValueError as error:
                    raise SettingError(f"{env_name(setting.name)}: {error}") from None
        values.update({name: value for name, value in overrides.items() if value is not None})
        if "url" in values:
            values["url"] = str(values["url"]).rstrip("/")
        return cls(**values)
