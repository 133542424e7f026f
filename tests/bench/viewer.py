"""WebSocket viewers on raw sockets: thousands per process, a few microseconds per message.

aiohttp's client parses every frame and wakes a task per message, which on this 2-core machine
would cost the viewers more CPU than the server they measure. These viewers speak just enough
RFC 6455 for a server that sends whole, unmasked text frames (as ours does): the handshake, frame
splitting, a pong for each ping. :func:`stalled_viewer` is the other extreme: it does the
handshake with a tiny receive buffer and never reads again.
"""

from __future__ import annotations

import asyncio
import base64
import multiprocessing
import os
import socket
import struct
import time
import zlib
from collections.abc import Callable
from multiprocessing.connection import Connection
from urllib.parse import urlsplit

from .board import address

__all__ = [
    "DEFLATED",
    "Frames",
    "Swarm",
    "ViewerProtocol",
    "handshake",
    "inflated",
    "initial",
    "open_viewer",
    "stalled_viewer",
]

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


def handshake(url: str, path: str, deflate: bool = False) -> bytes:
    """The HTTP upgrade request for ``path`` (``/ws?limit=50``) on the server at ``url``;
    ``deflate`` offers permessage-deflate, as browsers do."""
    host = urlsplit(url).netloc
    key = base64.b64encode(os.urandom(16)).decode()
    offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    ).encode()


#: What a deflated frame's payload is handed on with, in front (no JSON starts with it): the
#: viewers keep frames as they came, and :func:`inflated` makes them JSON after the run.
DEFLATED = b"\x00"


def inflated(payload: bytes) -> bytes:
    """A frame's JSON, from what a viewer kept of it (each message deflates on its own)."""
    if payload.startswith(DEFLATED):
        return zlib.decompressobj(-15).decompress(payload[1:] + b"\x00\x00\xff\xff")
    return payload


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame (clients must mask theirs); small payloads only (pong, close)."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + body


class Frames:
    """Splits a server's byte stream into (opcode, payload) frames.

    Bytes of an unfinished frame wait in a buffer until the frame is whole, without copying the
    buffer at every read (a snapshot piece is about a megabyte).
    """

    __slots__ = ("_buffer", "_need")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._need = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes, int]]:
        """Frames completed by ``data``: (opcode, payload, bytes on the wire); a deflated
        payload comes marked (:data:`DEFLATED`)."""
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._need:
                return []
            data = bytes(buffer)
            buffer.clear()
        frames: list[tuple[int, bytes, int]] = []
        at, size = 0, len(data)
        need = 2  # bytes the frame starting at `at` needs in all, as far as we can tell yet
        while size - at >= 2:
            first, second = data[at], data[at + 1]
            if second & 0x80:
                raise ValueError("a server must not mask its frames")
            length, header = second, 2
            if length == 126:
                header = 4
                if size - at < header:
                    need = header
                    break
                length = int.from_bytes(data[at + 2 : at + 4], "big")
            elif length == 127:
                header = 10
                if size - at < header:
                    need = header
                    break
                length = int.from_bytes(data[at + 2 : at + 10], "big")
            end = at + header + length
            if end > size:
                need = end - at
                break
            payload = data[at + header : end]
            if first & 0x40:  # RSV1: deflated
                payload = DEFLATED + payload
            frames.append((first & 0x0F, payload, header + length))
            at = end
        if at < size:
            buffer += data[at:]
            self._need = need
        return frames


class ViewerProtocol(asyncio.Protocol):
    """One viewer: ``on_frame(payload, wire_bytes, arrived)`` for every text frame."""

    def __init__(self, request: bytes, on_frame: Callable[[bytes, int, float], None]) -> None:
        self._request = request
        self._on_frame = on_frame
        self._frames = Frames()
        self._head = b""
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        arrived = time.time()
        if not self.opened.done():
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self._head.split(b"\r\n", 1)[0]
            if b" 101 " not in status:
                self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
                return
            self.opened.set_result(None)
            data, self._head = self._head[end + 4 :], b""
            if not data:
                return
        for opcode, payload, wire in self._frames.feed(data):
            if opcode == TEXT:
                self._on_frame(payload, wire, arrived)
            elif opcode == PING and self.transport is not None:
                self.transport.write(masked_frame(PONG, payload))
            elif opcode == CLOSE and self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(masked_frame(CLOSE, struct.pack("!H", 1000)))
            self.transport.close()


async def open_viewer(
    url: str, path: str, on_frame: Callable[[bytes, int, float], None], deflate: bool = False
) -> ViewerProtocol:
    """A viewer of ``path`` on the server at ``url``, once the server accepted the upgrade."""
    host, port = address(url)
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: ViewerProtocol(handshake(url, path, deflate), on_frame), host, port
    )
    await protocol.opened
    return protocol


def stalled_viewer(url: str, path: str = "/ws", receive_buffer: int = 4096) -> socket.socket:
    """A viewer that completes the handshake and then never reads: the server's writes pile up
    in its own buffers once this socket's small receive window is full."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(address(url))
    sock.sendall(handshake(url, path))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: not one byte of the feed itself is read
        if not chunk:
            raise ConnectionError("the server closed the connection during the handshake")
        head += chunk
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(head.decode(errors="replace"))
    return sock


def initial(payload: bytes) -> bool:
    """Whether ``payload`` completes a viewer's first state: a view, or a snapshot's last piece."""
    return payload.startswith(b'{"type":"view"') or (
        payload.startswith(b'{"type":"snapshot"') and payload.endswith(b'"more":false}')
    )


async def _swarm_main(url: str, paths: list[str], control: Connection) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()
    loop.add_reader(control.fileno(), lambda: commands.put_nowait(control.recv()))
    received = [0] * len(paths)
    messages = [0] * len(paths)
    waiting = set(range(len(paths)))
    all_ready = asyncio.Event()
    viewers: list[ViewerProtocol] = []

    def on_frame(index: int) -> Callable[[bytes, int, float], None]:
        def count(payload: bytes, wire: int, arrived: float) -> None:
            received[index] += wire
            messages[index] += 1
            if index in waiting and initial(payload):
                waiting.discard(index)
                if not waiting:
                    all_ready.set()

        return count

    control.send("up")
    while True:
        command = await commands.get()
        if command == "connect":
            started = time.monotonic()
            viewers = list(
                await asyncio.gather(
                    *(open_viewer(url, path, on_frame(i)) for i, path in enumerate(paths))
                )
            )
            await all_ready.wait()
            control.send(time.monotonic() - started)
        elif command == "stop":
            for viewer in viewers:
                viewer.close()
            control.send({"bytes": received, "messages": messages})
            return


def _swarm(url: str, paths: list[str], control: Connection) -> None:
    asyncio.run(_swarm_main(url, paths, control))


class Swarm:
    """Viewers of ``paths`` in a process of their own, reading everything they are sent.

    ``connect()`` opens them all and returns once each has its first state (a whole snapshot,
    or a view), in seconds; ``stop()`` closes them and returns what each received.
    """

    def __init__(self, url: str, paths: list[str]) -> None:
        context = multiprocessing.get_context("spawn")
        self._control, child = context.Pipe()
        self._process = context.Process(target=_swarm, args=(url, paths, child), daemon=True)

    def __enter__(self) -> Swarm:
        self._process.start()
        if not self._control.poll(30) or self._control.recv() != "up":
            raise RuntimeError("the viewers' process did not start")
        return self

    def connect(self, timeout: float = 600) -> float:
        self._control.send("connect")
        if not self._control.poll(timeout):
            raise TimeoutError(f"the viewers did not get their first state in {timeout} s")
        seconds: float = self._control.recv()
        return seconds

    def stop(self) -> dict[str, list[int]]:
        self._control.send("stop")
        if not self._control.poll(60):
            raise TimeoutError("the viewers' process did not stop")
        stats: dict[str, list[int]] = self._control.recv()
        return stats

    def __exit__(self, *exc_info: object) -> None:
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
