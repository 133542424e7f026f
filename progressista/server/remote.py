"""Who is on the other end: the client's address, as a trusted reverse proxy reports it.

Behind a reverse proxy every request comes from the proxy's address, so limits per client
address would treat all clients as one, and the access log would name only the proxy. The proxy
reports the client in ``X-Forwarded-For`` (or ``Forwarded``), but any client can send those
headers too: they are believed only from the proxies listed in ``--trusted-proxies``, and read
from the right, the end the proxies append to, as far as trusted proxies wrote them. That is
nginx's ``set_real_ip_from`` with ``real_ip_recursive on``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

__all__ = ["Address", "Network", "TrustedProxies", "parse_address"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> Address | None:
    """An address as proxies write it: ``192.0.2.7``, ``192.0.2.7:4711``, ``2001:db8::1``,
    ``[2001:db8::1]:4711``, quoted in ``Forwarded``; None for anything else (``unknown``,
    obfuscated names)."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class TrustedProxies:
    """The reverse proxies whose word on the client's address is taken, and the header they
    write it in (``x-forwarded-for`` or ``forwarded``)."""

    def __init__(self, networks: Sequence[Network], header: str = "x-forwarded-for") -> None:
        self.networks = tuple(networks)
        self.header = header

    def trusted(self, address: Address) -> bool:
        return any(address in network for network in self.networks)

    def client(self, request: web.BaseRequest) -> str:
        """The client's address: the connection's peer, unless that is a trusted proxy; then
        the nearest address the chain of trusted proxies reports."""
        peer = request.remote or "-"
        if not self.networks:
            return peer
        current = parse_address(peer)
        if current is None or not self.trusted(current):
            return peer
        for hop in reversed(self._hops(request)):
            address = parse_address(hop)
            if address is None:
                break  # a hop that names no address: the last trusted proxy is all we know
            current = address
            if not self.trusted(address):
                break
        return str(current)

    def _hops(self, request: web.BaseRequest) -> list[str]:
        """The addresses the header lists, first (farthest) to last (nearest)."""
        if self.header == "forwarded":
            return [hop["for"] for hop in request.forwarded if "for" in hop]
        return [
            hop
            for value in request.headers.getall("X-Forwarded-For", [])
            for hop in value.split(",")
            if hop.strip()
        ]
