"""Settings: defaults, environment variables, flags (which win), and clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from progressista.settings import (
    ClientSettings,
    ServerSettings,
    SettingError,
    ViewerSettings,
    env_name,
    parse_args,
)


def test_defaults_bind_to_loopback() -> None:
    settings = parse_args([], {})
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings == ServerSettings()


def test_every_setting_has_a_variable_and_a_flag(tmp_path: Path) -> None:
    notify_file = tmp_path / "notify"
    notify_file.write_text("# one destination a line\njson://h/p\n")
    environ = {
        "PROGRESSISTA_HOST": "0.0.0.0",
        "PROGRESSISTA_PORT": "9001",
        "PROGRESSISTA_STALE_AFTER": "2m",
        "PROGRESSISTA_ABANDON_AFTER": "1h",
        "PROGRESSISTA_RETENTION": "1d",
        "PROGRESSISTA_MAX_AGE": "7d",
        "PROGRESSISTA_CLEANUP_INTERVAL": "0.5",
        "PROGRESSISTA_BROADCAST_INTERVAL": "0",
        "PROGRESSISTA_VIEWER_TIMEOUT": "5s",
        "PROGRESSISTA_HEARTBEAT": "20",
        "PROGRESSISTA_JOB_STALL_AFTER": "2m",
        "PROGRESSISTA_JOB_GAP": "30s",
        "PROGRESSISTA_JOB_RETENTION": "2d",
        "PROGRESSISTA_MAX_JOBS": "20",
        "PROGRESSISTA_METRICS_JOBS": "5",
        "PROGRESSISTA_MAX_VIEWERS": "7",
        "PROGRESSISTA_READ_TIMEOUT": "5s",
        "PROGRESSISTA_KEEPALIVE_TIMEOUT": "2m",
        "PROGRESSISTA_MAX_CONNECTIONS": "300",
        "PROGRESSISTA_MAX_BODY": "2MiB",
        "PROGRESSISTA_MAX_BATCH": "50",
        "PROGRESSISTA_MAX_TASKS": "10",
        "PROGRESSISTA_WRITE_TOKEN": "w",
        "PROGRESSISTA_READ_TOKEN": "r",
        "PROGRESSISTA_MAX_TOKEN_FAILURES": "5",
        "PROGRESSISTA_ALLOWED_ORIGINS": "https://a.example, https://b.example",
        "PROGRESSISTA_ALLOWED_HOSTS": "dash.example",
        "PROGRESSISTA_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.7, 2001:db8::/32",
        "PROGRESSISTA_PROXY_HEADER": "Forwarded",
        "PROGRESSISTA_STORE": "redis://:pw@redis.internal:6379/2",
        "PROGRESSISTA_REDIS_PASSWORD": "other",
        "PROGRESSISTA_REDIS_PREFIX": "team-a",
        "PROGRESSISTA_REDIS_STREAM_LENGTH": "500",
        "PROGRESSISTA_REDIS_STREAM_BYTES": "64MiB",
        "PROGRESSISTA_NOTIFY": "slack://a/b/c\njobs=x* ntfy://t",
        "PROGRESSISTA_NOTIFY_FILE": str(notify_file),
        "PROGRESSISTA_NOTIFY_ON": "failed,task-failed",
        "PROGRESSISTA_PUBLIC_URL": "https://p.example",
        "PROGRESSISTA_LOG_LEVEL": "WARNING",
        "PROGRESSISTA_ACCESS_LOG": "all",
    }
    assert set(environ) == {env_name(f.name) for f in dataclasses.fields(ServerSettings)}
    settings = parse_args([], environ)
    assert settings == ServerSettings(
        host="0.0.0.0",
        port=9001,
        stale_after=120,
        abandon_after=3600,
        retention=86400,
        max_age=7 * 86400,
        cleanup_interval=0.5,
        broadcast_interval=0,
        viewer_timeout=5,
        heartbeat=20,
        job_stall_after=120,
        job_gap=30,
        job_retention=2 * 86400,
        max_jobs=20,
        metrics_jobs=5,
        max_viewers=7,
        read_timeout=5,
        keepalive_timeout=120,
        max_connections=300,
        max_body=2 * 1024**2,
        max_batch=50,
        max_tasks=10,
        write_token="w",
        read_token="r",
        max_token_failures=5,
        allowed_origins=("https://a.example", "https://b.example"),
        allowed_hosts=("dash.example",),
        trusted_proxies=("10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"),
        proxy_header="forwarded",
        store="redis://:pw@redis.internal:6379/2",
        redis_password="other",
        redis_prefix="team-a",
        redis_stream_length=500,
        redis_stream_bytes=64 * 1024**2,
        notify=("slack://a/b/c", "jobs=x* ntfy://t"),
        notify_file=("json://h/p",),
        notify_on=("failed", "task-failed"),
        public_url="https://p.example",
        log_level="warning",
        access_log="all",
    )
    described = settings.describe()
    assert described["store"] == "redis://:***@redis.internal:6379/2"
    assert described["redis_password"] == "<set>"


def test_a_flag_wins_over_its_variable() -> None:
    settings = parse_args(
        ["--port", "9100", "--max-age", "off"],
        {"PROGRESSISTA_PORT": "9001", "PROGRESSISTA_MAX_AGE": "1h", "PROGRESSISTA_RETENTION": "30"},
    )
    assert (settings.port, settings.max_age, settings.retention) == (9100, None, 30.0)


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (
            ["--stale-after", "soon"],
            {},
            "--stale-after: 'soon' is not a duration; use seconds or a unit: 90, 90s, 15m, 2h, 1d",
        ),
        ([], {"PROGRESSISTA_PORT": "eighty"}, "PROGRESSISTA_PORT: 'eighty' is not a whole number"),
        (["--port", "abc"], {}, "--port: 'abc' is not a whole number"),
        (
            [],
            {"PROGRESSISTA_MAX_BODY": "1 GB"},
            "PROGRESSISTA_MAX_BODY: '1 GB' is not a size; "
            "use bytes or a unit: 1048576, 512KiB, 1MiB",
        ),
        (["--retention", "0"], {}, "--retention: must be more than 0, not '0'"),
        (
            [],
            {"PROGRESSISTA_RETENTION": "0"},
            "PROGRESSISTA_RETENTION: must be more than 0, not '0'",
        ),
        (
            ["--max-age", "-1"],
            {},
            "--max-age: '-1' is not a duration; use seconds or a unit: 90, 90s, 15m, 2h, 1d",
        ),
        (["--metrics-jobs", "-1"], {}, "--metrics-jobs: must be 0 or more, not '-1'"),
        (["--port", "70000"], {}, "--port: must be 0 to 65535, not '70000'"),
        (  # asyncio would bind every interface
            ["--host", ""],
            {},
            "--host: must name an interface: 127.0.0.1 (this machine), or 0.0.0.0 for every "
            "one, not ''",
        ),
        (["--access-log", "some"], {}, "--access-log: must be all, quiet or off, not 'some'"),
        (
            [],
            {"PROGRESSISTA_LOG_LEVEL": "loud"},
            "PROGRESSISTA_LOG_LEVEL: must be debug, info, warning or error, not 'loud'",
        ),
        (
            ["--notify-on", "failed,sometimes"],
            {},
            "--notify-on: must be a list of failed, stalled, completed or task-failed, "
            "not 'failed,sometimes'",
        ),
        (
            ["--store", "postgres://me:secret@db/0"],
            {},
            "--store: must be 'memory' or a Redis URL (redis://host:6379/0), "
            "not 'postgres://me:***@db/0'",
        ),
        (
            ["--redis-prefix", "{x}"],
            {},
            "--redis-prefix: must be non-empty and without braces, not '{x}'",
        ),
        (  # redis-py would take db 0, maybe another deployment's keys
            ["--store", "redis://:pw@127.0.0.1:6379/abc"],
            {},
            "--store: names database 'abc': a database is a number (redis://host:6379/0), "
            "not 'redis://:***@127.0.0.1:6379/abc'",
        ),
        (
            ["--public-url", "not a url"],
            {},
            "--public-url: must be the dashboard's address, such as "
            "https://progress.example.com, not 'not a url'",
        ),
        (["--read-timeout", "0"], {}, "--read-timeout: must be more than 0, not '0'"),
        (
            ["--proxy-header", "via"],
            {},
            "--proxy-header: must be x-forwarded-for or forwarded, not 'via'",
        ),
        (
            ["--trusted-proxies", "10.0.0.0/8, proxy.internal"],
            {},
            "--trusted-proxies: 'proxy.internal' is not an address or network; "
            "use 10.0.0.0/8, 192.0.2.7, 2001:db8::/32",
        ),
    ],
)
def test_bad_values_name_their_source(
    argv: list[str], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingError) as caught:
        parse_args(argv, environ)
    assert str(caught.value) == message


def test_the_same_bad_value_names_the_flag_or_the_variable_it_came_from() -> None:
    with pytest.raises(SettingError) as from_flag:
        parse_args(["--stale-after", "0"], {})
    with pytest.raises(SettingError) as from_variable:
        parse_args([], {"PROGRESSISTA_STALE_AFTER": "0"})
    assert str(from_flag.value) == "--stale-after: must be more than 0, not '0'"
    assert str(from_variable.value) == "PROGRESSISTA_STALE_AFTER: must be more than 0, not '0'"


def test_a_variable_a_flag_replaces_is_not_read() -> None:
    settings = parse_args(["--stale-after", "5"], {"PROGRESSISTA_STALE_AFTER": "0"})
    assert settings.stale_after == 5.0


def test_a_bad_value_given_in_python_names_the_argument() -> None:
    with pytest.raises(SettingError) as caught:
        ServerSettings(stale_after=0)
    assert str(caught.value) == "ServerSettings(stale_after=0): must be more than 0"
    with pytest.raises(SettingError) as caught:
        ServerSettings(log_level="loud")
    assert str(caught.value) == (
        "ServerSettings(log_level='loud'): must be debug, info, warning or error"
    )


def test_a_client_variable_an_argument_replaces_is_not_read() -> None:
    settings = ClientSettings.from_env({"PROGRESSISTA_URL": "ftp://x"}, url="http://h:1")
    assert settings.url == "http://h:1"


def test_describe_hides_secrets() -> None:
    described = ServerSettings(write_token="w", read_token=None).describe()
    assert (described["write_token"], described["read_token"]) == ("<set>", None)


def test_client_settings_read_every_variable_from_field_metadata() -> None:
    environ = {
        "PROGRESSISTA_URL": "https://progress.example.org/",
        "PROGRESSISTA_TOKEN": "w",
        "PROGRESSISTA_PUSH_EVERY": "0.25",
        "PROGRESSISTA_FLUSH_TIMEOUT": "1m",
        "PROGRESSISTA_KEEPALIVE": "30s",
        "PROGRESSISTA_JOB": "nightly",
        "PROGRESSISTA_META": '{"team": "data"}',
    }
    assert set(environ) == {env_name(f.name) for f in dataclasses.fields(ClientSettings)}
    assert ClientSettings.from_env(environ) == ClientSettings(
        url="https://progress.example.org",
        token="w",
        push_every=0.25,
        flush_timeout=60,
        keepalive=30,
        job="nightly",
        meta={"team": "data"},
    )


def test_client_keywords_win_and_none_means_not_given() -> None:
    settings = ClientSettings.from_env(
        {"PROGRESSISTA_URL": "http://a:1", "PROGRESSISTA_PUSH_EVERY": "2"},
        url="http://b:2/",
        push_every=None,
    )
    assert (settings.url, settings.push_every) == ("http://b:2", 2.0)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"PROGRESSISTA_URL": "not-a-url"},
            "PROGRESSISTA_URL: must start with http:// or https://, not 'not-a-url'",
        ),
        (
            {"PROGRESSISTA_URL": "http://"},
            "PROGRESSISTA_URL: must name a host, like http://127.0.0.1:8000, not 'http://'",
        ),
        (
            {"PROGRESSISTA_PUSH_EVERY": "abc"},
            "PROGRESSISTA_PUSH_EVERY: 'abc' is not a duration; use seconds or a unit: "
            "90, 90s, 15m, 2h, 1d",
        ),
        (
            {"PROGRESSISTA_FLUSH_TIMEOUT": "0"},
            "PROGRESSISTA_FLUSH_TIMEOUT: must be more than 0, not '0'",
        ),
        (
            {"PROGRESSISTA_META": "[1]"},
            """PROGRESSISTA_META: must be a JSON object like {"team": "data"}, not '[1]'""",
        ),
    ],
)
def test_bad_client_values_name_their_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingError) as caught:
        ClientSettings.from_env(environ)
    assert str(caught.value) == message


def test_the_read_token_is_read_with_the_other_settings() -> None:
    viewer = ViewerSettings.from_env({"PROGRESSISTA_READ_TOKEN": "r"}, url="http://x:1/")
    assert (viewer.url, viewer.read_token) == ("http://x:1", "r")
    assert ViewerSettings.from_env(
        {"PROGRESSISTA_READ_TOKEN": "r"}, read_token="given"
    ).read_token == ("given")


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (
            ["--write-token", ""],
            {},
            "--write-token: must not be empty; give a token, or leave "
            "the setting out to run without one",
        ),
        (
            ["--read-token", "  "],
            {},
            "--read-token: must not be empty; give a token, or leave "
            "the setting out to run without one",
        ),
        # An empty variable is a token that went missing (PROGRESSISTA_WRITE_TOKEN=$UNSET), not
        # a wish to run without one: refused too.
        (
            [],
            {"PROGRESSISTA_WRITE_TOKEN": ""},
            "PROGRESSISTA_WRITE_TOKEN: must not be empty; "
            "give a token, or leave the setting out to run without one",
        ),
        (["--write-token", " w "], {}, "--write-token: must not begin or end with whitespace"),
        (  # no client could ever send it in a header
            ["--write-token", "a b\nc"],
            {},
            "--write-token: must be a non-empty token of printable ASCII characters without "
            "surrounding whitespace",
        ),
        (  # no client could send it either (HTTP headers are Latin-1, tokens ASCII)
            ["--read-token", "abc€"],
            {},
            "--read-token: must be a non-empty token of printable ASCII characters without "
            "surrounding whitespace",
        ),
        (  # the empty glob list was dropped: it meant every job
            ["--notify", "jobs= json://127.0.0.1:9/"],
            {},
            "--notify: 'jobs=' takes globs separated by commas, then a space and the URL",
        ),
    ],
)
def test_an_empty_token_is_a_configuration_error(
    argv: list[str], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingError) as caught:
        parse_args(argv, environ)
    assert str(caught.value) == message


def test_an_empty_token_given_in_code_names_its_flag() -> None:
    with pytest.raises(SettingError) as caught:
        ServerSettings(read_token="")
    assert str(caught.value) == (
        "ServerSettings(read_token=…): must be a non-empty token of printable ASCII "
        "characters without surrounding whitespace"
    )


def test_a_trailing_comma_in_a_notify_entrys_globs_is_still_accepted() -> None:
    """Refusing an empty glob list must not refuse what worked: an empty glob among others."""
    settings = parse_args(["--notify", "jobs=etl-*,ml-*, json://127.0.0.1:9/"], {})
    assert settings.notify == ("jobs=etl-*,ml-*, json://127.0.0.1:9/",)
