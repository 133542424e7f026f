"""What every store must do, run against each: the memory store (the reference) and Redis.

The tests call the store directly: apply (order, seq, all or nothing), reads from its table,
delete, cleanup transitions, eviction at ``max_tasks``, and the change masks viewers are told.
A Redis store here talks to a real redis-server on a free port, under a key prefix of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from progressista.server.event import Event
from progressista.server.store import MemoryStore, StoreFull, TaskStore
from progressista.server.table import REMOVED
from progressista.server.task import ALL_FIELDS, FIELD_BIT, Lifetimes, Task

from .conftest import eventually
from .redis_server import RedisProcess, running_redis

if TYPE_CHECKING:
    from progressista.server.redis_store import RedisStore

LIFETIMES = Lifetimes(stale_after=10, abandon_after=100, retention=50, max_age=None)
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    with running_redis(tmp_path_factory.mktemp("redis")) as redis:
        yield redis


async def make_store(kind: str, redis: RedisProcess | None, max_tasks: int = 100) -> TaskStore:
    if kind == "memory":
        return MemoryStore(max_tasks)
    from progressista.server.redis_store import RedisStore

    assert redis is not None
    store = RedisStore(
        redis.url, lifetimes=LIFETIMES, max_tasks=max_tasks, prefix=f"test-{secrets.token_hex(4)}"
    )
    await store.start()
    assert store.problem() is None
    return store


async def another_server(redis: RedisProcess, store: RedisStore) -> RedisStore:
    """A second server on the same Redis keys as ``store`` (or its successor), started."""
    from progressista.server.redis_store import RedisStore

    other = RedisStore(redis.url, lifetimes=LIFETIMES, max_tasks=100, prefix=store.keys.prefix)
    await other.start()
    return other


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.slow)])
def kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def redis(kind: str, request: pytest.FixtureRequest) -> RedisProcess | None:
    if kind != "redis":
        return None
    process: RedisProcess = request.getfixturevalue("redis_process")
    return process


@pytest.fixture
async def store(kind: str, redis: RedisProcess | None) -> AsyncIterator[TaskStore]:
    store = await make_store(kind, redis)
    store.table.watch(lambda: None)  # record changes, as the hub does
    yield store
    await store.close()


@contextlib.asynccontextmanager
async def one_redis_store(redis: RedisProcess) -> AsyncIterator[RedisStore]:
    """A Redis store (one server) on a prefix of its own, closed afterwards."""
    from progressista.server.redis_store import RedisStore

    store = await make_store("redis", redis)
    assert isinstance(store, RedisStore)
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def writer_and_reader(
    redis: RedisProcess,
) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    """Two Redis stores on one prefix, as two servers: one writes, both replicate."""
    async with one_redis_store(redis) as writer:
        reader = await another_server(redis, writer)
        try:
            yield writer, reader
        finally:
            await reader.close()


def events(*raw: dict[str, Any]) -> list[Event]:
    return [msgspec.convert(event, Event) for event in raw]


async def until_cleanup_runs_here(store: TaskStore) -> None:
    """A Redis store runs cleanup only once it holds the lock; the memory store always does."""
    from progressista.server.redis_store import RedisStore

    if isinstance(store, RedisStore):
        await eventually(lambda: store.holds_cleanup_lock)


def states(store: TaskStore) -> dict[str, str]:
    return {task_id: task.state for task_id, task in store.table.tasks.items()}


async def test_a_batch_is_applied_in_order_and_counted(store: TaskStore) -> None:
    result = await store.apply(
        events({"task_id": "a", "n": 1}, {"task_id": "b", "n": 2}, {"task_id": "a", "n": 3}), NOW
    )
    assert (result.accepted, result.ignored) == (3, 0)
    tasks = store.table.tasks
    assert {task_id: task.n for task_id, task in tasks.items()} == {"a": 3, "b": 2}
    assert list(tasks) == ["a", "b"]  # in the order first stored
    # One revision per task changed, the table's being the last.
    assert {tasks["a"].rev, tasks["b"].rev} == {store.table.rev - 1, store.table.rev}


async def test_an_older_seq_is_ignored(store: TaskStore) -> None:
    await store.apply(events({"task_id": "a", "n": 10, "seq": 5}), NOW)
    result = await store.apply(events({"task_id": "a", "n": 1, "seq": 4}), NOW + 1)
    assert (result.accepted, result.ignored) == (0, 1)
    assert store.table.tasks["a"].n == 10


async def test_the_changes_name_the_fields_that_changed(store: TaskStore) -> None:
    await store.apply(events({"task_id": "a", "n": 1, "desc": "Loading"}), NOW)
    assert store.table.take_changes() == {"a": ALL_FIELDS}
    await store.apply(events({"task_id": "a", "n": 2, "desc": "Loading"}), NOW)
    changed = store.table.take_changes()["a"]
    assert changed & FIELD_BIT["n"] and changed & FIELD_BIT["updated_at"]
    assert not changed & FIELD_BIT["desc"]
    await store.delete(["a"])
    assert store.table.take_changes() == {"a": REMOVED}


async def test_when_full_the_longest_closed_make_room_else_nothing_is_stored(
    kind: str, redis: RedisProcess | None
) -> None:
    store = await make_store(kind, redis, max_tasks=3)
    try:
        await store.apply(events({"task_id": "done-early", "status": "close"}), NOW)
        await store.apply(
            events({"task_id": "done-late", "status": "close"}, {"task_id": "running"}), NOW + 1
        )

        result = await store.apply(events({"task_id": "new-1"}), NOW + 2)
        assert result.evicted == 1
        assert sorted(store.table.tasks) == ["done-late", "new-1", "running"]
        await store.apply(events({"task_id": "new-2"}), NOW + 3)
        with pytest.raises(StoreFull):
            await store.apply(events({"task_id": "running", "n": 5}, {"task_id": "new-3"}), NOW)
        assert store.table.tasks["running"].n == 0  # all or nothing
        assert sorted(store.table.tasks) == ["new-1", "new-2", "running"]
    finally:
        await store.close()


async def test_completed_and_failed_tasks_are_evicted_in_the_order_they_closed(
    kind: str, redis: RedisProcess | None
) -> None:
    store = await make_store(kind, redis, max_tasks=4)
    try:
        closings = [("c0", "close"), ("f1", "error"), ("c2", "close"), ("f3", "error")]
        for offset, (task_id, status) in enumerate(closings):
            await store.apply(events({"task_id": task_id, "status": status}), NOW + offset)
        gone = []
        for new in ("n1", "n2", "n3"):
            before = set(store.table.tasks)
            await store.apply(events({"task_id": new}), NOW + 10)
            gone += sorted(before - set(store.table.tasks))
        assert gone == ["c0", "f1", "c2"]
    finally:
        await store.close()


async def test_a_task_reopened_by_a_concurrent_write_is_not_evicted(
    kind: str, redis: RedisProcess | None
) -> None:
    store = await make_store(kind, redis, max_tasks=3)
    try:
        for offset, task_id in enumerate(["x", "y", "z"]):  # x closed longest ago
            await store.apply(
                events({"task_id": task_id, "seq": 1, "status": "close"}), NOW + offset
            )
        # x starts again and a new bar arrives, in two requests at once (one Redis call):
        # the new bar must evict y, not x, whose update was accepted.
        reopened, new = await asyncio.gather(
            store.apply(events({"task_id": "x", "n": 5, "seq": 2}), NOW + 10),
            store.apply(events({"task_id": "new", "seq": 1}), NOW + 10),
        )
        assert (reopened.accepted, new.accepted, new.evicted) == (1, 1, 1)
        await eventually(lambda: sorted(store.table.tasks) == ["new", "x", "z"])
        assert (store.table.tasks["x"].state, store.table.tasks["x"].n) == ("active", 5)
    finally:
        await store.close()


async def test_delete_removes_only_what_exists(store: TaskStore) -> None:
    await store.apply(events({"task_id": "a"}, {"task_id": "b"}), NOW)
    assert sorted(await store.delete(["a", "ghost"])) == ["a"]
    assert list(store.table.tasks) == ["b"]
    assert await store.delete(["a"]) == []


async def test_cleanup_walks_tasks_through_their_lifetimes(store: TaskStore) -> None:
    await until_cleanup_runs_here(store)
    await store.apply(
        events(
            {"task_id": "quiet", "total": 10, "rate": 1}, {"task_id": "done", "status": "close"}
        ),
        NOW,
    )
    expired = await store.expire(NOW + 11, LIFETIMES, 100)
    assert (expired.stale, expired.removed, expired.more) == (["quiet"], [], False)
    assert states(store) == {"quiet": "stale", "done": "completed"}
    assert store.table.tasks["quiet"].eta is None
    expired = await store.expire(NOW + 51, LIFETIMES, 100)
    assert (expired.stale, expired.removed) == ([], ["done"])
    expired = await store.expire(NOW + 111, LIFETIMES, 100)
    assert (expired.stale, expired.removed) == ([], ["quiet"])
    assert states(store) == {}


async def test_cleanup_goes_in_bounded_steps(store: TaskStore) -> None:
    await until_cleanup_runs_here(store)
    await store.apply(events(*({"task_id": f"t{i}"} for i in range(25))), NOW)
    steps = []
    while True:
        expired = await store.expire(NOW + 11, LIFETIMES, 10)
        steps.append(len(expired.stale))
        if not expired.more:
            break
    assert steps == [10, 10, 5]
    assert set(states(store).values()) == {"stale"}


async def test_the_table_counts_and_orders_each_state(store: TaskStore) -> None:
    await store.apply(events(*({"task_id": f"t{i}"} for i in range(5))), NOW)
    await store.apply(events({"task_id": "t1", "status": "close"}), NOW + 1)
    table = store.table
    assert table.counts() == {"active": 4, "stale": 0, "completed": 1, "failed": 0}
    assert table.newest("active", 2) == ["t4", "t3"]
    assert table.newest("completed", 5) == ["t1"]


def test_a_missing_redis_py_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from progressista.server import redis_store

    real_import = builtins.__import__

    def no_redis(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("redis"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_redis)
    with pytest.raises(redis_store.MissingRedis) as caught:
        redis_store.RedisStore("redis://127.0.0.1:1/0", lifetimes=LIFETIMES, max_tasks=10)
    assert str(caught.value) == (
        "the Redis store needs redis-py: pip install 'progressista[redis]'"
    )


@pytest.mark.slow
async def test_redis_holds_each_task_with_its_revision_and_a_lifetime(
    redis_process: RedisProcess,
) -> None:
    import redis.asyncio

    async with one_redis_store(redis_process) as store:
        await store.apply(events({"task_id": "a/b c", "n": 4, "status": "close"}), NOW)
        raw = redis.asyncio.from_url(redis_process.url)
        key = store.keys.task("a/b c")
        value = await raw.get(key)
        assert isinstance(value, bytes)
        rev, _, data = value.partition(b":")
        assert int(rev) == store.table.tasks["a/b c"].rev
        assert msgspec.msgpack.decode(data)["n"] == 4
        # Completed: removed after retention (50 s) by cleanup, and by Redis an hour later.
        ttl = await raw.pttl(key)
        assert 3_600_000 < ttl <= 3_650_000
        assert await raw.xlen(store.keys.changes) == 1
        await raw.aclose()


async def test_a_store_url_redis_py_cannot_use_stops_the_start() -> None:
    from progressista.server.redis_store import BadRedisUrl, RedisStore

    store = RedisStore("redis://:pw@127.0.0.1:1/0?foo=bar", lifetimes=LIFETIMES, max_tasks=10)
    with pytest.raises(BadRedisUrl) as caught:
        await store.start()  # before any connection: the same at every start, so say it once
    message = str(caught.value)
    assert message.startswith("--store redis://:***@127.0.0.1:1/0?foo=bar: ")
    assert "'foo'" in message


@pytest.mark.slow
async def test_a_redis_that_refuses_the_settings_stops_the_start(
    tmp_path: Path, redis_process: RedisProcess
) -> None:
    """A database index out of range, a wrong password, no password where one is required:
    Redis says so at every attempt, so the start stops and says why (password hidden),
    instead of serving 503 and retrying for ever."""
    import redis.asyncio

    from progressista.server.redis_store import BadRedisUrl, RedisStore

    out_of_range = redis_process.url.rsplit("/", 1)[0] + "/99"
    with running_redis(tmp_path) as guarded:
        raw = redis.asyncio.from_url(guarded.url)
        await raw.config_set("requirepass", "right")
        await raw.aclose()
        wrong = guarded.url.replace("redis://", "redis://:wrong@")
        for url, said in (
            (out_of_range, "DB index is out of range"),
            (wrong, "invalid username-password pair"),
            (guarded.url, "Authentication required"),
        ):
            store = RedisStore(url, lifetimes=LIFETIMES, max_tasks=10)
            with pytest.raises(BadRedisUrl) as caught:
                await store.start()
            message = str(caught.value)
            assert said in message and "wrong" not in message, message
            assert message.startswith(f"--store {url.replace(':wrong@', ':***@')}: ")
            await store.close()
        right = RedisStore(
            guarded.url, lifetimes=LIFETIMES, max_tasks=10, password="right", prefix="ok"
        )
        await right.start()  # the right password: it serves
        assert right.problem() is None
        await right.close()


def test_keys_share_one_hash_tag() -> None:
    from progressista.server.redis_store import RedisKeys

    keys = RedisKeys("my*app")
    names = [keys.task("x"), keys.revision, keys.changes, keys.epoch, keys.cleanup_lock]
    assert all(name.startswith("{my*app}:") for name in names)
    assert keys.task_pattern == "{my\\*app}:task:*"


@pytest.mark.slow
async def test_a_replica_that_missed_changes_reloads_and_ends_equal_to_redis(
    redis_process: RedisProcess,
) -> None:
    import redis.asyncio

    async with writer_and_reader(redis_process) as (writer, reader):
        await writer.apply(events({"task_id": "a", "n": 1}, {"task_id": "b", "n": 1}), NOW)
        await eventually(lambda: sorted(reader.table.tasks) == ["a", "b"])
        # Changes the stream no longer holds (trimmed away): a task written behind its back,
        # one deleted, and revisions taken.
        raw = redis.asyncio.from_url(redis_process.url)
        ghost = Task(task_id="ghost", n=7)
        rev = await raw.incrby(writer.keys.revision, 3)
        await raw.set(writer.keys.task("ghost"), b"%d:" % (rev - 1) + msgspec.msgpack.encode(ghost))
        await raw.delete(writer.keys.task("b"))
        await raw.aclose()
        await writer.apply(events({"task_id": "a", "n": 2}), NOW + 1)
        await eventually(lambda: sorted(reader.table.tasks) == ["a", "ghost"])
        assert reader.table.tasks["a"].n == 2
        assert reader.table.tasks["ghost"].n == 7


@pytest.mark.slow
async def test_a_redis_that_lost_its_data_is_noticed_and_the_replica_starts_over(
    redis_process: RedisProcess,
) -> None:
    import redis.asyncio

    async with one_redis_store(redis_process) as store:
        await store.apply(events({"task_id": "before", "n": 1}), NOW)
        generation = store.table.generation
        raw = redis.asyncio.from_url(redis_process.url)
        for key in await raw.keys(f"{{{store.keys.prefix}}}:*"):
            await raw.delete(key)
        await raw.aclose()
        # Revisions start again from 1 in the emptied Redis; the first write shows it.
        await store.apply(events({"task_id": "after", "n": 1}), NOW + 1)
        await eventually(lambda: sorted(store.table.tasks) == ["after"])
        assert store.table.generation > generation


@pytest.mark.slow
async def test_redis_keeps_finished_jobs_after_their_tasks_and_a_restart(
    redis_process: RedisProcess,
) -> None:
    from progressista.server.redis_store import RedisStore

    first = await make_store("redis", redis_process)
    assert isinstance(first, RedisStore)
    await eventually(lambda: first.holds_cleanup_lock)
    await first.apply(events({"task_id": "a", "status": "close", "meta": {"job": "etl"}}), NOW)
    await first.expire(NOW + 1, LIFETIMES, 100)  # the lock's holder writes the finished run
    await first.delete(["a"])
    await first.close()
    again = await another_server(redis_process, first)
    try:
        assert again.table.tasks == {}
        job = again.table.jobs.latest("etl")
        assert job is not None
        assert (job.id, job.state, job.tasks["completed"]) == ("etl#1", "completed", 1)
    finally:
        await again.close()


async def _job_server(redis: RedisProcess, prefix: str) -> RedisStore:
    """A server on ``prefix`` whose job runs complete 5 s after their last bar."""
    from progressista.server.job import JobIndex
    from progressista.server.redis_store import RedisStore

    store = RedisStore(
        redis.url, lifetimes=LIFETIMES, max_tasks=100, prefix=prefix, jobs=JobIndex(gap=5.0)
    )
    await store.start()
    return store


def _in_job(task_id: str, **fields: Any) -> list[Event]:
    return events({"task_id": task_id, "meta": {"job": "etl"}, **fields})


def _runs(store: RedisStore) -> dict[str, tuple[str, dict[str, int], float, list[str]]]:
    return {
        job.id: (job.state, job.tasks, job.started_at, sorted(store.table.jobs.members(job.id)))
        for job in store.table.jobs.jobs()
    }


@pytest.mark.slow
async def test_a_restart_rebuilds_the_job_runs_as_they_were_live(
    redis_process: RedisProcess,
) -> None:
    """Loaded after a restart, a bar joined its run by its last change, not by its start:
    bars run one after another, each longer than the gap, made a run each (and a false
    "completed" alert each, "1 bar in 0 s"). A finished run's record was then skipped, its
    key taken. Now the records come first, the tasks rejoin them, and the running run is
    rebuilt from its tasks by their creation, under the number it had."""
    prefix = f"test-{secrets.token_hex(4)}"
    first = await _job_server(redis_process, prefix)
    try:
        await eventually(lambda: first.holds_cleanup_lock)
        for i in range(3):  # 8 s each, one after another: one run
            await first.apply(_in_job(f"a{i}", n=1), NOW + 8 * i)
            await first.apply(_in_job(f"a{i}", status="close", n=5), NOW + 8 * i + 8)
        first.table.jobs.expire(NOW + 30)  # the gap has passed: etl#1 completed
        await first.expire(NOW + 30, LIFETIMES, 100)  # and its record written
        await first.apply(_in_job("b0", n=1), NOW + 40)  # etl#2
        await first.apply(_in_job("b0", status="close", n=5), NOW + 48)
        await first.apply(_in_job("b1", n=1), NOW + 49)
        live = _runs(first)
        assert live == {
            "etl#1": ("completed", _counts(completed=3), NOW, ["a0", "a1", "a2"]),
            "etl#2": ("running", _counts(active=1, completed=1), NOW + 40, ["b0", "b1"]),
        }
    finally:
        await first.close()
    again = await _job_server(redis_process, prefix)
    try:
        assert _runs(again) == live
        # Without its record (a crash before cleanup wrote it), the run is rebuilt whole.
        raw = again._redis
        for key in await raw.keys(again.keys.job("*")):
            await raw.delete(key)
    finally:
        await again.close()
    rebuilt = await _job_server(redis_process, prefix)
    try:
        assert _runs(rebuilt) == live
    finally:
        await rebuilt.close()


@pytest.mark.slow
async def test_a_finished_runs_record_follows_what_its_bars_do_after(
    redis_process: RedisProcess,
) -> None:
    """A run fails as soon as a bar fails, and goes on counting its other bars: its record,
    written once when it finished, came back after a restart with a bar still active."""
    prefix = f"test-{secrets.token_hex(4)}"
    first = await _job_server(redis_process, prefix)
    try:
        await eventually(lambda: first.holds_cleanup_lock)
        await first.apply([*_in_job("a", n=1), *_in_job("b", n=1)], NOW)
        await first.apply(_in_job("b", status="error", error="boom"), NOW + 5)
        await first.expire(NOW + 6, LIFETIMES, 100)  # failed: its record written
        await first.apply(_in_job("a", status="close", n=5), NOW + 10)
        await first.expire(NOW + 11, LIFETIMES, 100)  # and written again
        live = _runs(first)
        assert live == {"etl#1": ("failed", _counts(completed=1, failed=1), NOW, ["a", "b"])}
    finally:
        await first.close()
    again = await _job_server(redis_process, prefix)
    try:
        assert _runs(again) == live
    finally:
        await again.close()


def _counts(**given: int) -> dict[str, int]:
    return {state: given.get(state, 0) for state in ("active", "stale", "completed", "failed")}


async def _racing_writes(
    store: Any, monkeypatch: pytest.MonkeyPatch, calls: list[int]
) -> tuple[Any, Any]:
    """Two writes to task "a" queued in one tick, one script call each: the second is merged
    while the first is in Redis. ``calls`` gets the size of every script call."""
    from progressista.server import redis_store

    monkeypatch.setattr(redis_store, "GROUP_CHANGES", 1)
    call_apply = store._call_apply

    async def counted(changes: list[Any], *args: Any) -> Any:
        calls.append(len(changes))
        return await call_apply(changes, *args)

    monkeypatch.setattr(store, "_call_apply", counted)
    first, second = await asyncio.gather(
        store.apply(events({"task_id": "a", "n": 2, "seq": 2}), NOW + 1),
        store.apply(events({"task_id": "a", "postfix": "x", "seq": 3}), NOW + 2),
    )
    return first, second


@pytest.mark.slow
async def test_a_write_merged_while_the_one_before_is_in_redis_expects_its_revision(
    redis_process: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with one_redis_store(redis_process) as store:
        await store.apply(events({"task_id": "a", "n": 1, "seq": 1}), NOW)
        calls: list[int] = []
        first, second = await _racing_writes(store, monkeypatch, calls)
        assert (first.accepted, second.accepted) == (1, 1)
        assert calls == [1, 1]  # the second expected the revision the first got: no retry
        await eventually(lambda: store.table.tasks["a"].postfix == "x")
        assert store.table.tasks["a"].n == 2


@pytest.mark.slow
async def test_two_servers_writing_the_same_tasks_at_once_lose_no_write(
    redis_process: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seven writers on two servers, each owning one field of the same few tasks: a merge made
    on a state another write changed meanwhile (while a call was in Redis, while the loop ran
    between writes) must be caught by its revision and made again, or it would put back an
    older value of another writer's field."""
    from progressista.server import redis_store
    from progressista.server.store import StoreUnavailable

    monkeypatch.setattr(redis_store, "YIELD_EVERY", 1)  # the loop runs between writes
    random = __import__("random").Random(7)
    task_ids = [f"t{index}" for index in range(4)]
    fields = ["desc", "postfix", "unit", "n", "total", "elapsed", "rate"]
    last: dict[tuple[str, str], str | float] = {}

    async def write(store: TaskStore, field: str) -> None:
        for k in range(1, 31):
            value: str | float = str(k) if field in ("desc", "postfix", "unit") else float(k)
            batch = [{"task_id": task_id, field: value} for task_id in random.sample(task_ids, 2)]
            while True:  # as a client does when told to retry
                try:
                    await store.apply(events(*batch), NOW)
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.01)
            last.update({(event["task_id"], field): value for event in batch})
            await asyncio.sleep(random.random() / 500)

    def seen(store: TaskStore) -> dict[tuple[str, str], str | float]:
        tasks = store.table.tasks
        return {(task_id, field): getattr(tasks[task_id], field) for task_id, field in last}

    async with writer_and_reader(redis_process) as (a, b):
        await asyncio.gather(*(write((a, b)[i % 2], field) for i, field in enumerate(fields)))
        await eventually(lambda: seen(a) == last and seen(b) == last)
        third = await another_server(redis_process, a)
        try:
            assert seen(third) == last
        finally:
            await third.close()


@pytest.mark.slow
async def test_a_writer_that_fails_fails_its_writes_instead_of_hanging_them(
    redis_process: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with one_redis_store(redis_process) as store:
        pack = store._pack

        def broken(changes: list[Any]) -> Any:
            raise RuntimeError("a bug in the writer")

        monkeypatch.setattr(store, "_pack", broken)
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(store.apply(events({"task_id": f"t{i}", "n": 1}), NOW) for i in range(3)),
                return_exceptions=True,
            ),
            timeout=10,
        )
        assert [type(outcome) for outcome in outcomes] == [RuntimeError] * 3
        monkeypatch.setattr(store, "_pack", pack)
        result = await store.apply(events({"task_id": "t0", "n": 2}), NOW)  # a new writer
        assert result.accepted == 1 and store.table.tasks["t0"].n == 2


@pytest.mark.slow
async def test_a_writer_that_fails_with_a_call_in_redis_answers_it_by_what_redis_did(
    redis_process: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    from progressista.server import redis_store

    async with one_redis_store(redis_process) as store:
        monkeypatch.setattr(redis_store, "GROUP_CHANGES", 1)  # one write per call
        pack, packs = store._pack, []

        def second_breaks(changes: list[Any]) -> Any:
            packs.append(len(changes))
            if len(packs) == 2:  # while the first write's call is in Redis
                raise RuntimeError("a bug in the writer")
            return pack(changes)

        monkeypatch.setattr(store, "_pack", second_breaks)
        first, second = await asyncio.wait_for(
            asyncio.gather(
                store.apply(events({"task_id": "a", "n": 1}), NOW),
                store.apply(events({"task_id": "b", "n": 1}), NOW),
                return_exceptions=True,
            ),
            timeout=10,
        )
        assert not isinstance(first, BaseException) and first.accepted == 1  # Redis stored it
        assert isinstance(second, RuntimeError)
        assert set(store.table.tasks) == {"a"}
        monkeypatch.setattr(store, "_pack", pack)
        await store.apply(events({"task_id": "b", "n": 2}), NOW)  # a new writer, alone
        assert store.table.tasks["b"].n == 2


@pytest.mark.slow
async def test_a_write_merged_on_one_that_did_not_land_is_merged_again(
    redis_process: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with one_redis_store(redis_process) as store:
        await store.apply(events({"task_id": "a", "n": 1, "seq": 1}), NOW)
        # This replica believes "a" older than Redis holds it (as if another server's change
        # had not reached it yet): the first write's call finds the revision moved.
        store.table.tasks["a"].rev -= 1
        calls: list[int] = []
        first, second = await _racing_writes(store, monkeypatch, calls)
        assert (first.accepted, second.accepted) == (1, 1)
        assert calls == [1, 1, 1]  # refused, the first again, then the second merged again
        reader = await another_server(redis_process, store)
        try:
            stored = reader.table.tasks["a"]
            assert (stored.n, stored.postfix, stored.seq) == (2, "x", 3)
        finally:
            await reader.close()


@pytest.mark.slow
async def test_a_write_is_in_the_replica_when_redis_answers_and_the_stream_skips_it(
    redis_process: RedisProcess, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with one_redis_store(redis_process) as store:
        await store.apply(events({"task_id": "a", "n": 1, "seq": 1}), NOW)
        # Hold the stream back: the next write can only reach the replica with Redis's answer.
        gate = asyncio.Event()
        held: list[int] = []
        xread = store._redis.xread

        async def held_back(*args: Any, **kwargs: Any) -> Any:
            held.append(1)
            await gate.wait()
            return await xread(*args, **kwargs)

        monkeypatch.setattr(store._redis, "xread", held_back)
        await eventually(lambda: bool(held))  # the read in progress has ended: the stream is held
        result = await store.apply(events({"task_id": "a", "n": 2, "seq": 2}), NOW + 1)
        assert result.accepted == 1
        assert store.table.tasks["a"].n == 2  # read back from this server at once
        gate.set()  # the stream brings the entry back: skipped, not taken for a hole
        await store.apply(events({"task_id": "a", "n": 3, "seq": 3}), NOW + 2)
        await eventually(lambda: not store._applied_early)
        assert store.table.tasks["a"].n == 3
        assert "missed changes" not in caplog.text


@pytest.mark.slow
async def test_a_redis_that_refuses_writes_is_a_503_to_retry_not_a_hung_request(
    redis_process: RedisProcess,
) -> None:
    import redis.asyncio

    from progressista.server.store import StoreUnavailable

    async with one_redis_store(redis_process) as store:
        idle = await another_server(redis_process, store)
        raw = redis.asyncio.from_url(redis_process.url)
        try:
            await store.apply(events({"task_id": "a", "n": 1}), NOW)
            await raw.config_set("maxmemory", 1)  # full: Redis answers writes with an OOM error
            # A server no worker writes to finds out too (a probe), so the balancer skips it.
            await eventually(lambda: "refuses writes" in (idle.problem() or ""))
            with pytest.raises(StoreUnavailable) as caught:
                await asyncio.wait_for(store.apply(events({"task_id": "a", "n": 2}), NOW), 10)
            assert str(caught.value).startswith(
                "the server's Redis store refused the write (command not allowed when used memory"
            )
            # Refused before it began (the script's #!lua line): nothing of the batch was written.
            assert await raw.get(store.keys.revision) == b"1"
            problem = store.problem()  # what /readyz and viewers are told
            assert problem is not None and "refuses writes" in problem
            await raw.config_set("maxmemory", 0)
            await eventually(lambda: store.problem() is None)  # found by a probe, before any write
            await eventually(lambda: idle.problem() is None)
            result = await asyncio.wait_for(store.apply(events({"task_id": "a", "n": 3}), NOW), 10)
            assert result.accepted == 1
            assert store.table.tasks["a"].n == 3
        finally:
            await raw.config_set("maxmemory", 0)
            await raw.aclose()
            await idle.close()


@pytest.mark.slow
async def test_the_change_stream_keeps_within_its_bytes_when_entries_grow(
    redis_process: RedisProcess,
) -> None:
    import redis.asyncio

    from progressista.server.redis_store import MIN_STREAM_ENTRIES, RedisStore

    store = RedisStore(
        redis_process.url,
        lifetimes=LIFETIMES,
        max_tasks=1000,
        prefix=f"test-{secrets.token_hex(4)}",
        stream_bytes=1_000_000,
    )
    await store.start()
    raw = redis.asyncio.from_url(redis_process.url)
    try:
        small = [{"task_id": "small", "n": n} for n in range(1, 41)]
        for event in small:  # entries of about 100 bytes: the entry count is the bound
            await store.apply(events(event), NOW)
        assert await raw.xlen(store.keys.changes) == 40
        text = "x" * 1000
        for batch in range(100):  # entries of about 28 KB: the bytes are the bound
            big = [{"task_id": f"big{i}", "n": batch + 1, "desc": text} for i in range(20)]
            await store.apply(events(*big), NOW)
        length = await raw.xlen(store.keys.changes)
        assert MIN_STREAM_ENTRIES < length < 50  # about 1 MB of them, not 100
        used = await raw.memory_usage(store.keys.changes, samples=0)
        assert used is not None and used < 1_300_000
    finally:
        await raw.aclose()
        await store.close()


@pytest.mark.slow
async def test_a_reload_that_fails_is_retried_and_the_replica_is_not_ready_meanwhile(
    redis_process: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis.asyncio
    import redis.exceptions

    async with writer_and_reader(redis_process) as (writer, reader):
        await writer.apply(events({"task_id": "a", "n": 1}), NOW)
        await eventually(lambda: "a" in reader.table.tasks)
        load = reader._all_tasks
        failures: list[str] = []

        async def failing_once() -> list[Task]:
            if not failures:
                failures.append(str(reader.problem()))
                raise redis.exceptions.ConnectionError("Redis went away mid-load")
            return await load()

        monkeypatch.setattr(reader, "_all_tasks", failing_once)
        raw = redis.asyncio.from_url(redis_process.url)
        await raw.incrby(writer.keys.revision, 2)  # revisions whose changes it never sees
        await raw.aclose()
        await writer.apply(events({"task_id": "a", "n": 2}), NOW + 1)
        await eventually(lambda: bool(failures))
        assert failures == ["reloading the tasks: this server missed changes in the stream"]
        await eventually(lambda: reader.table.tasks["a"].n == 2 and reader.problem() is None)


@pytest.mark.slow
async def test_a_redis_back_from_an_older_copy_makes_every_replica_start_over(
    redis_process: RedisProcess,
) -> None:
    import redis.asyncio

    async with writer_and_reader(redis_process) as (writer, reader):
        for n in (1, 2):  # revisions 1 and 2
            await writer.apply(events({"task_id": "a", "n": n, "seq": n}), NOW)
        await eventually(lambda: "a" in reader.table.tasks and reader.table.tasks["a"].n == 2)
        # Redis restarts from a snapshot taken at revision 1 (the epoch key is in it too)...
        raw = redis.asyncio.from_url(redis_process.url)
        older = Task(task_id="a", n=1, seq=1, rev=1)
        await raw.set(writer.keys.revision, 1)
        await raw.set(writer.keys.task("a"), b"1:" + msgspec.msgpack.encode(older))
        await raw.aclose()
        # ... and gives revision 2 again, to another state of "a" than the replicas hold at 2.
        await writer.apply(events({"task_id": "a", "n": 3, "seq": 3}), NOW + 1)
        await eventually(lambda: writer.table.tasks["a"].n == reader.table.tasks["a"].n == 3)


@pytest.mark.slow
async def test_while_a_server_loads_the_stream_keeps_what_it_will_need(
    redis_process: RedisProcess, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from progressista.server.redis_store import RedisStore

    prefix = f"test-{secrets.token_hex(4)}"

    def small_stream_store() -> RedisStore:  # about 20 entries of 28 KB
        return RedisStore(
            redis_process.url,
            lifetimes=LIFETIMES,
            max_tasks=1000,
            prefix=prefix,
            stream_bytes=100_000,
        )

    writer = small_stream_store()
    await writer.start()
    loader = small_stream_store()
    load = loader._all_tasks
    writes_done = asyncio.Event()

    async def slow_load() -> list[Task]:  # a big board: the load takes a while
        await writes_done.wait()
        return await load()

    monkeypatch.setattr(loader, "_all_tasks", slow_load)
    loads: list[int] = []
    load_all = loader._load

    async def counted_load() -> None:
        loads.append(1)
        await load_all()

    monkeypatch.setattr(loader, "_load", counted_load)
    starting = asyncio.ensure_future(loader.start())
    try:
        await eventually(lambda: loader.problem() is not None)  # it has begun loading
        text = "x" * 1000
        for batch in range(60):  # three times what the stream keeps while nobody loads
            big = [{"task_id": f"big{i}", "n": batch + 1, "desc": text} for i in range(20)]
            await writer.apply(events(*big), NOW)
        writes_done.set()
        await starting
        await writer.apply(events({"task_id": "big0", "n": 61}), NOW)  # read after the rest
        await eventually(
            lambda: "big0" in loader.table.tasks and loader.table.tasks["big0"].n == 61
        )
        assert len(loads) == 1  # what was written during the load was still in the stream
        assert "missed changes" not in caplog.text
    finally:
        writes_done.set()
        await loader.close()
        await writer.close()
