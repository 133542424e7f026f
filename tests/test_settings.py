"""Settings: defaults, environment variables, flags (which win), and clear errors."""

from __future__ import annotations

import dataclasses

import pytest

from progressista.settings import ServerSettings, SettingError, env_name, parse_args


def test_defaults_bind_to_loopback() -> None:
    settings = parse_args([], {})
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings == ServerSettings()


def test_every_setting_has_a_variable_and_a_flag() -> None:
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
        (
            [],
            {"PROGRESSISTA_PORT": "eighty"},
            "PROGRESSISTA_PORT: invalid literal for int() with base 10: 'eighty'",
        ),
        (
            [],
            {"PROGRESSISTA_MAX_BODY": "1 GB"},
            "PROGRESSISTA_MAX_BODY: '1 GB' is not a size; "
            "use bytes or a unit: 1048576, 512KiB, 1MiB",
        ),
        (["--retention", "0"], {}, "--retention must be a positive number, not 0.0"),
        (["--read-timeout", "0"], {}, "--read-timeout must be a positive number, not 0.0"),
        (["--port", "70000"], {}, "port must be between 0 and 65535, not 70000"),
        (["--access-log", "some"], {}, "--access-log must be one of all, quiet, off"),
        (["--proxy-header", "via"], {}, "--proxy-header must be one of x-forwarded-for, forwarded"),
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


def test_describe_hides_secrets() -> None:
    described = ServerSettings(write_token="w", read_token=None).describe()
    assert (described["write_token"], described["read_token"]) == ("<set>", None)


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
        "--read-token must not be empty; give a token, or leave the setting out to run without one"
    )
