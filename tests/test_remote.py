"""The client's address: from X-Forwarded-For or Forwarded only when a trusted proxy sent it."""

from __future__ import annotations

import ipaddress
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from progressista.server.remote import TrustedProxies


def request_from(peer: str, headers: list[tuple[str, str]]) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda key, default=None: (
        (peer, 4242) if key == "peername" else default
    )
    return make_mocked_request("GET", "/", headers=CIMultiDict(headers), transport=transport)


def proxies(*networks: str, header: str = "x-forwarded-for") -> TrustedProxies:
    return TrustedProxies([ipaddress.ip_network(network) for network in networks], header)


XFF = "X-Forwarded-For"


@pytest.mark.parametrize(
    ("trusted", "peer", "headers", "client"),
    [
        # No proxy trusted: the headers are anyone's to write, and ignored.
        ((), "127.0.0.1", [(XFF, "203.0.113.7")], "127.0.0.1"),
        # A trusted proxy names the client.
        (("127.0.0.1",), "127.0.0.1", [(XFF, "203.0.113.7")], "203.0.113.7"),
        # What the client wrote itself stands left of what the proxy appended: ignored.
        (("127.0.0.1",), "127.0.0.1", [(XFF, "6.6.6.6, 203.0.113.7")], "203.0.113.7"),
        # A chain of trusted proxies is followed to the first address none of them is.
        (
            ("127.0.0.0/8", "10.0.0.0/8"),
            "127.0.0.1",
            [(XFF, "6.6.6.6, 203.0.113.7, 10.0.0.2")],
            "203.0.113.7",
        ),
        # An untrusted peer's header is a lie as far as we know.
        (("10.0.0.0/8",), "127.0.0.1", [(XFF, "203.0.113.7")], "127.0.0.1"),
        # A hop that names no address: the last trusted one is all we know.
        (("127.0.0.1",), "127.0.0.1", [(XFF, "unknown")], "127.0.0.1"),
        (("127.0.0.0/8", "10.0.0.0/8"), "127.0.0.1", [(XFF, "10.0.0.3, 10.0.0.2")], "10.0.0.3"),
        (("127.0.0.1",), "127.0.0.1", [(XFF, "203.0.113.7:4711")], "203.0.113.7"),
        (("127.0.0.1",), "127.0.0.1", [(XFF, "[2001:db8::7]:4711")], "2001:db8::7"),
        # Several header lines are one list, in order.
        (("127.0.0.1",), "127.0.0.1", [(XFF, "6.6.6.6"), (XFF, "203.0.113.7")], "203.0.113.7"),
        # Only the header the proxies write counts.
        (("127.0.0.1",), "127.0.0.1", [("Forwarded", "for=203.0.113.7")], "127.0.0.1"),
    ],
)
def test_the_client_is_who_the_trusted_proxies_say(
    trusted: tuple[str, ...], peer: str, headers: list[tuple[str, str]], client: str
) -> None:
    assert proxies(*trusted).client(request_from(peer, headers)) == client


def test_the_forwarded_header_is_read_when_the_proxies_write_that() -> None:
    trusted = proxies("127.0.0.1", header="forwarded")
    request = request_from(
        "127.0.0.1",
        [(XFF, "6.6.6.6"), ("Forwarded", 'for=6.6.6.6, for="[2001:db8::7]:4711";proto=https')],
    )
    assert trusted.client(request) == "2001:db8::7"
