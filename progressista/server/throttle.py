"""How many wrong tokens a client may send: a budget per client address that refills over a
minute, so guessing runs at a few tries a minute instead of thousands a second.

A client whose budget is spent gets 429 with ``Retry-After`` for every request that carries a
token, right or wrong (a right token answered differently would still tell a guesser when it
guessed right); sessions already signed in (the cookie) are not affected. IPv6 clients are
counted by /64, the block one subscriber usually holds. The addresses remembered are bounded:
past :data:`MAX_CLIENTS`, those that have been quiet longest are forgotten.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MAX_CLIENTS", "Throttle", "ThrottleStats"]

#: Client addresses remembered at most (about 100 bytes each).
MAX_CLIENTS = 100_000
#: Seconds over which a client's whole budget refills.
WINDOW = 60.0


@dataclass
class ThrottleStats:
    """Wrong tokens seen, and requests refused with 429 for them, since the server started."""

    failures: int = 0
    refused: int = 0


def client_key(address: str) -> str:
    """What a budget belongs to: the address, or its /64 for IPv6."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


class Throttle:
    """``per_minute`` wrong tokens per client, refilled evenly over :data:`WINDOW`."""

    def __init__(
        self,
        per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.capacity = float(per_minute)
        self._refill = per_minute / WINDOW  # attempts per second
        self._clock = clock
        self._max_clients = max_clients
        #: client key -> (attempts left, when counted); least recently failing first.
        self._budgets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.stats = ThrottleStats()

    def _left(self, key: str, now: float) -> float:
        left, then = self._budgets.get(key, (self.capacity, now))
        return min(self.capacity, left + (now - then) * self._refill)

    def retry_after(self, address: str) -> int | None:
        """Whole seconds ``address`` must wait before its next try, or None if it may try now.

        A client told to wait is counted in ``stats.refused``.
        """
        key = client_key(address)
        if key not in self._budgets:
            return None
        left = self._left(key, self._clock())
        if left >= 1:
            return None
        self.stats.refused += 1
        return max(1, math.ceil((1 - left) / self._refill))

    def failed(self, address: str) -> None:
        """``address`` sent a wrong token: one attempt less."""
        self.stats.failures += 1
        key = client_key(address)
        now = self._clock()
        self._budgets[key] = (max(0.0, self._left(key, now) - 1), now)
        self._budgets.move_to_end(key)
        while len(self._budgets) > self._max_clients:
            self._budgets.popitem(last=False)
