"""Task states over time (DESIGN §2), driven by an injected clock, and the cleanup loop's life."""

from __future__ import annotations

import logging

import pytest

from progressista.server.cleanup import run_cleanup
from progressista.server.keys import CLEANUP_TASK, LIFETIMES, STORE
from progressista.server.store import Expired, StoreUnavailable
from progressista.server.task import Lifetimes

from .conftest import (
    WAIT,
    Client,
    FakeClock,
    MakeClient,
    event,
    eventually,
    largest_tracked_holding,
    post,
    stored,
)


async def cleanup(client: Client, clock: FakeClock, advance: float) -> tuple[list[str], list[str]]:
    clock.advance(advance)
    app = client.app
    expired = await run_cleanup(app[STORE], app[LIFETIMES], clock())
    return sorted(expired.stale), sorted(expired.removed)


def states(client: Client) -> dict[str, str]:
    return {task_id: task["state"] for task_id, task in stored(client.app).items()}


async def test_active_goes_stale_comes_back_and_is_finally_abandoned(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(stale_after=30, abandon_after=300)
    await post(client, event("job", n=1, total=10))
    assert await cleanup(client, clock, 30) == ([], [])  # not yet: strictly after stale_after
    assert await cleanup(client, clock, 1) == (["job"], [])
    assert states(client) == {"job": "stale"}
    assert stored(client.app)["job"]["eta"] is None
    await post(client, event("job", n=2))
    assert states(client) == {"job": "active"}
    assert await cleanup(client, clock, 31) == (["job"], [])
    assert await cleanup(client, clock, 300) == ([], ["job"])  # 331 s of silence
    assert states(client) == {}


async def test_a_task_silent_through_both_limits_is_removed_without_a_stale_stop(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(stale_after=30, abandon_after=300)
    await post(client, event("job"))
    assert await cleanup(client, clock, 331) == ([], ["job"])


async def test_completed_and_failed_stay_for_retention_after_closing(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(retention=600, stale_after=30)
    await post(client, [event("ok", status="close"), event("bad", status="error", error="x")])
    clock.advance(300)
    await post(client, event("late", status="close"))
    assert await cleanup(client, clock, 300) == ([], [])  # closed states never go stale
    assert await cleanup(client, clock, 1) == ([], ["bad", "ok"])
    assert states(client) == {"late": "completed"}


async def test_max_age_counts_from_creation_whatever_the_state(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(max_age=100, stale_after=1000, retention=1000)
    await post(client, [event("busy"), event("done", status="close")])
    clock.advance(60)
    await post(client, [event("busy", n=5), event("young")])
    assert await cleanup(client, clock, 41) == ([], ["busy", "done"])
    assert states(client) == {"young": "active"}


async def test_a_new_run_after_close_gets_a_fresh_age(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(max_age=100, retention=1000)
    await post(client, event("a", status="close", seq=1))
    clock.advance(90)
    await post(client, event("a", status="start", seq=2))
    assert await cleanup(client, clock, 20) == ([], [])
    assert states(client) == {"a": "active"}


async def test_the_loop_runs_on_its_own_and_stops_with_the_app(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(cleanup_interval=0.02, stale_after=5)
    await post(client, event("a"))
    clock.advance(6)
    async with client.ws_connect("/ws") as viewer:
        assert (await viewer.receive_json(timeout=WAIT))["type"] == "snapshot"
        assert (await viewer.receive_json(timeout=WAIT))["type"] == "jobs"  # none, but whole
        patch = await viewer.receive_json(timeout=WAIT)
        assert patch["tasks"]["a"]["state"] == "stale"
    task = client.app[CLEANUP_TASK]
    assert not task.done()
    await client.close()
    assert task.done()
    assert task.cancelled()


def fail_expire(client: Client, errors: list[Exception]) -> list[Exception]:
    """Make the store's cleanup step raise each of ``errors`` in turn, then work again; the
    list, emptied as they are raised."""
    store = client.app[STORE]
    real_expire = store.expire

    async def failing_expire(now: float, lifetimes: Lifetimes, limit: int) -> Expired:
        if errors:
            raise errors.pop(0)
        return await real_expire(now, lifetimes, limit)

    store.expire = failing_expire  # type: ignore[method-assign]  # a store that fails first
    return errors


async def test_a_failing_pass_does_not_end_the_loop(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(cleanup_interval=0.02, stale_after=5)
    errors = fail_expire(client, [ConnectionError("store away"), ConnectionError("store away")])
    await post(client, event("a"))
    clock.advance(6)
    await eventually(lambda: states(client) == {"a": "stale"})
    assert not errors  # both raised


async def test_a_pass_put_off_by_an_unavailable_store_logs_no_error(
    make_client: MakeClient, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis away or other servers changing the same tasks: the store says so itself, and a
    traceback a second would drown the log. A bug still logs one."""
    client = await make_client(cleanup_interval=0.02, stale_after=5)
    fail_expire(client, [StoreUnavailable("Redis away"), RuntimeError("a bug")])
    await post(client, event("a"))
    clock.advance(6)
    await eventually(lambda: states(client) == {"a": "stale"})
    failed = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(failed) == 1  # the bug's, not the store's
    assert failed[0].exc_info is not None and str(failed[0].exc_info[1]) == "a bug"


async def test_a_pass_over_a_stale_storm_keeps_no_collected_list_of_every_id(
    make_client: MakeClient, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every garbage collection during the pass walked a list growing to the storm's size
    (100k ids: several ms a collection next to a million tasks)."""
    client = await make_client(stale_after=10)
    await post(client, [event(f"t{i}") for i in range(1000)])
    await post(client, [event(f"t{i}") for i in range(1000, 2000)])
    store = client.app[STORE]
    expire = store.expire
    seen: list[int] = []

    async def watched(now: float, lifetimes: Lifetimes, limit: int) -> Expired:
        seen.append(largest_tracked_holding("t0"))
        return await expire(now, lifetimes, limit)

    monkeypatch.setattr(store, "expire", watched)
    stale, _ = await cleanup(client, clock, 11)
    assert len(stale) == 2000
    assert len(seen) > 4 and max(seen) < 1000, seen
