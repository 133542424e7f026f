"""Guessing tokens: a budget of wrong tokens per client address, then 429 with Retry-After."""

from __future__ import annotations

from progressista.server.auth import COOKIE_NAME
from progressista.server.throttle import Throttle, client_key

from .conftest import Client, FakeClock, MakeClient, event, post


def test_the_budget_refills_evenly_over_a_minute() -> None:
    clock = FakeClock(0.0)
    throttle = Throttle(3, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("192.0.2.1") is None
        throttle.failed("192.0.2.1")
    assert throttle.retry_after("192.0.2.1") == 20  # one attempt comes back every 20 s
    assert throttle.retry_after("192.0.2.2") is None  # others are not affected
    clock.advance(19)
    assert throttle.retry_after("192.0.2.1") == 1
    clock.advance(1)
    assert throttle.retry_after("192.0.2.1") is None
    assert (throttle.stats.failures, throttle.stats.refused) == (3, 2)


def test_ipv6_clients_are_counted_by_their_slash_64_and_memory_is_bounded() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    throttle = Throttle(1, clock=FakeClock(0.0), max_clients=2)
    for address in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        throttle.failed(address)
    assert throttle.retry_after("192.0.2.1") is None  # the quietest was forgotten
    assert throttle.retry_after("192.0.2.3") == 60


async def wrong_bearer(client: Client, path: str = "/progress") -> int:
    response = await client.post(path, json=event("x"), headers={"Authorization": "Bearer guess"})
    return response.status


async def test_wrong_bearer_tokens_run_out_and_then_even_the_right_one_waits(
    make_client: MakeClient, hub_clock: FakeClock
) -> None:
    client = await make_client(write_token="wr1te", max_token_failures=3)
    assert [await wrong_bearer(client) for _ in range(3)] == [401, 401, 401]
    response = await client.post(
        "/progress", json=event("x"), headers={"Authorization": "Bearer wr1te"}
    )
    assert (response.status, response.headers["Retry-After"], await response.json()) == (
        429,
        "20",
        {"error": "too many wrong tokens from 127.0.0.1; try again in 20 s", "details": []},
    )
    metrics = set((await (await client.get("/metrics")).text()).splitlines())
    assert {
        "progressista_token_failures_total 3.0",
        "progressista_token_throttled_total 1.0",
    } <= metrics
    hub_clock.advance(20)
    assert await post(client, event("x", status="start"), Authorization="Bearer wr1te") == (
        202,
        {"accepted": 1, "ignored": 0},
    )


async def test_reads_and_the_login_form_share_the_budget(
    make_client: MakeClient, hub_clock: FakeClock
) -> None:
    client = await make_client(read_token="r34d", max_token_failures=2)
    response = await client.get("/tasks", headers={"Authorization": "Bearer guess"})
    assert response.status == 401
    response = await client.post("/login", data={"token": "guess"}, allow_redirects=False)
    assert response.status == 401
    response = await client.post("/login", data={"token": "r34d"}, allow_redirects=False)
    assert (response.status, response.headers["Retry-After"]) == (429, "30")
    assert "Too many wrong tokens from this address: try again in 30 s." in await response.text()
    assert COOKIE_NAME not in response.cookies
    response = await client.get("/tasks", headers={"Authorization": "Bearer r34d"})
    assert response.status == 429
    hub_clock.advance(30)
    response = await client.post("/login", data={"token": "r34d"}, allow_redirects=False)
    assert response.status == 303


async def test_a_signed_in_session_keeps_working_while_its_address_is_throttled(
    make_client: MakeClient,
) -> None:
    client = await make_client(read_token="r34d", write_token="wr1te", max_token_failures=1)
    response = await client.post("/login", data={"token": "wr1te"}, allow_redirects=False)
    assert response.status == 303
    assert await wrong_bearer(client) == 401
    assert await wrong_bearer(client) == 429
    assert (await client.get("/")).status == 200  # the cookie is no guess
    assert (await client.get("/tasks")).status == 200


async def test_behind_a_trusted_proxy_each_client_has_its_own_budget(
    make_client: MakeClient,
) -> None:
    client = await make_client(
        write_token="wr1te", max_token_failures=1, trusted_proxies=("127.0.0.1",)
    )

    async def send(address: str, token: str) -> tuple[int, str]:
        response = await client.post(
            "/progress",
            json=event("x"),
            headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": address},
        )
        return response.status, (await response.json()).get("error", "")

    assert (await send("203.0.113.7", "guess"))[0] == 401
    assert await send("203.0.113.7", "guess") == (
        429,
        "too many wrong tokens from 203.0.113.7; try again in 60 s",
    )
    assert (await send("198.51.100.9", "wr1te"))[0] == 202  # another client behind the proxy
