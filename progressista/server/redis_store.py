"""The Redis store: progress that survives restarts, and several servers serving one live view.

Redis is the source of truth; every server keeps a replica of the tasks in its own
:class:`~progressista.server.table.TaskTable`, fed by a Redis Stream of changes, so readers (the
hub, ``/tasks``, the page, ``/metrics``) keep reading memory and every server's viewers see every
server's changes.

**Writes.** A server merges a batch against its replica (the same :func:`stage` as the memory
store: one set of merge rules), then one Lua script checks that every task it merged from is still
at the revision it read, and only then stores them all, takes their revisions from one counter
and appends the batch to the stream, in one atomic step. Two servers writing one task therefore
never store an older state over a newer one: the second finds the revision moved, gets the
current state back, merges again and retries. Checking revisions rather than merging in Lua keeps
the merge rules in Python, written once.

**Replicas.** Each server reads the stream from where its snapshot began and applies every entry
in order, so all replicas pass through the same states. A server's own entry is applied when
Redis answers the script call, if every entry before it is applied by then (the stream then skips
it), else when the stream brings it back; either way, in order, and a write is answered once it
is in this server's replica. Revisions are
consecutive across entries: a server that finds a hole (it fell behind a trimmed stream: a long
outage, a paused process) reloads instead of missing changes. A Redis that lost its data (a fresh
epoch key) makes every server replace its replica and its viewers start over.

**Cleanup** is decided by one server at a time, the holder of a lock with an expiry that it
renews; another takes over within the lock's lifetime when it dies. Its transitions go through
the same checked script and the same stream.

**Keys.** Every key shares one prefix with a hash tag, ``{progressista}:``, so every script
touches one slot: the store runs on Redis Cluster and Valkey as on a single Redis. All names and
lifetimes are in :class:`RedisKeys`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from ..settings import redact_url as redacted
from .alert import Alert
from .event import Event
from .job import Job, JobIndex
from .store import ApplyResult, Expired, StoreFull, StoreUnavailable, room_for, stage
from .table import TaskTable
from .task import ALL_FIELDS, Lifetimes, Task, went_stale

__all__ = ["BadRedisUrl", "MissingRedis", "RedisKeys", "RedisStore"]

log = logging.getLogger(__name__)

#: The fewest entries the stream is trimmed to, however large they are.
MIN_STREAM_ENTRIES = 20

#: A hole found this soon (s) after a load means the stream is too short for this write rate.
RELOAD_SOON = 30.0

#: While a server loads every task (at most this long, ms), the stream keeps this many times
#: more entries: the changes made during a load of a big board must still be there after it.
LOAD_HOLD_MS = 60_000
LOAD_HOLD_FACTOR = 4

#: How long the probe key lives (ms).
PROBE_MS = 1000

#: Seconds between two log lines about writes Redis refused.
REFUSAL_LOG_EVERY = 60.0

#: How long the cleanup lock lasts without renewal (ms): a dead holder's successor takes over
#: within this. Renewed every third of it.
CLEANUP_LOCK_MS = 5000
#: A task key outlives the moment cleanup would remove it by this much (ms), so that Redis
#: drops it by itself when no server runs cleanup, and never before cleanup would.
TTL_MARGIN_MS = 3_600_000
#: The writes of several requests share one script call up to about this many changes.
GROUP_CHANGES = 2000
#: Merging a group lets the event loop run after about this many events.
YIELD_EVERY = 200
#: Attempts at a write whose tasks other servers keep changing under it.
WRITE_ATTEMPTS = 8
#: Seconds a write waits for its own change to come back from the stream (read-your-writes).
ECHO_TIMEOUT = 2.0
#: Seconds between reconnection attempts, at most.
MAX_BACKOFF = 5.0
#: Entries read from the stream at a time.
READ_COUNT = 500
#: How long one read of the stream waits for news (ms); also how soon close() is heard.
READ_BLOCK_MS = 500
#: Seconds start-up waits for Redis before serving without it (503 until it answers).
STARTUP_WAIT = 5.0


@dataclass(frozen=True)
class RedisKeys:
    """Every key the store uses and what it holds; all share ``prefix``'s hash tag."""

    prefix: str

    @property
    def tag(self) -> str:
        return "{" + self.prefix + "}"

    def task(self, task_id: str) -> str:
        """A string: the task's revision, a colon, the task (msgpack). Expires TTL_MARGIN_MS
        after cleanup would have removed it."""
        return f"{self.tag}:task:{task_id}"

    @property
    def task_pattern(self) -> str:
        """What SCAN matches to find every task key."""
        return f"{self._glob_tag}:task:*"

    @property
    def _glob_tag(self) -> str:
        """The tag, escaped for a SCAN pattern."""
        return "".join(f"\\{c}" if c in "*?[]\\" else c for c in self.tag)

    @property
    def revision(self) -> str:
        """An integer: the last revision given; every change takes the next."""
        return f"{self.tag}:rev"

    @property
    def changes(self) -> str:
        """A stream of changes, trimmed to about ``redis_stream_length`` entries or
        ``redis_stream_bytes``, whichever is fewer. Each entry: ``r`` = the revision of its
        first change, ``n`` and ``b`` = the changes as the apply script got them (see
        RedisStore._pack): per change, id, revision read, mask of changed fields, the task
        (msgpack) or nothing when removed, and its ttl; ``s`` = the id of the server that
        wrote it."""
        return f"{self.tag}:changes"

    def job(self, key: str) -> str:
        """A finished job run (``name#run``), msgpack, kept after its tasks expired; written by
        the cleanup lock's holder; expires ``job_retention`` after the run ended."""
        return f"{self.tag}:job:{key}"

    @property
    def job_pattern(self) -> str:
        """What SCAN matches to find every finished job run's key."""
        return f"{self._glob_tag}:job:*"

    def alert(self, alert_id: str) -> str:
        """An alert (msgpack), set once by whichever server saw it first; expires after a day."""
        return f"{self.tag}:alert:{alert_id}"

    @property
    def alerts_pending(self) -> str:
        """A set of ``<destination index>|<alert id>``: deliveries not done yet."""
        return f"{self.tag}:alerts-pending"

    @property
    def epoch(self) -> str:
        """A random token set once: a different one means Redis lost its data."""
        return f"{self.tag}:epoch"

    @property
    def loading(self) -> str:
        """A sorted set of the servers loading every task, each until its hold expires (ms):
        while any is, the stream is trimmed LOAD_HOLD_FACTOR times less, so that what it
        must read after its load is still there."""
        return f"{self.tag}:loading"

    @property
    def probe(self) -> str:
        """Written every few seconds by each server, to learn whether Redis takes writes."""
        return f"{self.tag}:probe"

    @property
    def cleanup_lock(self) -> str:
        """The id of the server running cleanup; expires CLEANUP_LOCK_MS after its renewal."""
        return f"{self.tag}:cleanup-lock"


# KEYS: revision counter, stream, loading servers. ARGV: stream length, the task key prefix, the
# changes in two strings (see RedisStore._pack): a msgpack array of numbers, five per change (id
# length, revision read (0: absent), mask, data length (0 removes), ttl in ms), and the ids and
# data laid end to end; the writing server's id; and how many times more entries to keep while
# a server loads (its hold in the loading set not expired). Two arguments for the changes: redis-py
# spends microseconds on every argument. All or nothing: any revision that moved returns
# {0, {index, stored value, ...}}; else the changes are stored and the same two strings are
# appended to the stream with the revision of the first and the writer's id (a server knows its
# own entries by it). (Task keys are not in KEYS: they share the prefix's hash tag, hence the slot.)
# The `#!lua` line (Redis 7) makes Redis check its memory before it runs a writing script: a
# Redis at maxmemory refuses the whole batch instead of failing at its first write, halfway.
_APPLY = """#!lua
local numbers = cmsgpack.unpack(ARGV[3])
local body = ARGV[4]
local prefix = ARGV[2]
local changes = {}
local at = 1
for i = 1, #numbers, 5 do
  local id = string.sub(body, at, at + numbers[i] - 1)
  at = at + numbers[i]
  local data = string.sub(body, at, at + numbers[i + 3] - 1)
  at = at + numbers[i + 3]
  changes[#changes + 1] = {prefix .. id, numbers[i + 1], data, numbers[i + 4]}
end
local conflicts = {}
for i, change in ipairs(changes) do
  -- Only the revision in front: the task after it need not be copied into Lua.
  local head = redis.call('GETRANGE', change[1], 0, 20)
  local current = tonumber(string.match(head, '^(%d+):') or '0')
  if current ~= change[2] then
    conflicts[#conflicts + 1] = i
    conflicts[#conflicts + 1] = redis.call('GET', change[1]) or ''
  end
end
if #conflicts > 0 then
  return {0, conflicts}
end
local count = #changes
local base = redis.call('INCRBY', KEYS[1], count) - count + 1
for i, change in ipairs(changes) do
  if change[3] == '' then
    redis.call('DEL', change[1])
  else
    redis.call('SET', change[1], (base + i - 1) .. ':' .. change[3], 'PX', change[4])
  end
end
local now = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now[1] * 1000 + math.floor(now[2] / 1000))
local keep = tonumber(ARGV[1])
if redis.call('ZCARD', KEYS[3]) > 0 then
  keep = keep * ARGV[6]
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', keep, '*', 'r', base, 'n', ARGV[3], 'b', ARGV[4],
  's', ARGV[5])
return {1, base}
"""

# KEYS: epoch, revision counter, stream, loading servers. ARGV: a fresh epoch (kept only if none
# is set), this server's id and how long its hold lasts (ms): writers keep more of the stream
# until it has loaded. Returns the epoch, the last revision and the last stream id, read together.
_BOOT = """#!lua flags=allow-oom
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local now = redis.call('TIME')
redis.call('ZADD', KEYS[4], now[1] * 1000 + math.floor(now[2] / 1000) + ARGV[3], ARGV[2])
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local id = '0-0'
if #last > 0 then
  id = last[1][1]
end
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]) or '0', id}
"""

# KEYS: the alert's key, the pending set. ARGV: the alert (msgpack), its lifetime in s, then the
# pending entries. Records the alert and its deliveries once: 0 if it was already there.
_RECORD_ALERT = """#!lua
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  for i = 3, #ARGV do
    redis.call('SADD', KEYS[2], ARGV[i])
  end
  return 1
end
return 0
"""

# KEYS: the lock. ARGV: our id, its lifetime in ms. 1 while we hold it.
_RENEW = """#!lua flags=allow-oom
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

#: One change a write makes: task id, the revision it was read at (0: absent), the mask of
#: the fields that changed, and the task after it, or None to remove it.
Change = tuple[str, int, int, Task | None]
#: The freshest state of a task as a write sees it.
Lookup = Callable[[str], Task | None]
#: Works out a write's changes and its result, against the freshest state (again on a retry).
Prepare = Callable[[Lookup], tuple[list[Change], Any]]


#: Changes as the apply script reads them (RedisStore._pack): five numbers per change, still to
#: be encoded (a revision read may change until the call goes), and the ids and tasks end to end.
_Packed = tuple[list[int], bytes]

#: A change on its way to Redis: a Change and the time its write was made at (for the TTL).
_Pending = tuple[str, int, int, Task | None, float]


class _Write:
    """One caller's write, queued for the writer."""

    __slots__ = ("future", "now", "prepare", "size")

    def __init__(self, prepare: Prepare, size: int, now: float) -> None:
        self.prepare = prepare
        self.size = size
        self.now = now
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()


class _Flight:
    """A script call sent to Redis: the writes it stores, what each caller gets, its change of
    each task (the state it stores is the fourth item: None when removed), and the call."""

    __slots__ = ("call", "done", "group", "pending")

    def __init__(
        self,
        group: list[_Write],
        done: list[tuple[_Write, Any]],
        pending: dict[str, _Pending],
        call: asyncio.Future[dict[str, Task | None] | int],
    ) -> None:
        self.group = group
        self.done = done
        self.pending = pending
        self.call = call


def _fail(done: list[tuple[_Write, Any]], error: BaseException) -> None:
    """Tell each caller still waiting that its write was not stored."""
    for write, _ in done:
        if not write.future.done():
            write.future.set_exception(error)


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _rev_of(task: Task | None) -> int:
    return 0 if task is None else task.rev


_encode = msgspec.msgpack.encode
_encoder = msgspec.msgpack.Encoder()
_decode_task = msgspec.msgpack.Decoder(Task).decode
_decode_job = msgspec.msgpack.Decoder(Job).decode
_decode_alert = msgspec.msgpack.Decoder(Alert).decode
_decode_numbers = msgspec.msgpack.Decoder(list[int]).decode


def _unpack_changes(numbers: bytes, body: bytes) -> Iterable[tuple[str, int, bytes]]:
    """(id, mask, task data or b"") for each change of a stream entry."""
    values = _decode_numbers(numbers)
    view = memoryview(body)
    at = 0
    for index in range(0, len(values), 5):
        id_end = at + values[index]
        data_end = id_end + values[index + 3]
        yield bytes(view[at:id_end]).decode(), values[index + 2], bytes(view[id_end:data_end])
        at = data_end


class MissingRedis(RuntimeError):
    """redis-py is not installed; the message says how to install it."""


class BadRedisUrl(ValueError):
    """A store URL that cannot work: redis-py cannot use it (an unknown option, a bad port), or
    Redis refuses it at start (a wrong password, a database index out of range, a user without
    the rights to run scripts); the message says why. Neither gets better by retrying."""


def _import_redis() -> tuple[Any, tuple[type[BaseException], ...], type[BaseException]]:
    """redis-py's asyncio client, the errors that mean "Redis is unreachable", and the one
    that means "Redis answered with an error" (out of memory, a read-only replica...)."""
    try:
        import redis.asyncio
        import redis.exceptions
    except ImportError:
        raise MissingRedis(
            "the Redis store needs redis-py: pip install 'progressista[redis]'"
        ) from None
    unreachable = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
    return redis.asyncio, unreachable, redis.exceptions.ResponseError


class _Reload(Exception):
    """The replica missed changes: load it again from Redis."""


class RedisStore:
    """Tasks in Redis, replicated into this server's memory (see the module's docstring)."""

    def __init__(
        self,
        url: str,
        *,
        lifetimes: Lifetimes,
        max_tasks: int,
        prefix: str = "progressista",
        stream_length: int = 2000,
        stream_bytes: int = 128 * 1024**2,
        password: str | None = None,
        jobs: JobIndex | None = None,
    ) -> None:
        self._redis_module, self._unreachable, self._refusal = _import_redis()
        #: When a refused write was last logged (one line a minute, not one a request).
        self._refusal_logged = -math.inf
        self.url = url
        self.keys = RedisKeys(prefix)
        self._lifetimes = lifetimes
        self.max_tasks = max_tasks
        self._stream_length = stream_length
        self._stream_bytes = stream_bytes
        #: The size of this server's recent stream entries (a moving average): how many
        #: entries fit in ``stream_bytes``. An entry is a group of writes, 100 bytes with one
        #: small write, near a megabyte under heavy load.
        self._entry_bytes = 1024.0
        self._password = password
        self._table = TaskTable(track_age=lifetimes.max_age is not None, jobs=jobs)
        #: An active task's key lifetime, when it does not depend on the task (no max_age).
        self._active_ttl = (
            None
            if lifetimes.max_age is not None
            else int((lifetimes.stale_after + lifetimes.abandon_after) * 1000) + TTL_MARGIN_MS
        )
        self._redis: Any = None
        self._scripts: dict[str, Any] = {}
        #: The revision of the last stream entry applied, and its id.
        self._stream_rev = 0
        self._last_id = b"0-0"
        self._epoch: bytes | None = None
        #: Callers waiting for their write to come back from the stream: (revision, future,
        #: result to give).
        self._waiters: list[tuple[int, asyncio.Future[Any], Any]] = []
        self._problem: str | None = None
        #: Why Redis refuses writes (it answers, but says no: out of memory, read-only), until
        #: a write or a probe goes through.
        self._refusing: str | None = None
        self._problem_listeners: list[Callable[[str | None], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._server_id = f"{os.uname().nodename}-{os.getpid()}-{secrets.token_hex(4)}"
        self._holds_lock = False
        #: Writes waiting for the writer, and the writer (a task while there are any).
        self._queue: collections.deque[_Write] = collections.deque()
        self._writer: asyncio.Task[None] | None = None
        #: Tasks this server wrote whose change the stream has not brought back yet: (revision,
        #: task or None), the freshest state for the next write to start from.
        self._ahead: dict[str, tuple[int, Task | None]] = {}
        #: This server's stream entries not yet read back, by first revision: their tasks.
        self._own: dict[int, list[tuple[str, int, Task | None]]] = {}
        #: Entries of this server applied when Redis answered (their first revisions): the
        #: stream skips them when it brings them back.
        self._applied_early: set[int] = set()
        #: The replica missed changes and is stale until a load succeeds; and whether that
        #: load must replace it whole (revisions went back: Redis restored an older copy).
        self._needs_load = False
        self._went_back = False
        #: Finished job runs this server has written to Redis (or found there), each with the
        #: ``updated_at`` written: a later change is written again.
        self._kept_jobs: dict[str, float] = {}
        #: What the writer holds: the writes it merges, and the call in flight.
        self._writing: tuple[list[_Write], _Flight | None] = ([], None)
        #: Wakes the writer waiting for writes to merge while a call is in Redis.
        self._arrival: Callable[[], None] | None = None
        #: Resolved when the script call in flight has answered (None when there is none).
        self._storing: asyncio.Future[None] | None = None
        self._loaded = asyncio.Event()
        self._stopping = asyncio.Event()
        #: While start() waits: a refusal then stops the server (BadRedisUrl) rather than
        #: being retried; what Redis said.
        self._starting = False
        self._refused: BaseException | None = None

    # The protocol --------------------------------------------------------------------------

    @property
    def table(self) -> TaskTable:
        return self._table

    def problem(self) -> str | None:
        return self._problem or self._refusing

    def on_problem(self, listener: Callable[[str | None], None]) -> None:
        self._problem_listeners.append(listener)

    @property
    def holds_cleanup_lock(self) -> bool:
        return self._holds_lock

    @property
    def leads(self) -> bool:
        return self._holds_lock

    async def start(self) -> None:
        """Connect and load the tasks (waiting a little for Redis), then follow the stream.

        A Redis that does not answer does not stop the server from starting: it serves (with
        ``/readyz`` and writes saying 503) and keeps trying in the background.
        """
        try:
            self._redis = self._redis_module.from_url(
                self.url,
                password=self._password,
                socket_timeout=10,
                socket_connect_timeout=5,
                health_check_interval=15,
            )
            # A connection object, not connected: its options come from the URL, and one
            # redis-py does not know (?foo=bar) fails here rather than in every retry, unseen.
            self._redis.connection_pool.make_connection()
        except (TypeError, ValueError) as error:  # redis-py's word on a URL it cannot use
            raise BadRedisUrl(f"--store {redacted(self.url)}: {error}") from None
        self._scripts = {
            name: self._redis.register_script(source)
            for name, source in (
                ("apply", _APPLY),
                ("boot", _BOOT),
                ("renew", _RENEW),
                ("record_alert", _RECORD_ALERT),
            )
        }
        log.info("loading the tasks from Redis at %s", redacted(self.url))
        self._set_problem(f"loading the tasks from Redis at {redacted(self.url)}", log_it=False)
        self._starting = True
        self._tasks = [asyncio.create_task(self._run(), name="progressista-redis")]
        loaded = asyncio.ensure_future(self._loaded.wait())
        try:  # loaded, or refused (the task ends), or neither yet: serve, and keep trying
            await asyncio.wait(
                {loaded, self._tasks[0]}, timeout=STARTUP_WAIT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            loaded.cancel()
            self._starting = False
        if self._refused is not None:  # the same at every attempt: say it once, and stop
            await self._redis.aclose()
            raise BadRedisUrl(f"--store {redacted(self.url)}: Redis refuses it: {self._refused}")

    def _refuses_for_good(self, error: BaseException) -> bool:
        """Whether ``error`` is Redis refusing this server's settings (a wrong password, a
        database index out of range, no right to run scripts), not a passing state."""
        import redis.exceptions as errors

        return isinstance(
            error, (errors.AuthenticationError, errors.AuthenticationWrongNumberOfArgsError)
        ) or (
            isinstance(error, errors.ResponseError)
            and str(error).startswith(("DB index is out of range", "NOPERM"))
        )

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                await self._load()
                break
            except self._errors() as error:
                if self._starting and self._refuses_for_good(error):
                    self._refused = error  # start() stops the server; later, retry as ever
                    return
                backoff = await self._retry_later(error, backoff)
        else:
            return
        self._set_problem(None)
        self._loaded.set()
        self._tasks.append(asyncio.create_task(self._keep_lock(), name="progressista-redis-lock"))
        await self._follow()

    async def close(self) -> None:
        # The background tasks stop by themselves within a read's block time: cancelling a
        # blocked XREAD can leave redis-py waiting for a reply that never comes.
        self._stopping.set()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=READ_BLOCK_MS / 1000 + 2)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1)
        if self._holds_lock and self._redis is not None:
            with contextlib.suppress(*self._errors()):
                # Hand cleanup over at once rather than after the lock expires.
                if await self._redis.get(self.keys.cleanup_lock) == self._server_id.encode():
                    await self._redis.delete(self.keys.cleanup_lock)
        if self._redis is not None:
            await self._redis.aclose()

    async def apply(self, events: list[Event], now: float) -> ApplyResult:
        table = self._table

        def prepare(lookup: Lookup) -> tuple[list[Change], ApplyResult]:
            def still_closed(task_id: str) -> bool:
                task = lookup(task_id)  # an earlier write may have reopened or removed it
                return task is not None and task.state in ("completed", "failed")

            staged, ignored = stage(lookup, events, now)
            evicted: list[str] = []
            if len(table) + len(staged) > self.max_tasks:
                new_ids = sum(1 for task_id in staged if lookup(task_id) is None)
                evicted = room_for(table, new_ids, self.max_tasks, staged, still_closed)
            changes: list[Change] = [
                (task_id, _rev_of(lookup(task_id)), 0, None) for task_id in evicted
            ]
            # A staged task still carries the revision it was made from.
            changes += [(task_id, task.rev, mask, task) for task_id, (task, mask) in staged.items()]
            result = ApplyResult(
                accepted=len(events) - ignored, ignored=ignored, evicted=len(evicted)
            )
            return changes, result

        result: ApplyResult = await self._submit(prepare, len(events), now)
        return result

    async def delete(self, task_ids: Collection[str]) -> list[str]:
        """Remove these tasks whatever their state (a person discarding them)."""

        def prepare(lookup: Lookup) -> tuple[list[Change], list[str]]:
            present = [(task_id, task) for task_id in task_ids if (task := lookup(task_id))]
            changes: list[Change] = [(task_id, task.rev, 0, None) for task_id, task in present]
            return changes, [task_id for task_id, _ in present]

        deleted: list[str] = await self._submit(prepare, len(task_ids), 0.0)
        return deleted

    async def expire(self, now: float, lifetimes: Lifetimes, limit: int) -> Expired:
        """Apply what is due, if this server holds the cleanup lock (else nothing)."""
        if not self._holds_lock:
            return Expired()
        due = self._table.due(now, lifetimes, limit)

        def prepare(lookup: Lookup) -> tuple[list[Change], Expired]:
            # Judged again on the freshest state: a task that got an event on another server
            # meanwhile is no longer due, and is left alone.
            changes: list[Change] = []
            expired = Expired(more=len(due) >= limit)
            for task_id in due:
                task = lookup(task_id)
                verdict = None if task is None else lifetimes.verdict(task, now)
                if task is None or verdict is None:
                    continue
                if verdict == "stale":
                    stale, mask = went_stale(task)
                    changes.append((task_id, task.rev, mask, stale))
                    expired.stale.append(task_id)
                else:
                    changes.append((task_id, task.rev, 0, None))
                    expired.removed.append(task_id)
            return changes, expired

        expired: Expired = await self._submit(prepare, len(due), now)
        await self._keep_finished_jobs(now)
        return expired

    async def _keep_finished_jobs(self, now: float) -> None:
        """Write each finished job run to Redis, so that it stays listed after its tasks expire,
        across restarts (the lock's holder does), and again whenever it changes: a run that
        failed with bars still running goes on counting them, and a restart restores the
        record, not the tasks' sums."""
        jobs = self._table.jobs
        finished = jobs.finished()
        for job in finished:
            if self._kept_jobs.get(job.id) == job.updated_at or job.finished_at is None:
                continue
            remaining = jobs.retention - (now - job.finished_at)
            if remaining > 0:
                try:
                    await self._redis.set(
                        self.keys.job(job.id), _encode(job), px=max(1, int(remaining * 1000))
                    )
                except self._errors():
                    return  # the next pass tries again
            self._kept_jobs[job.id] = job.updated_at
        if len(self._kept_jobs) > 2 * jobs.max_jobs:  # (runs dropped since: forget them)
            listed = {job.id for job in finished}
            self._kept_jobs = {key: at for key, at in self._kept_jobs.items() if key in listed}

    # Writing -------------------------------------------------------------------------------

    def _ttl_ms(self, task: Task, now: float) -> int:
        """How long Redis keeps a task key: until cleanup would remove it, plus a margin.
        (An active task just updated, without max_age: _active_ttl, the same for all.)"""
        remaining = self._lifetimes.expires_at(task) - now
        return max(1, int(remaining * 1000)) + TTL_MARGIN_MS

    async def _submit(self, prepare: Prepare, size: int, now: float) -> Any:
        """Queue a write for the writer, and wait until it is in Redis and in this replica.

        One writer sends the writes of many requests in one script call (group commit): fewer
        round trips, and no two writes of this server ever race each other for one task.
        """
        if not self._loaded.is_set():
            raise StoreUnavailable(
                "the server has not loaded its tasks from Redis yet; retry shortly"
            )
        write = _Write(prepare, size, now)
        self._queue.append(write)
        if self._arrival is not None:
            self._arrival()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop(), name="progressista-redis-write")
        return await write.future

    async def _write_loop(self) -> None:
        """Run the writer; should it fail (a bug), every caller it leaves hears of the error
        rather than waiting forever, and the next write starts a new writer."""
        try:
            await self._write_groups()
        except asyncio.CancelledError:
            self._fail_held(StoreUnavailable("the server is closing its Redis store"))
            raise
        except Exception as error:
            log.exception("the writer of the Redis store failed")
            flight = self._writing[1]
            if flight is not None:
                # Its call goes on in Redis: its writes are answered by what it did, and no
                # new writer starts (two calls in flight) until it has.
                with contextlib.suppress(Exception):
                    outcome = await asyncio.shield(flight.call)
                    if isinstance(outcome, int):
                        self._answer(flight.done, outcome)
            self._fail_held(error)

    def _fail_held(self, error: BaseException) -> None:
        """Fail every write the writer holds or has queued, unless already answered."""
        group, flight = self._writing
        writes = [*(flight.group if flight is not None else ()), *group, *self._queue]
        self._writing = ([], None)
        self._queue.clear()
        for write in writes:
            if not write.future.done():
                write.future.set_exception(error)

    async def _write_groups(self) -> None:
        """Store the queued writes, a group per script call; while Redis runs one call, merge the
        next group as if that call succeeds (its lookups see the call's tasks), so that this
        loop's merging and Redis's storing overlap instead of taking turns. The group takes the
        writes that arrive until the call answers (a request answered comes back soon), up to
        GROUP_CHANGES. One call is in flight at a time: no two writes of this server ever race
        each other for one task."""
        flight: _Flight | None = None
        while self._queue or flight is not None:
            group: list[_Write] = []
            self._writing = (group, flight)
            combined: dict[str, _Pending] = {}
            done: list[tuple[_Write, Any]] = []
            size = 0
            while True:
                more = self._next_group(GROUP_CHANGES - size)  # under the cap: checked below
                if more:
                    group += more
                    size += sum(write.size for write in more)
                    await self._prepare(more, {}, flight, combined, done)
                if flight is None or flight.call.done() or size >= GROUP_CHANGES:
                    break
                await self._arrival_or(flight.call)
            changes = list(combined.values())
            packed = self._pack(changes)  # the tasks are encoded before Redis answers, too
            landed = flight
            if flight is not None and not await self._land(flight):
                # Merged on top of changes that did not land: merge again from what did.
                combined, done = await self._prepare(group, {}, None)
                changes = list(combined.values())
                packed = self._pack(changes)
                landed = None
            flight = self._launch(group, combined, changes, packed, done, landed) if group else None
            if flight is not None:
                await asyncio.sleep(0)  # the call goes out before the next group is merged
        self._writing = ([], None)

    def _next_group(self, room: int) -> list[_Write]:
        """Queued writes of about ``room`` changes in all (at least one, however large)."""
        group: list[_Write] = []
        size = 0
        while self._queue and (not group or size + self._queue[0].size <= room):
            write = self._queue.popleft()
            size += write.size
            group.append(write)
        return group

    async def _arrival_or(self, call: asyncio.Future[Any]) -> None:
        """Wait until a write is queued or ``call`` answers, whichever comes first."""
        wake = asyncio.get_running_loop().create_future()

        def settle(_: object = None) -> None:
            if not wake.done():
                wake.set_result(None)

        self._arrival = settle
        call.add_done_callback(settle)
        try:
            await wake
        finally:
            self._arrival = None
            call.remove_done_callback(settle)

    def _launch(
        self,
        group: list[_Write],
        combined: dict[str, _Pending],
        changes: list[_Pending],
        packed: _Packed,
        done: list[tuple[_Write, Any]],
        landed: _Flight | None,
    ) -> _Flight:
        """Send a group's changes (``combined``, listed in ``changes`` and ``packed``). A change
        merged from a task the call before stored expects the revision that call gave it, known
        only now that it has answered."""
        if landed is not None:
            stored, numbers = landed.pending, packed[0]
            for index, (task_id, _, mask, task, now) in enumerate(changes):
                if task_id in stored:
                    rev = _rev_of(stored[task_id][3])
                    changes[index] = (task_id, rev, mask, task, now)
                    numbers[5 * index + 1] = rev
        call = asyncio.ensure_future(self._store(changes, packed))
        return _Flight(group, done, combined, call)

    async def _land(self, flight: _Flight) -> bool:
        """Wait for a call's answer and answer its callers; False if it did not store (Redis
        unreachable, or a task moved: then the group is retried here, against the fresher
        state)."""
        try:
            outcome = await flight.call
        except StoreUnavailable as error:
            _fail(flight.done, error)
            return False
        if isinstance(outcome, int):
            self._answer(flight.done, outcome)
            return True
        await self._commit(flight.group, outcome)
        return False

    async def _commit(self, group: list[_Write], fresher: dict[str, Task | None]) -> None:
        """Prepare every write of ``group`` again against ``fresher`` (the tasks that moved)
        and store them, until no revision moved in between or the attempts run out."""
        for _ in range(WRITE_ATTEMPTS - 1):
            combined, done = await self._prepare(group, fresher, None)
            try:
                conflicts = await self._store(list(combined.values()))
            except StoreUnavailable as error:
                _fail(done, error)
                return
            if isinstance(conflicts, int):
                self._answer(done, conflicts)
                return
            fresher.update(conflicts)
        for write in group:
            if not write.future.done():
                write.future.set_exception(
                    StoreUnavailable("other servers kept changing these tasks; retry")
                )

    def _answer(self, done: list[tuple[_Write, Any]], rev: int) -> None:
        """Answer each caller once the changes up to ``rev`` are in this server's replica, so
        that it reads its own writes; the writer goes on with the next group meanwhile."""
        for write, result in done:
            self._when_applied(rev, write.future, result)

    async def _prepare(
        self,
        group: list[_Write],
        fresher: dict[str, Task | None],
        flight: _Flight | None,
        combined: dict[str, _Pending] | None = None,
        done: list[tuple[_Write, Any]] | None = None,
    ) -> tuple[dict[str, _Pending], list[tuple[_Write, Any]]]:
        """Each write's changes, in order, each seeing those before it: per task, its last
        state and the revision it was read at; and the writes that were not refused. With a
        call in ``flight``, as if it stored its tasks. Added to ``combined`` and ``done`` when
        given (writes merged earlier come first)."""
        combined = {} if combined is None else combined
        done = [] if done is None else done

        ahead, stored = self._ahead, self._table.tasks
        flying = flight.pending if flight is not None else {}

        def lookup(task_id: str) -> Task | None:
            change = combined.get(task_id)
            if change is not None:
                return change[3]
            if fresher and task_id in fresher:
                return fresher[task_id]
            if flying and task_id in flying:
                return flying[task_id][3]
            written = ahead.get(task_id)
            if written is not None:
                return written[1]
            return stored.get(task_id)

        unyielded = 0
        for write in group:
            if unyielded >= YIELD_EVERY:
                # Let the loop run between writes: the call in flight goes out and its answer is
                # read while this group is merged (redis-py sends from a task of its own), and
                # requests keep arriving. Whatever changes meanwhile is checked by revision.
                unyielded = 0
                await asyncio.sleep(0)
                stored = self._table.tasks  # a reload meanwhile replaces the table's dict
            unyielded += write.size
            if write.future.done():
                continue  # its caller gave up (the request went away)
            try:
                changes, result = write.prepare(lookup)
            except StoreFull as error:
                write.future.set_exception(error)
                continue
            except Exception as error:  # a bug: it fails this write, not its whole group
                log.exception("a write to the Redis store could not be merged")
                write.future.set_exception(error)
                continue
            now = write.now
            for task_id, expected, mask, task in changes:
                earlier = combined.get(task_id)
                if earlier is not None:  # twice in one call: its last state, every change
                    expected, mask = earlier[1], earlier[2] | mask
                combined[task_id] = (task_id, expected, mask, task, now)
            done.append((write, result))
        return combined, done

    async def _store(
        self, changes: list[_Pending], packed: _Packed | None = None
    ) -> dict[str, Task | None] | int:
        """Store ``changes`` ([id, revision read, mask, task or None, now], already ``packed``
        if given) if no revision moved, and return the last revision given; else the current
        state of each task that moved."""
        if not changes:
            return self._stream_rev
        try:
            return await self._call_apply(changes, packed or self._pack(changes))
        finally:
            self._stored()

    async def _call_apply(
        self, changes: list[_Pending], packed: _Packed
    ) -> dict[str, Task | None] | int:
        keys = self.keys
        numbers, body = _encode(packed[0]), packed[1]
        self._storing = asyncio.get_running_loop().create_future()
        try:
            reply = await self._scripts["apply"](
                keys=[keys.revision, keys.changes, keys.loading],
                args=[
                    self._stream_cap(len(numbers) + len(body)),
                    keys.task(""),
                    numbers,
                    body,
                    self._server_id,
                    LOAD_HOLD_FACTOR,
                ],
            )
        except self._refusal as error:
            # Redis is there but says no (maxmemory reached with noeviction, a replica that
            # became read-only): the writer must go on, and the callers retry later.
            now = time.monotonic()
            if now - self._refusal_logged >= REFUSAL_LOG_EVERY:
                self._refusal_logged = now
                log.warning("Redis at %s refused a write: %s", redacted(self.url), error)
            self._set_refusing(error)
            raise StoreUnavailable(
                f"the server's Redis store refused the write ({error}); retry shortly"
            ) from None
        except self._unreachable as error:
            self._set_problem(self._failing(error))
            raise StoreUnavailable(
                "the server cannot reach its Redis store right now; retry shortly"
            ) from None
        self._set_refusing(None)
        if reply[0] == 0:
            found = reply[1]
            return {
                changes[int(found[at]) - 1][0]: (
                    self._stored_task(found[at + 1]) if found[at + 1] else None
                )
                for at in range(0, len(found), 2)
            }
        base = int(reply[1])
        own: list[tuple[str, int, Task | None]] = []
        rev = base
        for task_id, _, mask, task, _ in changes:
            if task is not None:
                task.rev = rev
            rev += 1
            own.append((task_id, mask, task))
        if self._stream_rev == base - 1:
            # Every entry before this one is applied: apply it now, in order, as the stream
            # would, and answer at once rather than after the stream brings it back. (Nothing
            # of this server's is then ahead of the replica.)
            self._apply_changes(base, own)
            self._applied_early.add(base)
            self._table.publish()
            self._wake_waiters()
        else:  # the stream brings this entry back: its tasks are these very objects
            self._ahead.update(
                (task_id, (base + offset, task)) for offset, (task_id, _, task) in enumerate(own)
            )
            self._own[base] = own
        return rev - 1

    def _stream_cap(self, entry_bytes: int) -> int:
        """How many entries the stream keeps after this one: ``stream_length``, fewer when
        entries this size would take more than ``stream_bytes`` (never under MIN_STREAM_ENTRIES)."""
        self._entry_bytes += (entry_bytes - self._entry_bytes) / 8
        fitting = int(self._stream_bytes / self._entry_bytes)
        return max(MIN_STREAM_ENTRIES, min(self._stream_length, fitting))

    def _pack(self, changes: list[_Pending]) -> _Packed:
        """The changes as the apply script reads them, and as the stream keeps them: five
        numbers per change (id length, revision read, mask, data length, ttl; sent as a msgpack
        array), and the ids and data end to end. One loop: this runs for every change of every
        write."""
        numbers: list[int] = []
        body = bytearray()
        active_ttl = self._active_ttl
        encode_into = _encoder.encode_into
        for task_id, expected, mask, task, now in changes:
            encoded_id = task_id.encode()
            body += encoded_id
            if task is None:
                data_length, ttl = 0, 0
            else:
                start = len(body)
                encode_into(task, body, -1)  # at the end: no bytes object per task
                data_length = len(body) - start
                ttl = (
                    active_ttl
                    if active_ttl is not None and task.state == "active"
                    else self._ttl_ms(task, now)
                )
            numbers += (len(encoded_id), expected, mask, data_length, ttl)
        return numbers, bytes(body)

    def _stored(self) -> None:
        """The script call in flight (if any) has answered, or failed."""
        storing, self._storing = self._storing, None
        if storing is not None and not storing.done():
            storing.set_result(None)

    def _when_applied(self, rev: int, future: asyncio.Future[Any], result: Any) -> None:
        """Resolve ``future`` with ``result`` once the replica has applied revision ``rev``,
        or after ECHO_TIMEOUT: the write is in Redis either way; only this view may lag."""
        if future.done():
            return
        if self._stream_rev >= rev:
            future.set_result(result)
            return
        self._waiters.append((rev, future, result))
        asyncio.get_running_loop().call_later(ECHO_TIMEOUT, _settle, future, result)

    def _wake_waiters(self) -> None:
        reached = self._stream_rev
        keep = []
        for rev, future, result in self._waiters:
            if future.done():
                continue
            if rev <= reached:
                future.set_result(result)
            else:
                keep.append((rev, future, result))
        self._waiters = keep

    # The replica -----------------------------------------------------------------------------

    @staticmethod
    def _task_from(data: bytes, rev: int) -> Task:
        task = _decode_task(data)
        task.rev = rev
        return task

    @classmethod
    def _stored_task(cls, stored: bytes) -> Task:
        """A task key's value: its revision, a colon, the task (msgpack)."""
        rev, _, data = stored.partition(b":")
        return cls._task_from(data, int(rev))

    async def _load(self) -> None:
        """Load every task, then note where the stream stands, so that nothing falls between."""
        keys = self.keys
        epoch, counter, last_id = await self._scripts["boot"](
            keys=[keys.epoch, keys.revision, keys.changes, keys.loading],
            args=[secrets.token_hex(8), self._server_id, LOAD_HOLD_MS],
        )
        tasks = await self._all_tasks()
        # A new epoch: Redis lost its data. Revisions that went back (fewer than this replica
        # applied, or an entry below them): it came back from an older copy, epoch and all, and
        # gives revisions again, so comparing them would keep stale tasks. Replace everything.
        lost = self._epoch is not None and (
            epoch != self._epoch or int(counter) < self._stream_rev or self._went_back
        )
        if lost:
            log.warning(
                "Redis at %s lost its data or went back to an older copy: reloading every task",
                redacted(self.url),
            )
        self._epoch = epoch
        self._ahead.clear()  # whatever this server wrote is in what was just loaded
        self._own.clear()
        self._applied_early.clear()
        # The finished runs' records first: the tasks loaded rejoin them, not new runs.
        # Oldest first, as they were listed: past max_jobs the oldest finished go first.
        records = sorted(await self._stored_jobs(), key=lambda job: job.finished_at or 0.0)
        if lost or not self._table.tasks:
            self._table.replace_all(tasks, int(counter), records)
        else:
            for job in records:
                self._table.jobs.restore(job)
            self._reconcile(tasks, int(counter))
        self._kept_jobs.update((job.id, job.updated_at) for job in records)
        self._stream_rev = int(counter)
        self._last_id = last_id
        self._needs_load = self._went_back = False
        self._wake_waiters()
        with contextlib.suppress(*self._errors()):  # else the hold expires by itself
            await self._redis.zrem(keys.loading, self._server_id)

    async def _stored_jobs(self) -> list[Job]:
        keys = [key async for key in self._redis.scan_iter(match=self.keys.job_pattern, count=1000)]
        values = await self._redis.mget(keys) if keys else []
        return [_decode_job(value) for value in values if value]

    async def _all_tasks(self) -> list[Task]:
        redis = self._redis
        tasks: list[Task] = []
        keys: list[bytes] = []
        async for key in redis.scan_iter(match=self.keys.task_pattern, count=1000):
            keys.append(key)
            if len(keys) >= 1000:
                tasks += await self._read_tasks(keys)
                keys = []
        tasks += await self._read_tasks(keys)
        return tasks

    async def _read_tasks(self, keys: list[bytes]) -> list[Task]:
        if not keys:
            return []
        return [self._stored_task(value) for value in await self._redis.mget(keys) if value]

    def _reconcile(self, tasks: Iterable[Task], counter: int) -> None:
        """Bring the replica to exactly ``tasks`` after missing changes, as changes of its own,
        so viewers following it get patches; those behind start over (forget_removals)."""
        table = self._table
        loaded = {task.task_id: task for task in tasks}
        for task_id in [task_id for task_id in table.tasks if task_id not in loaded]:
            # As last seen here, maybe still open though it completed meanwhile: not a bar cut
            # short (JobIndex.forget).
            table.remove(task_id, counter, cut_short=False)
        for task in sorted(loaded.values(), key=lambda task: task.rev):
            current = table.tasks.get(task.task_id)
            if current is None or current.rev != task.rev:
                table.commit(task, ALL_FIELDS)
        table.forget_removals()
        table.publish()

    async def _retry_later(self, error: BaseException, backoff: float) -> float:
        """Say what failed, wait ``backoff`` seconds (less if closing); the next backoff."""
        self._set_problem(self._failing(error))
        await self._pause(backoff)
        return min(backoff * 2, MAX_BACKOFF)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the store is closing."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _follow(self) -> None:
        """Apply the stream's entries as they come; reconnect and reload as needed."""
        backoff = 0.1
        loaded_at = -math.inf
        while not self._stopping.is_set():
            try:
                reply = await self._redis.xread(
                    {self.keys.changes: self._last_id}, count=READ_COUNT, block=READ_BLOCK_MS
                )
                if self._problem is not None:
                    await self._recovered()
                backoff = 0.1
                if reply and self._storing is not None and self._answer_pending(reply):
                    # This server's own write is among these entries, its answer not read yet:
                    # wait for it, so that the entry is applied from the tasks in hand. (Not
                    # for any entry: the call in flight would hold back the changes before it.)
                    await asyncio.shield(self._storing)
                for _stream, entries in reply or ():
                    self._apply_entries(entries)
                continue
            except _Reload:
                pass
            except self._errors() as error:
                backoff = await self._retry_later(error, backoff)
                continue
            # A hole in the stream: load every task again. Until that succeeds the problem
            # stays (the entry after the hole is read again), retried with backoff.
            since = time.monotonic() - loaded_at
            if since < RELOAD_SOON:
                log.warning(
                    "missed changes again %.1f s after loading: the change stream holds less "
                    "than a load takes at this write rate; raise --redis-stream-bytes",
                    since,
                )
            else:
                log.warning("this server missed changes in Redis's stream; reloading the tasks")
            self._set_problem("reloading the tasks: this server missed changes in the stream")
            self._needs_load = True
            try:
                await self._load()
            except self._errors() as error:
                backoff = await self._retry_later(error, backoff)
                continue
            loaded_at = time.monotonic()
            self._set_problem(None)

    def _answer_pending(self, reply: list[tuple[bytes, list[tuple[bytes, Any]]]]) -> bool:
        me, own, early = self._server_id.encode(), self._own, self._applied_early
        return any(
            fields.get(b"s") == me
            and int(fields[b"r"]) not in own
            and int(fields[b"r"]) not in early
            for _stream, entries in reply
            for _, fields in entries
        )

    async def _recovered(self) -> None:
        """Redis answers again: reload if it lost its data meanwhile, then carry on."""
        epoch = await self._redis.get(self.keys.epoch)
        if epoch != self._epoch or self._needs_load:
            await self._load()
        self._set_problem(None)

    def _apply_entries(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        applied = False
        for entry_id, fields in entries:
            base = int(fields[b"r"])
            if base in self._applied_early:
                self._applied_early.discard(base)
                self._last_id = entry_id
                continue
            if base != self._stream_rev + 1:
                # A hole: entries were trimmed before this server read them. Or revisions went
                # back: Redis lost its data (the epoch tells). Either way, load afresh (this
                # entry is read again after the load, and tells again if the load failed).
                if applied:
                    self._table.publish()
                    self._wake_waiters()
                self._went_back = self._went_back or base <= self._stream_rev
                raise _Reload
            own = self._own.pop(base, None)
            changes = own if own is not None else self._decoded(fields[b"n"], fields[b"b"], base)
            self._apply_changes(base, changes)
            self._last_id = entry_id
            applied = True
        if applied:
            self._table.publish()
            self._wake_waiters()

    def _apply_changes(self, base: int, changes: list[tuple[str, int, Task | None]]) -> None:
        """Apply one stream entry's changes (revisions from ``base``) to the replica."""
        table, ahead = self._table, self._ahead
        tasks = table.tasks
        rev = base - 1
        for task_id, mask, task in changes:
            rev += 1
            current = tasks.get(task_id)
            if current is None or current.rev < rev:
                if task is None:
                    table.remove(task_id, rev)
                else:
                    table.commit(task, mask if current else ALL_FIELDS)
            if ahead:
                written = ahead.get(task_id)
                if written is not None and written[0] <= rev:
                    del ahead[task_id]
        self._stream_rev = rev

    def _decoded(
        self, numbers: bytes, body: bytes, base: int
    ) -> list[tuple[str, int, Task | None]]:
        """Another server's entry: (id, mask, task with its revision, or None)."""
        return [
            (task_id, mask, self._task_from(data, base + offset) if data else None)
            for offset, (task_id, mask, data) in enumerate(_unpack_changes(numbers, body))
        ]

    # Alerts ----------------------------------------------------------------------------------

    @property
    def ledger(self) -> RedisLedger:
        return RedisLedger(self)

    # Cleanup lock ----------------------------------------------------------------------------

    async def _probe_writes(self) -> None:
        """Learn whether Redis takes writes (it may be full or read-only) without waiting for a
        worker's write: an idle server must not say it is ready when it cannot be."""
        try:
            await self._redis.set(self.keys.probe, b"1", px=PROBE_MS)
        except self._refusal as error:
            self._set_refusing(error)
        except self._unreachable:
            pass  # the stream's reader tells of that
        else:
            self._set_refusing(None)

    async def _keep_lock(self) -> None:
        """Take the cleanup lock when it is free, renew it while held."""
        key = self.keys.cleanup_lock
        while not self._stopping.is_set():
            await self._probe_writes()
            try:
                if self._holds_lock:
                    renewed = await self._scripts["renew"](
                        keys=[key], args=[self._server_id, CLEANUP_LOCK_MS]
                    )
                    if not renewed:
                        log.warning("lost the cleanup lock; another server runs cleanup now")
                    self._holds_lock = bool(renewed)
                else:
                    self._holds_lock = bool(
                        await self._redis.set(key, self._server_id, nx=True, px=CLEANUP_LOCK_MS)
                    )
                    if self._holds_lock:
                        log.info("this server runs cleanup now (it holds the cleanup lock)")
            except self._errors():
                self._holds_lock = False  # cannot renew, so it may expire: stop deciding
            await self._pause(CLEANUP_LOCK_MS / 3000)

    # Health ----------------------------------------------------------------------------------

    def _failing(self, error: BaseException) -> str:
        """The problem ``/readyz`` and viewers are told when Redis failed a step."""
        if isinstance(error, self._refusal):
            return f"Redis at {redacted(self.url)} refuses the request: {error}"
        return f"Redis at {redacted(self.url)} is unreachable: {error}"

    def _errors(self) -> tuple[type[BaseException], ...]:
        """What a step that can wait and retry tolerates: Redis unreachable, or refusing."""
        return (*self._unreachable, self._refusal)

    def _set_problem(self, problem: str | None, *, log_it: bool = True) -> None:
        if problem == self._problem:
            return
        if not log_it:
            pass
        elif problem is None:
            log.info("Redis at %s answers", redacted(self.url))
        else:
            log.error("%s", problem)
        before = self.problem()
        self._problem = problem
        self._tell(before)

    def _set_refusing(self, error: BaseException | None) -> None:
        """Redis refused a write with ``error``, or (None) took one."""
        refusing = (
            None if error is None else f"Redis at {redacted(self.url)} refuses writes: {error}"
        )
        if refusing == self._refusing:
            return
        if refusing is None:
            log.info("Redis at %s takes writes again", redacted(self.url))
        before = self.problem()
        self._refusing = refusing
        self._tell(before)

    def _tell(self, before: str | None) -> None:
        problem = self.problem()
        if problem != before:
            for listener in self._problem_listeners:
                listener(problem)


#: Seconds an alert's record lives in Redis (long after it was delivered: dedup, not history).
ALERT_TTL = 86400


class RedisLedger:
    """Alerts pending delivery, in Redis: every server records what it sees (once per id), the
    cleanup lock's holder sends, and a successor finds what its predecessor left pending."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    async def record(self, alert: Alert, destinations: Iterable[int]) -> bool:
        store = self._store
        keys = store.keys
        try:
            recorded = await store._scripts["record_alert"](
                keys=[keys.alert(alert.id), keys.alerts_pending],
                args=[_encode(alert), ALERT_TTL, *(f"{i}|{alert.id}" for i in destinations)],
            )
        except store._errors():
            return False  # another server records it, or this one when Redis is back
        return bool(recorded)

    async def pending(self) -> list[tuple[Alert, int]]:
        store = self._store
        try:
            entries = await store._redis.smembers(store.keys.alerts_pending)
            wanted = [entry.decode().split("|", 1) for entry in entries]
            values = (
                await store._redis.mget([store.keys.alert(alert_id) for _, alert_id in wanted])
                if wanted
                else []
            )
        except store._errors():
            return []
        found = []
        for (index, _), value in zip(wanted, values, strict=True):
            if value:
                found.append((_decode_alert(value), int(index)))
        found.sort(key=lambda pair: pair[0].created_at)
        return found

    async def delivered(self, alert: Alert, destination: int) -> None:
        store = self._store
        try:
            await store._redis.srem(store.keys.alerts_pending, f"{destination}|{alert.id}")
        except store._errors():
            pass  # still pending: sent again later, the duplicate the README allows for
