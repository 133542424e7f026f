"""Every setting, server and client, in one place: defaults, variables, command-line flags.

Precedence is argument > command-line flag > ``PROGRESSISTA_*`` environment variable > default.
Nothing is read at import time: :meth:`ServerSettings.from_env` and :func:`parse_args` read the
environment they are given when they are called. A value that cannot be used raises
:class:`SettingError` naming where it came from: the flag or the variable, where it is parsed (the
only place that knows which), or the keyword argument of a value given in Python. This module
only imports the standard library, so the client can share it without pulling in the server's
dependencies.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "ENV_PREFIX",
    "ClientSettings",
    "ServerSettings",
    "SettingError",
    "ViewerSettings",
    "parse_args",
    "split_notify_entry",
    "url_problem",
]

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


def parse_int(text: str) -> int:
    """A whole number: ``"8000"``."""
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


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


def parse_lines(text: str) -> tuple[str, ...]:
    """One value a line (or several flags, joined by newlines), blanks dropped."""
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def parse_lines_from_file(path: str) -> tuple[str, ...]:
    """The lines of a file, blanks and ``#`` comments dropped (for secrets kept out of flags)."""
    try:
        with open(path, encoding="utf-8") as lines:
            return tuple(
                line.strip() for line in lines if line.strip() and not line.startswith("#")
            )
    except OSError as error:
        raise ValueError(f"cannot read {path!r}: {error.strerror}") from None


#: What a setting's value must be, as a problem to report, or None when the value is fine.
Check = Callable[[Any], str | None]


def _more_than_zero(value: Any) -> str | None:
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        return None
    return "must be more than 0"


def _zero_or_more(value: Any) -> str | None:
    if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
        return None
    return "must be 0 or more"


def _off_or_more_than_zero(value: Any) -> str | None:
    return None if value is None else _more_than_zero(value)


def _port(value: Any) -> str | None:
    return None if isinstance(value, int) and 0 <= value <= 65535 else "must be 0 to 65535"


def _store(value: Any) -> str | None:
    text = str(value)
    if text.startswith(("redis://", "rediss://")):
        # redis-py ignores a database it cannot read as a number (redis://host/abc is db 0,
        # maybe another deployment's keys): said here instead.
        path = urlsplit(text).path.strip("/")
        if path and not path.isdigit():
            return f"names database {path!r}: a database is a number (redis://host:6379/0)"
        return None
    if value == "memory" or text.startswith("unix://"):
        return None
    return "must be 'memory' or a Redis URL (redis://host:6379/0)"


def _redis_prefix(value: Any) -> str | None:
    if value and not any(c in value for c in "{}"):
        return None
    return "must be non-empty and without braces"


def _one_of(choices: Sequence[str]) -> Check:
    words = f"{', '.join(choices[:-1])} or {choices[-1]}"

    def check(value: Any) -> str | None:
        return None if value in choices else f"must be {words}"

    return check


def _each_one_of(choices: Sequence[str]) -> Check:
    words = f"{', '.join(choices[:-1])} or {choices[-1]}"

    def check(value: Any) -> str | None:
        return None if all(item in choices for item in value) else f"must be a list of {words}"

    return check


def _token(value: Any) -> str | None:
    if value is None or (
        isinstance(value, str)
        and value.strip()
        and value == value.strip()
        and value.isprintable()
        and value.isascii()
    ):
        return None
    # (A newline, a tab or a "€" can never be sent in an Authorization header: no client
    # could write.)
    return "must be a non-empty token of printable ASCII characters without surrounding whitespace"


def split_notify_entry(entry: str) -> tuple[tuple[str, ...] | None, str]:
    """A ``--notify`` entry, ``"slack://…"`` or ``"jobs=etl-*,ml-* slack://…"``, as its job
    globs (None without ``jobs=``; empty ones left out) and its URL."""
    entry = entry.strip()
    if not entry.startswith("jobs="):
        return None, entry
    spec, _, url = entry.partition(" ")
    return tuple(glob for glob in spec[len("jobs=") :].split(",") if glob), url.strip()


def _notify_entries(value: Any) -> str | None:
    for entry in value:
        globs, url = split_notify_entry(entry)
        if globs is not None and (not globs or not url):
            # ("jobs= slack://..." dropped its empty globs: it meant every job.)
            return "'jobs=' takes globs separated by commas, then a space and the URL"
    return None


def _public_url(value: Any) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.netloc:
        return None
    return "must be the dashboard's address, such as https://progress.example.com"


def _interface(value: Any) -> str | None:
    # An empty host makes asyncio bind every interface: an exposure nobody meant to ask for.
    if isinstance(value, str) and value.strip() and value == value.strip():
        return None
    return "must name an interface: 127.0.0.1 (this machine), or 0.0.0.0 for every one"


def _off_or_at_least_one(value: Any) -> str | None:
    if value is None or (isinstance(value, int) and value >= 1):
        return None
    return "must be a whole number of at least 1, or auto"


def _setting(
    default: Any,
    help: str,
    parse: Callable[[str], Any],
    *,
    check: Check | None = None,
    secret: bool = False,
    repeatable: bool = False,
    shown_default: str | None = None,
) -> Any:
    """A dataclass field that also knows its flag, its variable, how to parse them and what
    a value must be (``check``).

    A ``repeatable`` flag may be given several times; its variable holds one value a line.
    ``shown_default`` is what ``--help`` calls the default when it is not a value (``auto``).
    """
    return field(
        default=default,
        metadata={
            "help": help,
            "parse": parse,
            "check": check,
            "secret": secret,
            "repeatable": repeatable,
            "shown_default": shown_default,
        },
    )


@dataclass(frozen=True)
class ServerSettings:
    """Everything `create_app` and ``python -m progressista.server`` can be told.

    Durations are in seconds. Each field is also a flag (``--stale-after``) and an environment
    variable (``PROGRESSISTA_STALE_AFTER``); the README's settings table lists them.
    """

    host: str = _setting(
        "127.0.0.1", "interface to bind; 0.0.0.0 exposes the server", str, check=_interface
    )
    port: int = _setting(8000, "TCP port", parse_int, check=_port)
    stale_after: float = _setting(
        60.0,
        "an active task with no event for this long becomes stale",
        parse_duration,
        check=_more_than_zero,
    )
    abandon_after: float = _setting(
        86400.0,
        "a stale task is removed after this much more silence",
        parse_duration,
        check=_more_than_zero,
    )
    retention: float = _setting(
        86400.0,
        "completed and failed tasks are removed this long after closing",
        parse_duration,
        check=_more_than_zero,
    )
    max_age: float | None = _setting(
        None,
        "remove any task this long after it was created (off by default)",
        parse_optional_duration,
        check=_off_or_more_than_zero,
    )
    cleanup_interval: float = _setting(
        1.0, "how often cleanup looks for expired tasks", parse_duration, check=_more_than_zero
    )
    broadcast_interval: float = _setting(
        0.025,
        "changes within this window go to viewers as one message",
        parse_duration,
        check=_zero_or_more,
    )
    viewer_timeout: float = _setting(
        10.0,
        "a viewer (or a GET /tasks reader) that takes no data for this long is disconnected",
        parse_duration,
        check=_more_than_zero,
    )
    heartbeat: float = _setting(
        30.0, "WebSocket ping interval", parse_duration, check=_more_than_zero
    )
    job_stall_after: float = _setting(
        300.0,
        "a job whose open bars have not advanced for this long is stalled",
        parse_duration,
        check=_more_than_zero,
    )
    job_gap: float = _setting(
        10.0,
        "a job whose bars have all ended, with no size announced and no progressista run "
        "heading it, is completed once no new bar has come for this long",
        parse_duration,
        check=_zero_or_more,
    )
    job_retention: float = _setting(
        7 * 86400.0,
        "finished jobs stay listed this long after they end",
        parse_duration,
        check=_more_than_zero,
    )
    max_jobs: int = _setting(
        1000,
        "most job runs listed; the oldest finished go first",
        parse_int,
        check=_more_than_zero,
    )
    metrics_jobs: int = _setting(
        100,
        "jobs with gauges in /metrics, the most recently updated",
        parse_int,
        check=_zero_or_more,
    )
    max_viewers: int = _setting(
        10_000,
        "most WebSocket viewers at once; more are refused with 503",
        parse_int,
        check=_more_than_zero,
    )
    max_body: int = _setting(
        1024**2, "largest accepted POST /progress body", parse_size, check=_more_than_zero
    )
    max_batch: int = _setting(
        1000, "most events in one POST /progress", parse_int, check=_more_than_zero
    )
    read_timeout: float = _setting(
        15.0,
        "a request must arrive within this: its headers from their first byte, its body from "
        "the end of its headers; a slower one gets 408",
        parse_duration,
        check=_more_than_zero,
    )
    keepalive_timeout: float = _setting(
        75.0,
        "a connection with no request under way is closed after this (keep it above the "
        "idle timeout of a reverse proxy in front)",
        parse_duration,
        check=_more_than_zero,
    )
    max_connections: int | None = _setting(
        None,
        "most connections open at once; past it the connection idle the longest is closed "
        "(auto: what the file-descriptor limit allows)",
        parse_optional_count,
        check=_off_or_at_least_one,
        shown_default="auto",
    )
    max_tasks: int = _setting(
        50_000,
        "most tasks stored; completed ones are evicted first, then new tasks get 429",
        parse_int,
        check=_more_than_zero,
    )
    write_token: str | None = _setting(
        None,
        "token required to POST /progress and to discard tasks (Authorization: Bearer)",
        parse_token,
        check=_token,
        secret=True,
    )
    read_token: str | None = _setting(
        None,
        "token required for the dashboard, /tasks, /ws and /metrics (the write token reads too)",
        parse_token,
        check=_token,
        secret=True,
    )
    max_token_failures: int = _setting(
        20,
        "wrong tokens a client address may send per minute; past that, its requests with a "
        "token get 429 until its budget refills",
        parse_int,
        check=_more_than_zero,
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
        check=_one_of(("x-forwarded-for", "forwarded")),
    )
    store: str = _setting(
        "memory",
        "where tasks live: memory, or a Redis URL (redis://host:6379/0, rediss://, unix://) "
        "so they survive restarts and several servers share them",
        str,
        check=_store,
    )
    redis_password: str | None = _setting(
        None, "the Redis password, if not in the --store URL", str, secret=True
    )
    redis_prefix: str = _setting(
        "progressista",
        "prefix of every Redis key (a hash tag: one Redis Cluster slot)",
        str,
        check=_redis_prefix,
    )
    redis_stream_length: int = _setting(
        2000,
        "Redis change-stream entries kept: a server that falls further behind reloads",
        parse_int,
        check=_more_than_zero,
    )
    redis_stream_bytes: int = _setting(
        128 * 1024**2,
        "most memory the change stream may take in Redis (entries are trimmed past it, or past "
        "--redis-stream-length, whichever comes first)",
        parse_size,
        check=_more_than_zero,
    )
    notify: tuple[str, ...] = _setting(
        (),
        "where alerts go: an Apprise URL, optionally after 'jobs=GLOB[,GLOB] ' (repeat the "
        "flag, or one a line in the variable)",
        parse_lines,
        check=_notify_entries,
        secret=True,
        repeatable=True,
    )
    notify_file: tuple[str, ...] = _setting(
        (),
        "a file of more --notify entries, one a line (keeps their secrets out of the process list)",
        parse_lines_from_file,
        check=_notify_entries,
        secret=True,
    )
    notify_on: tuple[str, ...] = _setting(
        ("failed", "stalled", "completed"),
        "what is announced: failed, stalled (and recovered), completed, task-failed",
        parse_list,
        check=_each_one_of(("failed", "stalled", "completed", "task-failed")),
    )
    public_url: str | None = _setting(
        None, "how people reach this dashboard, for the links in alerts", str, check=_public_url
    )
    log_level: str = _setting(
        "info",
        "logging level: debug, info, warning or error",
        str.lower,
        check=_one_of(("debug", "info", "warning", "error")),
    )
    access_log: str = _setting(
        "quiet",
        "which requests are logged: all, quiet (all but accepted POST /progress) or off",
        str.lower,
        check=_one_of(("all", "quiet", "off")),
    )

    def __post_init__(self) -> None:
        _check_given(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> ServerSettings:
        """Settings from ``PROGRESSISTA_*`` variables, then ``overrides`` on top.

        A variable that an override replaces is not read: it cannot be wrong.
        """
        values: dict[str, Any] = {}
        for setting in dataclasses.fields(cls):
            variable = env_name(setting.name)
            # An empty variable counts as unset, except for a token: there it is a token that
            # went missing (PROGRESSISTA_WRITE_TOKEN=$UNSET), and auth must not quietly go off.
            if setting.name not in overrides and (
                environ.get(variable, "") != ""
                or (variable in environ and setting.metadata["parse"] is parse_token)
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


def _problem(setting: dataclasses.Field[Any], value: Any) -> str | None:
    check: Check | None = setting.metadata.get("check")
    return None if check is None else check(value)


def _check_given(settings: Any) -> None:
    """Check every field of a settings dataclass. Values from flags and variables were checked
    when they were parsed, where their source is known (see _parse); what is left to catch here
    is a value given in Python, named as the call that gave it."""
    for setting in dataclasses.fields(settings):
        value = getattr(settings, setting.name)
        problem = _problem(setting, value)
        if problem is not None:
            shown = "…" if setting.metadata.get("secret") else repr(value)
            name = type(settings).__name__
            raise SettingError(f"{name}({setting.name}={shown}): {problem}")


def _parse(setting: dataclasses.Field[Any], text: str, source: str) -> Any:
    """The value of a flag or a variable; a SettingError names ``source`` (``--port`` or
    ``PROGRESSISTA_PORT``), the only place that knows which of the two it was."""
    try:
        value = setting.metadata["parse"](text)
    except ValueError as error:
        raise SettingError(f"{source}: {error}") from None
    problem = _problem(setting, value)
    if problem is not None:
        if setting.metadata.get("secret"):
            raise SettingError(f"{source}: {problem}")
        try:
            shown = redact_url(text)  # a --store URL may hold a password
        except ValueError:
            shown = text
        raise SettingError(f"{source}: {problem}, not {shown!r}")
    return value


def parse_args(
    argv: Sequence[str], environ: Mapping[str, str], prog: str = "python -m progressista.server"
) -> ServerSettings:
    """Settings for ``python -m progressista.server``: flags win over the environment.

    Raises :class:`SettingError` naming the flag or variable that could not be used. ``prog``
    is how the usage names the command (``progressista serve`` runs this too).
    """
    import argparse  # here, not at the top: the client imports this module and needs no CLI

    parser = argparse.ArgumentParser(
        prog=prog,
        # One line: a mistyped flag gets it and the error, not a screenful of flags (see -h).
        usage="%(prog)s [-h] [--SETTING VALUE ...]",
        description="Serve the Progressista dashboard and ingest API.",
        epilog="Every flag can also be given as an environment variable, e.g. "
        "--stale-after as PROGRESSISTA_STALE_AFTER. Durations take s, m, h or d; sizes KiB "
        "or MiB.",
    )
    for setting in dataclasses.fields(ServerSettings):
        default = setting.default
        shown = setting.metadata["shown_default"] or (
            "unset" if setting.metadata["secret"] or default in (None, ()) else default
        )
        parser.add_argument(
            flag_name(setting.name),
            dest=setting.name,
            metavar=setting.name.upper(),
            default=None,
            action="append" if setting.metadata["repeatable"] else "store",
            help=f"{setting.metadata['help']} (env {env_name(setting.name)}; default {shown})",
        )
    namespace = parser.parse_args(list(argv))
    overrides = {
        setting.name: _parse(setting, _given(namespace, setting.name), flag_name(setting.name))
        for setting in dataclasses.fields(ServerSettings)
        if getattr(namespace, setting.name) is not None
    }
    return ServerSettings.from_env(environ, **overrides)


def _given(namespace: Any, name: str) -> str:
    """A flag's text; a repeated flag's values, a line each."""
    value = getattr(namespace, name)
    return "\n".join(value) if isinstance(value, list) else str(value)


DEFAULT_URL = "http://127.0.0.1:8000"
#: Seconds between re-sends of an unchanged open bar, unless the server asks for less.
DEFAULT_KEEPALIVE = 15.0


def url_problem(url: str) -> str | None:
    """What is wrong with a server URL (``--url``, ``PROGRESSISTA_URL``), or None."""
    from urllib.parse import urlsplit

    if not url.startswith(("http://", "https://")):
        return "must start with http:// or https://"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "must be a URL, like http://127.0.0.1:8000"
    return None if host else "must name a host, like http://127.0.0.1:8000"


def parse_url(text: str) -> str:
    """A server's base URL: ``http://`` or ``https://`` and a host; the trailing ``/`` dropped."""
    problem = url_problem(text.strip())
    if problem is not None:
        raise ValueError(f"{problem}, not {text!r}")
    return text.strip().rstrip("/")


def parse_labels(text: str) -> dict[str, Any]:
    """Labels from a JSON object, such as ``{"team": "data", "tier": 2}``."""
    import json

    try:
        value = json.loads(text)
    except ValueError as error:
        raise ValueError(f'must be a JSON object like {{"team": "data"}}: {error}') from None
    if not isinstance(value, dict):
        raise ValueError(f'must be a JSON object like {{"team": "data"}}, not {text!r}')
    return value


def _given_or_environment(
    cls: type[Any], environ: Mapping[str, str], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Field values for ``cls``: each override not None, else its variable parsed, else nothing.

    Every field's metadata says how to parse its ``PROGRESSISTA_*`` variable; an error names the
    variable. An override that is a string goes through the same parser, naming the keyword.
    """
    values: dict[str, Any] = {}
    for setting in dataclasses.fields(cls):
        given = overrides.get(setting.name)
        if given is not None:
            values[setting.name] = (
                _parse(setting, given, setting.name) if isinstance(given, str) else given
            )
            continue
        variable = env_name(setting.name)
        text = environ.get(variable, "")
        if text != "":
            values[setting.name] = _parse(setting, text, variable)
    unknown = set(overrides) - {setting.name for setting in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"unknown setting {sorted(unknown)[0]!r} for {cls.__name__}")
    return values


@dataclass(frozen=True)
class ClientSettings:
    """How a worker's bars reach the server (DESIGN §5).

    Read when a bar is built: keyword arguments first, then each field's ``PROGRESSISTA_*``
    variable (``PROGRESSISTA_URL``, ``PROGRESSISTA_PUSH_EVERY``…), then the default.
    """

    url: str = _setting(DEFAULT_URL, "the server's base URL", parse_url, check=url_problem)
    token: str | None = _setting(
        None, "the server's write token, sent as Authorization: Bearer", str, secret=True
    )
    push_every: float = _setting(
        0.5,
        "seconds between batches; every bar that changed goes in the next one",
        parse_duration,
        check=_more_than_zero,
    )
    flush_timeout: float = _setting(
        2.0,
        "seconds that waiting for an unresponsive server may add to a program, exit included",
        parse_duration,
        check=_more_than_zero,
    )
    keepalive: float = _setting(
        DEFAULT_KEEPALIVE,
        "an open bar that did not change is re-sent this often, so the server can tell a slow "
        "bar from a dead worker (its stale_after defaults to 60 s)",
        parse_duration,
        check=_more_than_zero,
    )
    job: str | None = _setting(
        None, "the job label every bar carries in meta; groups a run's bars", str
    )
    meta: Mapping[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "labels every bar carries, as a JSON object, under the bar's own",
            "parse": parse_labels,
            "check": None,
            "secret": False,
            "repeatable": False,
        },
    )

    def __post_init__(self) -> None:
        _check_given(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> ClientSettings:
        """Settings from the environment, with ``overrides`` (None meaning "not given") on top.

        Raises :class:`SettingError` naming the variable or keyword that cannot be used.
        """
        return cls(**_given_or_environment(cls, environ, overrides))


@dataclass(frozen=True)
class ViewerSettings:
    """How ``progressista watch`` (a reader, not a worker) reaches the server."""

    url: str = _setting(DEFAULT_URL, "the server's base URL", parse_url, check=url_problem)
    read_token: str | None = _setting(
        None, "the server's read token, sent as Authorization: Bearer", str, secret=True
    )

    def __post_init__(self) -> None:
        _check_given(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> ViewerSettings:
        """Settings from the environment, with ``overrides`` (None meaning "not given") on top."""
        return cls(**_given_or_environment(cls, environ, overrides))
