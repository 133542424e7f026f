"""The access log as shipped: every request except the flood of accepted progress posts.

A busy server takes thousands of ``POST /progress`` a second; a line for each would cost a third
of its throughput and bury the lines worth reading. Accepted posts are counted in ``/metrics``
instead; ``--access-log all`` brings their lines back.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.web_log import AccessLogger

__all__ = ["QuietAccessLogger"]


class QuietAccessLogger(AccessLogger):
    """aiohttp's access logger, silent for ``POST /progress`` answered with 202."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if response.status == 202 and request.path == "/progress":
            return
        super().log(request, response, time)
