"""Messages on the wire: plain frames, and deflated ones (RFC 7692) for clients that offer it."""

from __future__ import annotations

import asyncio
import socket
import zlib
from typing import Any

import msgspec
import pytest

from progressista.server.wire import Frames

from .conftest import Client, event, post
from .feed_model import Board, without_unshown
from .test_websocket import raw_viewer, receive, server_frames

TAIL = b"\x00\x00\xff\xff"


def _payloads(frames: list[tuple[int, bytes]], inflater: zlib._Decompress) -> list[bytes]:
    """Text payloads, inflated where RSV1 says (with one inflater kept across messages, as a
    client that keeps its window does)."""
    payloads = []
    for first, payload in frames:
        assert first & 0x0F == 0x1 and first & 0x80, first  # text, final
        if first & 0x40:
            payload = inflater.decompress(payload + TAIL)
        payloads.append(payload)
    return payloads


@pytest.mark.parametrize("size", [130, 5_000, 70_000])
def test_a_deflated_message_inflates_alone_or_after_others(size: int) -> None:
    messages = [
        msgspec.json.encode({"type": "patch", "tasks": {f"t{i}": {"n": i} for i in range(size)}})[
            :size
        ]
        for _ in range(3)
    ]
    wire = bytearray(Frames(messages).deflated())
    frames = server_frames(wire)
    assert not wire and len(frames) == 3
    assert all(first == 0xC1 for first, _ in frames)  # final, RSV1, text
    assert sum(len(payload) for _, payload in frames) < sum(map(len, messages)) / (
        3 if size > 1000 else 1
    )
    assert _payloads(frames, zlib.decompressobj(-15)) == messages  # window kept
    for (first, payload), message in zip(frames, messages, strict=True):  # or not
        assert _payloads([(first, payload)], zlib.decompressobj(-15)) == [message]


def test_short_messages_and_plain_frames_are_not_deflated() -> None:
    short = b'{"type":"status","problem":null}'
    assert server_frames(bytearray(Frames.of(short).deflated())) == [(0x81, short)]
    long = b"x" * 70_000
    assert server_frames(bytearray(Frames([short, long]).plain())) == [(0x81, short), (0x81, long)]


async def _follow(raw: socket.socket, want: dict[str, dict[str, Any]]) -> tuple[list[int], int]:
    """Read until the board equals ``want``: the first bytes of the frames read, and how many
    bytes came."""
    loop = asyncio.get_running_loop()
    board, received, firsts, size = Board(), bytearray(), [], 0
    inflater = zlib.decompressobj(-15)
    while board.shown() != want:
        data = await asyncio.wait_for(loop.sock_recv(raw, 1 << 16), 10)
        size += len(data)
        received += data
        frames = server_frames(received)
        firsts += [first for first, _ in frames]
        for payload in _payloads(frames, inflater):
            board.apply(msgspec.json.decode(payload))
    return firsts, size


async def test_a_viewer_that_offers_deflate_gets_the_same_board_in_fewer_bytes(
    client: Client,
) -> None:
    from .conftest import stored

    offering, head = await raw_viewer(
        client, extensions="permessage-deflate; client_max_window_bits"
    )
    assert b"permessage-deflate" in head.lower()
    plain, head = await raw_viewer(client)
    assert b"permessage-deflate" not in head.lower()
    await post(client, [event(f"t{i}", n=i, total=100, desc="Downloading") for i in range(50)])
    await post(client, [event(f"t{i}", n=i + 1) for i in range(0, 50, 2)])
    want = without_unshown(stored(client.app))
    deflated, deflated_size = await _follow(offering, want)
    assert 0xC1 in deflated  # the snapshot and the patches came deflated
    firsts, plain_size = await _follow(plain, want)
    assert set(firsts) == {0x81}
    assert deflated_size < plain_size / 2
    offering.close()
    plain.close()


async def test_a_viewer_that_asks_for_a_smaller_window_gets_plain_frames(client: Client) -> None:
    from .conftest import stored

    raw, head = await raw_viewer(client, extensions="permessage-deflate; server_max_window_bits=10")
    assert b"server_max_window_bits=10" in head  # accepted, as the RFC lets it be
    await post(client, [event(f"t{i}", n=i, total=100, desc="Downloading") for i in range(50)])
    firsts, _ = await _follow(raw, without_unshown(stored(client.app)))
    assert set(firsts) == {0x81}
    raw.close()


async def test_an_aiohttp_client_that_offers_deflate_reads_every_message(client: Client) -> None:
    await post(client, event("a", n=1, total=10, desc="x" * 300))
    async with client.ws_connect("/ws", compress=15) as viewer:
        assert viewer.compress == 15
        snapshot = await receive(viewer)
        assert snapshot["tasks"]["a"]["desc"] == "x" * 300
        await post(client, [event(f"b{i}", n=i, desc="y" * 50) for i in range(20)])
        patch = await receive(viewer)
        assert sorted(patch["replace"]) == sorted(f"b{i}" for i in range(20))
        await viewer.send_str('{"type": "resync"}')  # its own messages may come deflated
        assert (await receive(viewer))["type"] == "snapshot"
