"""``progressista watch``'s rendering: whatever a writer sent, it prints text and never dies."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from progressista.server.event import decode_events
from progressista.server.task import apply_event
from progressista.terminal import _Window, render

from .feed_model import sent

NOW = 1_800_000_100.0


def served(*events: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The tasks as the server would send them to ``watch``, after these events."""
    tasks: dict[str, Any] = {}
    for event in decode_events(msgspec.json.encode(list(events)), 100):
        applied = apply_event(tasks.get(event.task_id), event, NOW - 50)
        if applied is not None:
            tasks[event.task_id] = applied[0]
    built: dict[str, dict[str, Any]] = msgspec.to_builtins(tasks)
    return built


def terminal_safe(frame: str) -> bool:
    """Only printable text and the newlines watch itself puts between lines."""
    return all(character == "\n" or character.isprintable() for character in frame)


POISON = {
    "task_id": "poison",
    "n": 0,
    "total": 1.5,
    "unit_scale": True,
    "unit_divisor": 5e-324,
    "rate": 5e-324,
}


def test_a_value_the_server_accepts_renders_instead_of_killing_watch() -> None:
    frame = render(served(POISON), "http://dash", "live", 100, 40, now=NOW)
    assert "poison" in frame.splitlines()[1]


@pytest.mark.parametrize(
    "event",
    [
        {"task_id": "huge", "n": 1e308, "total": 1e-300, "rate": 1e308},
        {"task_id": "tiny", "n": 5e-324, "total": 1e308, "rate": 5e-324, "unit_scale": 1e308},
        {"task_id": "wide", "n": 2**63 - 1, "total": 2**63 - 1, "unit_scale": True},
        {"task_id": "odd", "n": 3, "total": 0, "elapsed": 1e308, "unit_divisor": 1e308},
    ],
)
def test_extreme_numbers_render(event: dict[str, Any]) -> None:
    frame = render(served(event), "http://dash", "live", 100, 40, now=NOW)
    assert event["task_id"] in frame


ESCAPES = [
    "\x1b]52;c;cm0gLXJmIH4K\x07",  # OSC 52: write the viewer's clipboard
    "\x1b]0;pwned\x07",  # the window title
    "\x1b[2J\x1b[H",  # clear the screen
    "\x9b31m",  # CSI as one C1 character
    "\x90evil\x9c",  # DCS ... ST
    "a\rb\x08\x7f",  # carriage return, backspace, DEL
    "\u202egnp.exe",  # right-to-left override
]


@pytest.mark.parametrize("escape", ESCAPES)
def test_no_escape_sequence_a_writer_sends_reaches_the_terminal(escape: str) -> None:
    tasks = served(
        {
            "task_id": "t",
            "desc": f"Copying {escape}files",
            "postfix": f"loss={escape}",
            "unit": escape[:32],
            "n": 3,
            "total": 10,
        },
        {"task_id": "f", "desc": escape, "status": "error", "error": f"Boom {escape}\nline 2"},
    )
    frame = render(tasks, "http://dash", "live", 120, 40, now=NOW)
    assert terminal_safe(frame), repr(frame)
    assert "Copying" in frame and "files" in frame and "Boom" in frame


def test_the_header_is_text_too() -> None:
    frame = render({}, "http://dash\x1b[2J", "live\x07", 80, 10, now=NOW)
    assert terminal_safe(frame)


def test_tasks_sent_under_their_ids_without_them_are_named_by_them() -> None:
    """The feed sends each task under its id and without it, and without the fields at their
    defaults (docs/protocol.md): a bar with no description is shown by its id, whether it came
    in a view or new in a patch, and with its defaults (``it``, no postfix) put back."""
    tasks = sent(served({"task_id": "nameless", "n": 1, "total": 4}, {"task_id": "later", "n": 2}))
    assert "unit" not in tasks["later"] and "percent" not in tasks["nameless"]
    window = _Window()
    counts = {"active": [2, 2], "stale": [0, 0], "completed": [0, 0], "failed": [0, 0]}
    window.apply(
        {"type": "view", "tasks": {"nameless": tasks["nameless"]}, "sections": {}, "counts": counts}
    )
    window.apply(
        {"type": "patch", "tasks": {}, "replace": {"later": tasks["later"]}, "removed": []}
    )
    assert window.tasks["later"]["unit"] == "it" and window.tasks["nameless"]["percent"] == 25.0
    frame = render(window.tasks, "http://dash", "live", 100, 40, now=NOW)
    assert "nameless" in frame and "later" in frame and "2it" in frame


def test_a_percent_past_what_a_float_holds_is_left_out() -> None:
    window = _Window()
    counts = {"active": [1, 1], "stale": [0, 0], "completed": [0, 0], "failed": [0, 0]}
    tasks = sent(served({"task_id": "huge", "n": 1, "total": 1e-300}))
    window.apply({"type": "view", "tasks": tasks, "sections": {}, "counts": counts})
    window.apply({"type": "patch", "tasks": {"huge": {"n": 1.7e308}}, "removed": [], "at": NOW})
    assert window.tasks["huge"]["percent"] is None
    assert "huge" in render(window.tasks, "http://dash", "live", 100, 40, now=NOW)
