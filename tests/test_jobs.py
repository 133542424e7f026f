"""Jobs: the bars of many processes summed into one run with one fraction, rate, ETA and state.

Every test drives the real app with an injected clock; the "processes" are the bars' labels
(``host``, ``pid``), as several workers would send them.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from progressista.server import feed
from progressista.server.cleanup import run_cleanup
from progressista.server.job import Job, JobIndex
from progressista.server.keys import LIFETIMES, STORE

from .conftest import Client, FakeClock, MakeClient, event, eventually, post
from .test_websocket import receive


async def jobs(client: Client, query: str = "") -> list[dict[str, Any]]:
    response = await client.get("/jobs" + query)
    assert response.status == 200, await response.text()
    listed: list[dict[str, Any]] = (await response.json())["jobs"]
    return listed


async def job(client: Client, name: str) -> dict[str, Any]:
    response = await client.get(f"/jobs/{name}")
    assert response.status == 200, await response.text()
    found: dict[str, Any] = (await response.json())["job"]
    return found


def shard(task_id: str, n: float, total: float | None, **fields: Any) -> dict[str, Any]:
    meta = {"job": "etl", "host": f"worker-{task_id[-1]}", **fields.pop("meta", {})}
    return event(task_id, n=n, total=total, meta=meta, **fields)


async def cleanup(client: Client, clock: FakeClock) -> None:
    await run_cleanup(client.app[STORE], client.app[LIFETIMES], clock())


async def test_bars_of_several_processes_sum_into_one_job(client: Client, clock: FakeClock) -> None:
    await post(client, [shard("s1", 10, 100, rate=2.0), shard("s2", 30, 100, rate=3.0)])
    summary = await job(client, "etl")
    assert (summary["id"], summary["job"], summary["run"], summary["state"]) == (
        "etl#1",
        "etl",
        1,
        "running",
    )
    assert summary["tasks"] == {"active": 2, "stale": 0, "completed": 0, "failed": 0}
    assert (summary["n"], summary["total"]) == (40, 200)
    assert summary["fraction"] == pytest.approx((0.1 + 0.3) / 2)
    assert summary["rate"] == pytest.approx(5.0)  # the bars' rates, summed
    assert summary["unit"] == "it"
    assert summary["started_at"] == clock.now


async def test_a_jobs_count_comes_back_exactly_from_a_huge_one(client: Client) -> None:
    """The sums were floats from 0.0: a bar at 10**17 going back to 1 left the job's n at 0
    (the other bar's 1 lost to rounding). Counts are ints, summed exactly."""
    await post(client, [shard("s1", 10**17, None), shard("s2", 1, None)])
    await post(client, shard("s1", 1, None, seq=2))
    assert (await job(client, "etl"))["n"] == 2


async def test_a_rate_is_summed_only_over_bars_that_share_a_unit(client: Client) -> None:
    await post(client, [shard("s1", 10, 100, rate=2.0), shard("s2", 3, 9, rate=1e6, unit="B")])
    summary = await job(client, "etl")
    assert (summary["rate"], summary["unit"]) == (None, None)  # 2 it/s + 1 MB/s is no figure
    await post(client, [shard("s2", 9, 9, status="close", unit="B")])
    summary = await job(client, "etl")  # the bar in bytes closed: only items are moving
    assert (summary["rate"], summary["unit"]) == (pytest.approx(2.0), "it")
    await post(client, [shard("s1", 20, 100, rate=4.0, unit="rows")])  # a bar changes unit
    summary = await job(client, "etl")
    assert (summary["rate"], summary["unit"]) == (pytest.approx(4.0), "rows")


async def test_the_eta_follows_the_fraction_over_time(client: Client, clock: FakeClock) -> None:
    # Two bars, each a tenth of the way more every 10 s: the job is done 100 s after it began,
    # 60 s after the last news (the ETA counts, as a task's, from the last update).
    for step in range(5):
        await post(client, [shard("s1", 10 * step, 100), shard("s2", 10 * step, 100)])
        await cleanup(client, clock)  # as every second: it samples the job's history
        clock.advance(10)
    summary = await job(client, "etl")
    assert summary["fraction"] == pytest.approx(0.4)
    assert summary["eta"] == pytest.approx(60.0)


async def test_an_unknown_total_makes_the_fraction_and_eta_unknown(client: Client) -> None:
    await post(client, [shard("s1", 10, 100), shard("s2", 5, None)])
    summary = await job(client, "etl")
    assert (summary["total"], summary["fraction"], summary["eta"]) == (None, None, None)
    assert summary["n"] == 15


async def test_a_late_shard_is_counted_before_it_starts_when_the_job_says_how_many(
    client: Client,
) -> None:
    await post(client, [shard("s1", 50, 100, meta={"job_size": 4}), shard("s2", 100, 100)])
    summary = await job(client, "etl")
    assert summary["size"] == 4
    assert summary["fraction"] == pytest.approx((0.5 + 1.0) / 4)  # not (0.5 + 1.0) / 2


async def test_a_job_whose_bars_stop_moving_is_stalled_even_if_kept_alive(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(job_stall_after=60, stale_after=3600)
    await post(client, [shard("s1", 10, 100)])
    for _ in range(7):  # keepalives: the same n every 10 s
        clock.advance(10)
        await post(client, [shard("s1", 10, 100)])
        await cleanup(client, clock)
    assert (await job(client, "etl"))["state"] == "stalled"
    await post(client, [shard("s1", 11, 100)])
    assert (await job(client, "etl"))["state"] == "running"


async def test_a_job_whose_bars_all_went_stale_is_stalled(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(stale_after=30)
    await post(client, [shard("s1", 10, 100), shard("s2", 10, 100)])
    clock.advance(31)
    await cleanup(client, clock)
    summary = await job(client, "etl")
    assert summary["tasks"]["stale"] == 2
    assert (summary["state"], summary["eta"]) == ("stalled", None)


async def test_the_run_task_heads_its_job_and_decides_when_it_ends(client: Client) -> None:
    head = event("etl", n=0, meta={"job": "etl", "role": "run"})
    await post(client, [head, shard("s1", 100, 100, status="close"), shard("s2", 5, 10)])
    summary = await job(client, "etl")
    assert (summary["head"], summary["head_state"], summary["state"]) == (
        "etl",
        "active",
        "running",
    )
    assert summary["tasks"] == {
        "active": 1,
        "stale": 0,
        "completed": 1,
        "failed": 0,
    }  # not the head
    await post(client, shard("s2", 10, 10, status="close"))
    assert (await job(client, "etl"))["state"] == "running"  # bars done, the program is not
    await post(client, event("etl", status="close", meta={"job": "etl", "role": "run"}))
    summary = await job(client, "etl")
    assert (summary["state"], summary["finished_at"] is not None) == ("completed", True)


async def test_a_run_task_that_fails_gives_its_job_its_reason(client: Client) -> None:
    """`progressista run -- make all` exiting 2 failed its job with no reason on the card."""
    head = {"job": "build", "role": "run", "host": "ci-3"}
    await post(client, [event("build", meta=head), event("b1", meta={"job": "build"})])
    await post(client, event("b1", status="close", meta={"job": "build"}))
    await post(client, event("build", status="error", error="exit code 2", meta=head))
    summary = await job(client, "build")
    assert (summary["state"], summary["error"], summary["error_task"], summary["error_host"]) == (
        "failed",
        "exit code 2",
        "build",
        "ci-3",
    )


async def test_a_failed_bar_fails_the_job_and_says_which_and_where(client: Client) -> None:
    await post(client, [shard("s1", 5, 10), shard("s2", 3, 10)])
    await post(client, shard("s2", 4, 10, status="error", error="KeyError: 'x'"))
    summary = await job(client, "etl")
    assert summary["state"] == "failed"
    assert (summary["error"], summary["error_task"], summary["error_host"]) == (
        "KeyError: 'x'",
        "s2",
        "worker-2",
    )


async def test_without_a_run_task_a_job_completes_when_every_bar_has(client: Client) -> None:
    await post(client, [shard("s1", 10, 10, status="close"), shard("s2", 5, 10)])
    assert (await job(client, "etl"))["state"] == "running"
    await post(client, shard("s2", 10, 10, status="close"))
    assert (await job(client, "etl"))["state"] == "completed"


async def test_loops_one_after_another_are_one_run_within_the_gap(
    make_client: MakeClient, clock: FakeClock
) -> None:
    """``PROGRESSISTA_JOB=etl python etl.py`` with three loops in a row has no bar open
    between two of them: each loop made a run of its own, with a completion alert each."""
    client = await make_client(job_gap=10)
    await post(client, shard("s1", 10, 10, status="close"))  # the first loop, done
    clock.advance(9)
    await cleanup(client, clock)
    assert (await job(client, "etl"))["state"] == "running"  # another bar may follow
    await post(client, shard("s2", 10, 10, status="close"))  # the next loop, at once
    ended = clock()
    clock.advance(9.5)
    await cleanup(client, clock)
    assert (await job(client, "etl"))["state"] == "running"  # the gap counts from the last
    clock.advance(0.5)
    await cleanup(client, clock)
    summary = await job(client, "etl")
    assert (summary["run"], summary["state"], summary["tasks"]["completed"]) == (1, "completed", 2)
    assert summary["finished_at"] == ended  # when its last bar ended, not when the gap ran out
    await post(client, shard("s3", 1, 10))  # after the gap: a new run
    assert (await job(client, "etl"))["run"] == 2


async def test_a_bar_after_the_gap_starts_the_next_run_whether_or_not_cleanup_ran(
    make_client: MakeClient, clock: FakeClock
) -> None:
    """Servers sharing Redis run their cleanup at different moments: the run a bar joins is
    decided by the bar's own time, so every server makes the same runs."""
    client = await make_client(job_gap=10)
    await post(client, shard("s1", 10, 10, status="close"))
    ended = clock()
    clock.advance(10.5)  # past the gap, and no cleanup has run
    await post(client, shard("s2", 1, 10))
    listed = {j["id"]: j for j in await jobs(client)}
    assert (listed["etl#1"]["state"], listed["etl#1"]["finished_at"]) == ("completed", ended)
    assert (listed["etl#2"]["state"], listed["etl#2"]["tasks"]["active"]) == ("running", 1)


def test_a_run_completed_after_its_gap_stays_completed_when_touched() -> None:
    """A change to a finished bar (not a rerun) is judged at its own instant, which is within
    the gap: the run must not go back to running, nor be completed (and alerted) twice."""
    runs = _Runs(gap=10)
    runs.put("s1", "completed", {"job": "etl"}, 0, 0)
    runs.jobs.expire(10.0)
    assert runs.counts() == {"etl#1": ("completed", 0, 1, 0, None)}
    runs.put("s1", "completed", {"job": "etl"}, 11, 0)  # the same run of the bar: no rerun
    assert runs.counts() == {"etl#1": ("completed", 0, 1, 0, None)}
    assert [state for _, _, state in runs.told].count("completed") == 1


async def test_an_announced_size_reached_completes_a_job_without_waiting_for_the_gap(
    make_client: MakeClient,
) -> None:
    client = await make_client(job_gap=10)
    sized = {"job": "etl", "job_size": 2}
    await post(client, [event("a", status="close", meta=sized), event("b", meta=sized)])
    assert (await job(client, "etl"))["state"] == "running"
    await post(client, event("b", status="close", meta=sized))
    assert (await job(client, "etl"))["state"] == "completed"


async def test_a_recurring_job_name_gives_one_job_per_run(client: Client) -> None:
    head = {"job": "nightly", "role": "run"}
    await post(client, [event("nightly", meta=head), event("n-a", meta={"job": "nightly"})])
    await post(client, [event("n-a", status="close"), event("nightly", status="close", meta=head)])
    await post(client, [event("nightly", meta=head), event("n-b", meta={"job": "nightly"})])
    listed = await jobs(client)
    assert [(j["id"], j["state"]) for j in listed] == [
        ("nightly#2", "running"),
        ("nightly#1", "completed"),
    ]
    assert (await job(client, "nightly"))["run"] == 2
    response = await client.get("/jobs/nightly?run=1")
    assert (await response.json())["job"]["state"] == "completed"


async def test_a_finished_job_stays_listed_after_its_tasks_expired(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(retention=60, job_retention=3600, max_jobs=2)
    await post(client, [shard("s1", 10, 10, status="close")])
    clock.advance(61)
    await cleanup(client, clock)
    assert client.app[STORE].table.tasks == {}
    summary = await job(client, "etl")
    assert (summary["state"], summary["tasks"]["completed"], summary["n"]) == ("completed", 1, 10)
    clock.advance(3600)
    await cleanup(client, clock)
    assert await jobs(client) == []


async def test_only_the_newest_max_jobs_finished_runs_are_kept(make_client: MakeClient) -> None:
    client = await make_client(max_jobs=2)
    for name in ("a", "b", "c"):
        await post(client, event(f"{name}-1", status="close", meta={"job": name}))
    assert sorted(j["job"] for j in await jobs(client)) == ["b", "c"]


async def test_jobs_filter_by_state_and_name(client: Client) -> None:
    await post(
        client,
        [
            event("a1", meta={"job": "a"}),
            event("b1", status="close", meta={"job": "b"}),
            event("c1", status="error", error="x", meta={"job": "c"}),
        ],
    )
    assert [j["job"] for j in await jobs(client, "?state=completed,failed")] in (
        ["c", "b"],
        ["b", "c"],
    )
    assert [j["job"] for j in await jobs(client, "?job=a")] == ["a"]
    response = await client.get("/jobs?state=done")
    assert response.status == 400
    assert (await response.json())["details"][0]["message"] == (
        "unknown state 'done'; use running, stalled, completed, failed"
    )
    assert (await client.get("/jobs/nobody")).status == 404


async def test_a_job_lists_its_tasks_nested_under_their_parents(client: Client) -> None:
    head = {"job": "etl", "role": "run"}
    await post(
        client,
        [
            event("etl", meta=head),
            event("worker-1", meta={"job": "etl", "parent": "etl"}),
            event("worker-1/inner", meta={"job": "etl", "parent": "worker-1"}),
            event("worker-2", meta={"job": "etl", "parent": "etl"}),
        ],
    )
    response = await client.get("/jobs/etl")
    tree = (await response.json())["tasks"]

    def shape(nodes: list[dict[str, Any]]) -> list[Any]:
        return sorted((node["task_id"], shape(node["children"])) for node in nodes)

    assert shape(tree) == [("etl", [("worker-1", [("worker-1/inner", [])]), ("worker-2", [])])]


async def test_a_bar_relabelled_into_another_job_moves_there(client: Client) -> None:
    """It stayed counted in the job it first joined, which the other one's 404 contradicted
    (GET /tasks?job=J2 listed it). Its second event is deferred (a busy bar), the third moves."""
    await post(client, [event("sw", n=1, meta={"job": "J1"}), event("stay", meta={"job": "J1"})])
    await post(client, event("sw", n=2, meta={"job": "J1"}))
    await post(client, event("sw", n=3, meta={"job": "J2"}))
    first, second = await job(client, "J1"), await job(client, "J2")
    assert (first["tasks"]["active"], first["n"]) == (1, 0)
    assert (second["tasks"]["active"], second["n"]) == (1, 3)
    # A job that held only the bar goes, as if it had never been.
    await post(client, event("solo", meta={"job": "K1"}))
    await post(client, event("solo", meta={"job": "K2"}))
    assert (await client.get("/jobs/K1")).status == 404
    assert (await job(client, "K2"))["tasks"]["active"] == 1
    # Out of every job: it leaves its run, and joins none.
    await post(client, event("solo", meta={}))
    assert (await client.get("/jobs/K2")).status == 404


async def test_a_bar_removed_while_open_fails_its_job_which_then_ends(
    make_client: MakeClient, clock: FakeClock
) -> None:
    """It will never close: counted open, its run stayed stalled for good, never finished, so
    never trimmed or dropped (deleting open bars of unique jobs kept 100k runs listed)."""
    client = await make_client(max_jobs=3, stale_after=10, abandon_after=10)
    await post(client, [shard("done", 10, 10, status="close"), shard("open", 5, 10)])
    assert (await client.delete("/tasks/open")).status == 204
    summary = await job(client, "etl")
    assert (summary["state"], summary["tasks"]["failed"], summary["error"]) == (
        "failed",
        1,
        "open was removed before it ended",
    )
    # Abandoned by cleanup, a run's head too; and finished runs are trimmed to max_jobs.
    for number in range(5):
        name = f"lost-{number}"
        await post(client, event(name, meta={"job": name, "role": "run"}))
    clock.advance(11)
    await cleanup(client, clock)  # stale
    clock.advance(11)
    await cleanup(client, clock)  # abandoned: removed
    assert sorted(client.app[STORE].table.tasks) == ["done"]
    assert {j["state"] for j in await jobs(client)} == {"failed"}
    await post(client, event("next", meta={"job": "next"}))
    assert len(await jobs(client)) <= 3


async def test_a_run_head_relabelled_away_leaves_its_run_headless(client: Client) -> None:
    head = {"job": "A", "role": "run"}
    await post(client, [event("A", meta=head), event("a1", meta={"job": "A"})])
    await post(client, event("a1", status="close", meta={"job": "A"}))
    await post(client, event("A", meta={"job": "B", "role": "run"}))
    first = await job(client, "A")
    assert (first["head"], first["state"], first["tasks"]["completed"]) == (None, "completed", 1)


async def test_a_bar_rerun_under_another_job_leaves_its_finished_run_as_it_was(
    client: Client,
) -> None:
    """Task ids reused across per-day job names: yesterday's run keeps its failure."""
    await post(client, [shard("s1", 10, 10, status="close"), shard("s2", 5, 10)])
    await post(client, shard("s2", 5, 10, status="error", error="boom"))
    assert (await job(client, "etl"))["state"] == "failed"
    await post(client, event("s2", n=1, meta={"job": "etl-tue"}))
    await post(client, shard("s3", 1, 10))
    listed = {j["id"]: j for j in await jobs(client)}
    assert (listed["etl#1"]["state"], listed["etl#1"]["tasks"]["failed"]) == ("failed", 1)
    assert listed["etl#2"]["tasks"]["active"] == 1  # a new run of etl, not yesterday's
    assert listed["etl-tue#1"]["tasks"]["active"] == 1


class _Runs:
    """A table with its job index, fed task states one at a time, and the runs' changes told."""

    def __init__(self, gap: float = 0.0) -> None:
        from progressista.server.table import TaskTable

        self.jobs = JobIndex(gap=gap)
        self.told: list[tuple[str, str | None, str]] = []
        self.jobs.watch(lambda before, run: self.told.append((run.id, before, run.state)))
        self.table = TaskTable(jobs=self.jobs)

    def put(
        self, task_id: str, state: str, meta: dict[str, Any], at: float, created: float
    ) -> None:
        from progressista.server.task import Task

        closed = at if state in ("completed", "failed") else None
        rev = self.table.rev + 1
        task = Task(
            task_id=task_id,
            state=state,
            n=1,
            total=10,
            meta=meta,
            updated_at=at,
            created_at=created,
            closed_at=closed,
            rev=rev,
        )
        self.table.commit(task, 0)
        self.table.publish()

    def reloaded(self) -> _Runs:
        """A server starting on what this one stored: its tasks, and its finished runs'
        records (as RedisStore._load gives them to TaskTable.replace_all)."""
        again = _Runs(self.jobs.gap)
        records = sorted(self.jobs.finished(), key=lambda job: job.finished_at or 0.0)
        again.table.replace_all(self.table.tasks.values(), self.table.rev, records)
        again.jobs = again.table.jobs  # (a new index, with the same watchers)
        return again

    def members(self) -> dict[str, list[str]]:
        return {job.id: sorted(self.jobs.members(job.id)) for job in self.jobs.jobs()}

    def counts(self) -> dict[str, tuple[str, int, int, int, str | None]]:
        return {
            job.id: (
                job.state,
                job.tasks["active"],
                job.tasks["completed"],
                job.tasks["failed"],
                job.head,
            )
            for job in self.jobs.jobs()
        }


def test_a_bar_rerun_outside_any_job_leaves_its_finished_run_for_good() -> None:
    """It stayed a member: labelled again, it moved from a state the run never counted, and
    the run read -1 active, running for ever."""
    runs = _Runs()
    runs.put("s", "active", {"job": "etl"}, 1, 1)
    runs.put("s", "completed", {"job": "etl"}, 2, 1)
    runs.put("s", "active", {}, 3, 3)  # a rerun outside any job
    runs.put("s", "completed", {"job": "etl"}, 4, 3)
    assert runs.counts() == {
        "etl#1": ("completed", 0, 1, 0, None),
        "etl#2": ("completed", 0, 1, 0, None),
    }


def test_a_restart_rebuilds_runs_as_they_were_live() -> None:
    """Loaded by their last change, bars run one after another (each longer than the gap)
    made a run each; a task labelled after its creation joins the run under way when it
    took the label, not the one under way when it was created."""
    runs = _Runs(gap=5.0)
    for i in range(3):  # etl#1: three bars of 8 s, one after another
        runs.put(f"a{i}", "active", {"job": "etl"}, 8 * i, 8 * i)
        runs.put(f"a{i}", "completed", {"job": "etl"}, 8 * i + 8, 8 * i)
    runs.put("x", "active", {}, 20, 20)  # created while etl#1 ran, in no job
    runs.jobs.expire(40)  # etl#1 completed
    runs.put("x", "active", {"job": "etl"}, 50, 20)  # labelled: etl#2
    runs.put("x", "completed", {"job": "etl"}, 60, 20)
    runs.put("b", "active", {"job": "etl"}, 61, 61)
    runs.put("b", "completed", {"job": "etl"}, 62, 61)
    runs.jobs.expire(70)  # etl#2 completed
    runs.put("c", "active", {"job": "etl"}, 80, 80)  # etl#3, running
    assert runs.members() == {"etl#1": ["a0", "a1", "a2"], "etl#2": ["b", "x"], "etl#3": ["c"]}
    again = runs.reloaded()
    assert (again.counts(), again.members()) == (runs.counts(), runs.members())
    assert again.told == []  # no run completed anew: no alert


def test_a_headless_run_that_failed_takes_the_bars_that_follow_while_its_work_goes_on() -> None:
    """One script (PROGRESSISTA_JOB alone) whose bar fails while others run: the run failed at
    once, and every bar started after it began a run of its own (10 runs, and an alert each,
    for one crawler with 10 failing bars)."""
    runs = _Runs(gap=5.0)
    runs.put("a", "active", {"job": "crawl"}, 0, 0)
    runs.put("b", "active", {"job": "crawl"}, 0, 0)
    runs.put("a", "failed", {"job": "crawl"}, 1, 0)  # crawl#1 failed, b still running
    runs.put("c", "active", {"job": "crawl"}, 2, 2)
    runs.put("b", "completed", {"job": "crawl"}, 4, 0)
    runs.put("c", "completed", {"job": "crawl"}, 6, 2)
    runs.put("d", "active", {"job": "crawl"}, 8, 8)  # within the gap after the last bar
    assert runs.members() == {"crawl#1": ["a", "b", "c", "d"]}
    assert runs.told == [("crawl#1", "running", "failed")]  # one alert
    runs.put("d", "completed", {"job": "crawl"}, 9, 8)
    runs.put("e", "active", {"job": "crawl"}, 20, 20)  # the gap has passed: the next run
    assert runs.members() == {"crawl#1": ["a", "b", "c", "d"], "crawl#2": ["e"]}


def test_a_failed_run_with_a_head_takes_bars_until_its_head_ends() -> None:
    runs = _Runs()
    runs.put("J", "active", {"job": "J", "role": "run"}, 0, 0)
    runs.put("a", "failed", {"job": "J"}, 1, 0)
    runs.put("b", "active", {"job": "J"}, 2, 2)  # the program goes on: the same run
    runs.put("J", "failed", {"job": "J", "role": "run"}, 3, 0)
    runs.put("c", "active", {"job": "J"}, 4, 4)  # the head ended: the next run
    assert runs.members() == {"J#1": ["J", "a", "b"], "J#2": ["c"]}


def test_an_open_bar_deleted_from_a_failed_run_that_goes_on_counts_failed() -> None:
    """A failed run takes new bars while bars are open: one deleted while open would keep it
    open, taking every later bar of its name, for good."""
    runs = _Runs(gap=5.0)
    runs.put("a", "failed", {"job": "crawl"}, 0, 0)
    runs.put("b", "active", {"job": "crawl"}, 1, 1)
    runs.table.remove("b", runs.table.rev + 1)
    runs.table.publish()
    runs.put("c", "active", {"job": "crawl"}, 30, 30)
    assert runs.members() == {"crawl#1": ["a"], "crawl#2": ["c"]}
    assert runs.counts()["crawl#1"] == ("failed", 0, 0, 2, None)


def _completed_by_its_head_then_its_open_bar_deleted() -> _Runs:
    runs = _Runs()
    runs.put("J", "active", {"job": "J", "role": "run"}, 1, 1)
    runs.put("w", "active", {"job": "J"}, 1, 1)
    runs.put("J", "completed", {"job": "J", "role": "run"}, 2, 1)
    runs.table.remove("w", runs.table.rev + 1)
    runs.table.publish()
    return runs


def test_removing_an_open_bar_of_a_finished_run_changes_nothing() -> None:
    """The head completed the run with a bar still open: deleting that bar later failed the
    run a second time (and alerted again)."""
    runs = _completed_by_its_head_then_its_open_bar_deleted()
    assert runs.told == [("J#1", "running", "completed")]


def test_a_finished_run_never_runs_or_stalls_again() -> None:
    """Its head completed it with a bar open, the bar was deleted (still counted open, as a
    finished run keeps its bars as they were), then the head closed again without its role:
    the headless run was judged anew, stalled on a bar that no longer exists, for good."""
    runs = _completed_by_its_head_then_its_open_bar_deleted()
    runs.put("J", "completed", {"job": "J"}, 3, 1)  # a repeated close, the role gone
    runs.jobs.expire(1000.0)
    assert runs.told == [("J#1", "running", "completed")]
    assert runs.counts()["J#1"][0] == "completed"


def test_a_head_that_lost_its_role_is_a_bar_and_one_that_gained_it_is_not_summed() -> None:
    runs = _Runs()
    runs.put("J", "active", {"job": "J", "role": "run"}, 1, 1)
    runs.put("J", "active", {"job": "J"}, 2, 1)  # no longer the head: counted
    assert runs.counts() == {"J#1": ("running", 1, 0, 0, None)}
    runs.put("J", "active", {"job": "K"}, 3, 1)  # relabelled: J#1 held only it
    assert runs.counts() == {"K#1": ("running", 1, 0, 0, None)}
    runs.put("K", "active", {"job": "K"}, 4, 4)
    runs.put("K", "active", {"job": "K", "role": "run"}, 5, 4)  # becomes the head: not summed
    assert runs.counts() == {"K#1": ("running", 1, 0, 0, "K")}


def test_a_replica_removing_what_it_missed_cuts_no_bar_short() -> None:
    """A Redis replica that reloads removes the tasks it missed the removal of, as it last saw
    them: maybe still open, though they completed on another server meanwhile."""
    runs = _Runs()
    runs.put("x", "active", {"job": "etl"}, 1, 1)
    runs.put("y", "active", {"job": "etl"}, 1, 1)
    runs.table.remove("x", runs.table.rev + 1, cut_short=False)
    runs.table.publish()
    (run,) = runs.jobs.jobs()
    assert (run.state, run.tasks["failed"]) == ("running", 0)
    runs.table.remove("y", runs.table.rev + 1)  # deleted while open: cut short
    runs.table.publish()
    (run,) = runs.jobs.jobs()
    assert (run.state, run.tasks["failed"]) == ("failed", 1)


async def test_tasks_whose_parents_form_a_cycle_are_listed_once_each(client: Client) -> None:
    """``meta.parent`` is the writer's word: a → b → a (and c under a) left every one of them
    out of the job's tree."""
    await post(
        client,
        [
            event("a", meta={"job": "cyc", "parent": "b"}),
            event("b", meta={"job": "cyc", "parent": "a"}),
            event("c", meta={"job": "cyc", "parent": "a"}),
            event("d", meta={"job": "cyc"}),
        ],
    )
    tree = (await (await client.get("/jobs/cyc")).json())["tasks"]

    def shape(nodes: list[dict[str, Any]]) -> list[Any]:
        return [(node["task_id"], shape(node["children"])) for node in nodes]

    # The first task of the cycle becomes a root, the rest hang from it as their parents say.
    assert shape(tree) == [("d", []), ("a", [("b", []), ("c", [])])]


async def test_a_job_name_with_a_hash_is_found_by_its_name(client: Client) -> None:
    await post(client, event("x", meta={"job": "etl#nightly"}))
    response = await client.get("/jobs/etl%23nightly")
    assert response.status == 200
    assert (await response.json())["job"]["id"] == "etl#nightly#1"
    response = await client.get("/jobs/etl%23nightly%231")  # its key still works
    assert (await response.json())["job"]["job"] == "etl#nightly"


async def test_a_completed_leave_false_bar_leaves_the_board_soon_but_still_counts(
    client: Client, clock: FakeClock
) -> None:
    inner = {"job": "etl", "leave": False}
    await post(client, [shard("outer", 1, 2), event("inner", n=5, total=5, meta=inner)])
    await post(client, event("inner", status="close", meta=inner))
    await post(client, event("broken", n=1, total=5, meta=inner))
    await post(client, event("broken", status="error", error="boom", meta=inner))
    clock.advance(11)
    await cleanup(client, clock)
    # tqdm erases both; the board keeps the failure for its full retention, for someone to see.
    assert sorted(client.app[STORE].table.tasks) == ["broken", "outer"]
    counts = (await job(client, "etl"))["tasks"]
    assert (counts["completed"], counts["failed"]) == (1, 1)


async def test_viewers_hear_of_job_changes(client: Client) -> None:
    await post(client, shard("s1", 1, 10))
    async with client.ws_connect("/ws?limit=10") as viewer:
        assert (await receive(viewer))["type"] == "view"
        overview = await receive(viewer, jobs=True)
        assert (overview["type"], overview["whole"], list(overview["jobs"])) == (
            "jobs",
            True,
            ["etl#1"],
        )
        assert overview["jobs"]["etl#1"]["history"]  # the whole run comes with its history
        await post(client, shard("s1", 5, 10))
        message = await receive(viewer, jobs=True)
        while message["type"] != "jobs":
            message = await receive(viewer, jobs=True)
        assert message["whole"] is False
        assert message["jobs"]["etl#1"]["fraction"] == pytest.approx(0.5)
        assert "history" not in message["jobs"]["etl#1"]


async def next_jobs(viewer: Any) -> dict[str, Any]:
    message: dict[str, Any] = await receive(viewer, jobs=True)
    while message["type"] != "jobs":
        message = await receive(viewer, jobs=True)
    return message


def held(runs: dict[str, dict[str, Any]], message: dict[str, Any]) -> None:
    """Apply a jobs message to the runs a viewer holds, as the page does."""
    if message["whole"]:
        runs.clear()
    for key in message["removed"]:
        runs.pop(key, None)
    for key, fields in message["jobs"].items():
        runs[key] = {**runs.get(key, {}), **fields}


async def test_a_run_viewers_hold_comes_with_only_its_changed_fields(client: Client) -> None:
    """A running job changes at every broadcast; its whole 500 bytes to every viewer each time
    was a twentieth of what viewers were sent."""
    await post(client, shard("s1", 1, 10))
    first: dict[str, dict[str, Any]] = {}
    second: dict[str, dict[str, Any]] = {}
    async with client.ws_connect("/ws?limit=10") as one:
        assert (await receive(one))["type"] == "view"
        held(first, await next_jobs(one))
        await post(client, shard("s1", 4, 10))
        held(first, await next_jobs(one))  # the run's first broadcast: whole
        await post(client, shard("s1", 5, 10))
        change = await next_jobs(one)
        assert set(change["jobs"]["etl#1"]) <= {
            "n",
            "fraction",
            "rate",
            "eta",
            "updated_at",
            "advanced_at",
        }, change
        assert "n" in change["jobs"]["etl#1"]
        held(first, change)
        async with client.ws_connect("/ws?limit=10") as two:
            assert (await receive(two))["type"] == "view"
            held(second, await next_jobs(two))
            await post(client, [shard("s1", 8, 10), shard("s2", 1, 4)])
            for viewer, runs in ((one, first), (two, second)):
                change = await next_jobs(viewer)
                assert "job" not in change["jobs"]["etl#1"]
                held(runs, change)
    (listed,) = await jobs(client)
    del listed["history"]
    for runs in (first, second):
        runs["etl#1"].pop("history", None)
        assert runs == {"etl#1": listed}


def test_a_newcomer_told_of_another_moment_gets_the_next_change_whole() -> None:
    """Viewers keeping up hold what they were last told; a newcomer holds the runs as they are.
    A run they disagree on (changed since the last broadcast) goes whole next time, or a field
    that changed and changed back between broadcasts would stay different for the newcomer."""
    run = Job(
        id="etl#1", job="etl", run=1, state="running",
        tasks={"active": 1, "stale": 0, "completed": 0, "failed": 0}, n=1, total=10,
        fraction=0.1, rate=None, eta=None, unit="it", size=None, head=None, head_state=None,
        started_at=1.0, updated_at=1.0, finished_at=None, advanced_at=1.0, error=None,
        error_task=None, error_host=None, history=(1.0, 0.1),
    )  # fmt: skip
    other = msgspec.structs.replace(run, id="load#1", job="load")
    told: dict[str, dict[str, Any]] = {}
    assert feed.job_changes([run, other], [], told) is not None  # both told, whole
    assert feed.job_changes([run], [], told) is None  # nothing differs
    stalled = msgspec.structs.replace(run, state="stalled", updated_at=2.0)
    feed.keep_told_alike(told, [stalled, other])  # a newcomer sees it stalled
    assert set(told) == {"load#1"}
    back = msgspec.structs.replace(run, updated_at=3.0)  # running again: only updated_at moved
    message = msgspec.json.decode(feed.job_changes([back, other], [], told) or b"null")
    assert message["jobs"]["etl#1"]["state"] == "running"  # whole: the newcomer needs it
    assert "load#1" not in message["jobs"]
    message = msgspec.json.decode(feed.job_changes([], ["load#1"], told) or b"null")
    assert (message["jobs"], message["removed"], set(told)) == ({}, ["load#1"], {"etl#1"})
    feed.keep_told_alike(told, [])  # a newcomer shown no run: each goes whole next time
    assert told == {}


async def test_metrics_give_each_job_gauges_under_job_name_with_a_cap(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(metrics_jobs=2)
    for name in ("a", "b", "c"):
        await post(client, event(f"{name}-1", n=1, total=4, meta={"job": name}))
        clock.advance(1)
    text = await (await client.get("/metrics")).text()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    done = families["progressista_job_done_ratio"]
    assert sorted(sample.labels["job_name"] for sample in done.samples) == ["b", "c"]
    assert all("job" not in sample.labels for sample in done.samples)
    assert {sample.value for sample in done.samples} == {0.25}
    state = families["progressista_job_state"]
    running = [s for s in state.samples if s.labels["state"] == "running" and s.value == 1]
    assert len(running) == 2
    tasks = families["progressista_job_tasks"]
    assert {(s.labels["job_name"], s.labels["state"], s.value) for s in tasks.samples} >= {
        ("c", "active", 1.0)
    }


@pytest.mark.parametrize("seed", range(12))
def test_busy_bars_summed_when_read_equal_bars_summed_at_every_change(seed: int) -> None:
    """An active bar's changes wait to be summed until a reader asks (JobIndex.fold): whatever
    the changes and whenever the reads, the figures read (and the states judged, stalls too)
    are those of an index that summed every change at once."""
    import random

    from progressista.server.event import Label
    from progressista.server.job import JobIndex
    from progressista.server.table import TaskTable
    from progressista.server.task import Task

    rng = random.Random(seed)
    deferring, eager = (TaskTable(jobs=JobIndex(stall_after=1.5)) for _ in range(2))
    now, rev = 1000.0, 0
    states: dict[str, Task] = {}
    left: set[str] = set()
    for _ in range(400):
        now += rng.choice((0.01, 0.05, 0.3, 2.0))
        rev += 1
        task_id = f"s{rng.randrange(6)}"
        before = states.get(task_id)
        roll = rng.random()
        if roll < 0.05:  # cleanup's pass: stalls judged
            for table in (deferring, eager):
                table.jobs.expire(now)
            continue
        if before is not None and roll < 0.09:
            for table in (deferring, eager):
                table.remove(task_id, rev)
                table.publish()
            del states[task_id]
            left.discard(task_id)
            continue
        state = "active"
        if roll < 0.12:
            state = "failed"
        elif roll < 0.17:
            state = "completed"
        elif roll < 0.20:
            state = "stale"
        moved = rng.randrange(3) if rng.random() < 0.7 else 0  # heartbeats: no move
        n = (before.n if before is not None and before.state == "active" else 0) + moved
        total = rng.choice((None, 0, 50, 50)) if before is None else before.total
        if before is not None and total is not None and rng.random() < 0.05:
            total = 50 - total  # a total set late (tqdm(total=0), then a real one), or reset
        meta: dict[str, Label] = {"job": "etl"}
        if rng.random() < 0.1:
            meta["job_size"] = 8
        if task_id in left or rng.random() < 0.04:
            meta = {}  # a bar that leaves its job, for good
            left.add(task_id)
        task = Task(
            task_id=task_id,
            state=state,
            n=n,
            total=total,
            rate=rng.random() * 5,
            unit=rng.choice(("it", "it", "it", "B")),
            meta=meta,
            error="boom" if state == "failed" else None,
            created_at=before.created_at if before is not None and state != "active" else now,
            updated_at=now,
            closed_at=now if state in ("completed", "failed") else None,
            rev=rev,
        )
        states[task_id] = task
        for table in (deferring, eager):
            table.commit(task, 0)
            table.publish()
        eager.jobs.fold()  # summed at every change
        eager.jobs.settle()
        want = [_figures(job) for job in eager.jobs.jobs()]
        if rng.random() < 0.1:  # read now and then
            assert [_figures(job) for job in deferring.jobs.jobs()] == want
    assert [_figures(job) for job in deferring.jobs.jobs()] == [
        _figures(job) for job in eager.jobs.jobs()
    ]


def _figures(job: Any) -> dict[str, Any]:
    """Everything a job says, but its sampled history and the ETA fitted to it (samples follow
    when each index reads), with sums rounded (summed in another order)."""
    figures = {
        field: getattr(job, field)
        for field in job.__struct_fields__
        if field not in ("history", "eta", "n", "total", "fraction", "rate")
    }
    for field in ("n", "total", "fraction", "rate"):
        value = getattr(job, field)
        figures[field] = None if value is None else round(value, 6)
    return figures


async def test_a_job_name_used_again_while_nobody_viewed_is_not_told_removed(
    make_client: MakeClient, clock: FakeClock
) -> None:
    """A run dropped past its retention frees its key (etl#1): a later run of the name takes it
    again. A viewer arriving later must see that run, not be told it was removed."""
    client = await make_client(job_retention=60)
    async with client.ws_connect("/ws?limit=10") as first:  # someone looked once, and left
        assert (await receive(first))["type"] == "view"
    await post(client, shard("s1", 1, 1, status="close"))
    clock.advance(61)
    await cleanup(client, clock)  # etl#1 past its retention: dropped
    await post(client, shard("s2", 1, 10))  # a new etl#1
    async with client.ws_connect("/ws?limit=10") as viewer:
        assert (await receive(viewer))["type"] == "view"
        overview = await receive(viewer, jobs=True)
        assert list(overview["jobs"]) == ["etl#1"]
        await post(client, shard("s2", 2, 10))
        message = await receive(viewer, jobs=True)
        while message["type"] != "jobs":
            message = await receive(viewer, jobs=True)
        assert (list(message["jobs"]), message["removed"]) == (["etl#1"], [])
        assert message["jobs"]["etl#1"]["n"] == 2


async def test_a_run_under_a_key_used_before_comes_whole_to_a_new_viewer(
    make_client: MakeClient, clock: FakeClock
) -> None:
    """A run dropped while nobody watched, and a new run of the name under the same key (etl#1):
    a viewer arriving after must get the new run whole, not a diff against the dead one (the
    dashboard showed a card with no name and an "undefined" error)."""
    client = await make_client(job_retention=60)
    async with client.ws_connect("/ws?limit=10") as first:  # told of etl#1, then gone
        assert (await receive(first))["type"] == "view"
        await post(client, shard("s1", 1, 1, status="close"))
        message = await next_jobs(first)
        while "etl#1" not in message["jobs"]:
            message = await next_jobs(first)
    clock.advance(61)
    await cleanup(client, clock)  # etl#1 past its retention: dropped, nobody told
    runs: dict[str, dict[str, Any]] = {}
    async with client.ws_connect("/ws?limit=10") as viewer:
        assert (await receive(viewer))["type"] == "view"
        # No runs: an empty overview (a page that reconnected to a restarted server drops the
        # runs it held).
        empty = {"type": "jobs", "jobs": {}, "removed": [], "whole": True}
        assert await receive(viewer, jobs=True) == empty
        await post(client, shard("s2", 1, 10))  # a new etl#1
        held(runs, await next_jobs(viewer))
    (listed,) = await jobs(client)
    del listed["history"]
    assert runs == {"etl#1": listed}


async def test_with_nobody_viewing_the_hub_keeps_no_job_changes(client: Client) -> None:
    """Changes of runs nobody is shown are forgotten at each broadcast (a viewer arriving gets
    every run afresh): a week of one-off jobs with nobody looking holds nothing."""
    for number in range(50):
        await post(client, event(f"b{number}", n=1, total=1, meta={"job": f"build-{number}"}))
    jobs = client.app[STORE].table.jobs
    await eventually(lambda: not jobs._changed and not jobs._dropped)


def test_a_size_announced_by_a_busy_bar_between_reads_counts() -> None:
    """A bar whose changes wait to be summed announces how many bars its job will run in one
    event and not the next: the announcement holds, as if every change had been summed."""
    from progressista.server.event import Label
    from progressista.server.table import TaskTable
    from progressista.server.task import Task

    table = TaskTable()
    metas: list[dict[str, Label]] = [
        {"job": "etl"},
        {"job": "etl"},
        {"job": "etl", "job_size": 5},
        {"job": "etl"},
    ]
    for rev, meta in enumerate(metas, 1):
        table.commit(Task(task_id="s1", n=rev, total=10, meta=meta, updated_at=rev, rev=rev), 0)
        table.publish()
    job = table.jobs.get("etl#1")
    assert job is not None
    assert (job.size, job.n) == (5, 4)
    assert job.fraction == pytest.approx(0.4 / 5)


def test_a_bar_whose_total_goes_from_zero_to_a_number_counts_its_fraction() -> None:
    """tqdm([]) or tqdm(total=0) with the total set later: a total of 0 has no fraction, a
    later real one has (and back)."""
    from progressista.server.table import TaskTable
    from progressista.server.task import Task

    table = TaskTable()
    for rev, (n, total) in enumerate([(0, 0), (5, 10), (5, 0), (8, 10)], 1):
        task = Task(task_id="s1", n=n, total=total, meta={"job": "etl"}, updated_at=rev, rev=rev)
        table.commit(task, 0)
        table.publish()
        job = table.jobs.get("etl#1")
        assert job is not None
        assert job.fraction == (None if total == 0 else pytest.approx(n / total)), (n, total)


def test_the_overview_makes_jobs_only_of_the_runs_it_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every viewer that arrives or catches up asks for the overview: a day of finished one-off
    runs must not each be made into a job for it (1,000 runs took 10 ms a viewer)."""
    from progressista.server import job as job_module
    from progressista.server.table import TaskTable
    from progressista.server.task import Task

    table = TaskTable()
    rev = 0
    for number in range(200):
        rev += 1
        done = Task(
            task_id=f"once-{number}",
            n=1,
            total=1,
            meta={"job": f"once-{number}"},
            state="completed",
            updated_at=rev,
            closed_at=rev,
            rev=rev,
        )
        table.commit(done, 0)
    rev += 1
    table.commit(
        Task(task_id="live", n=1, total=9, meta={"job": "live"}, updated_at=rev, rev=rev), 0
    )
    table.publish()
    made: list[str] = []
    as_job = job_module._Run.as_job

    def counted(run: job_module._Run) -> Job:
        made.append(run.key)
        return as_job(run)

    monkeypatch.setattr(job_module._Run, "as_job", counted)
    shown = table.jobs.overview(5)
    assert [job.id for job in shown] == [
        "live#1",
        *(f"once-{n}#1" for n in (199, 198, 197, 196, 195)),
    ]
    assert sorted(made) == sorted(job.id for job in shown)


def test_a_new_run_past_max_jobs_drops_the_oldest_finished_without_reading_every_run() -> None:
    """A job whose every bar ends makes a new run with its next bar: in a churn of bars that
    start and end at once, each new run listed all 1,000 runs to drop one (0.85 ms a run)."""
    from collections import OrderedDict

    from progressista.server.job import JobIndex
    from progressista.server.table import TaskTable
    from progressista.server.task import Task

    read = 0

    class CountedRuns(OrderedDict[str, Any]):
        def items(self) -> Any:
            nonlocal read
            for item in super().items():
                read += 1
                yield item

    jobs = JobIndex(max_jobs=50)
    jobs._runs = CountedRuns()
    table = TaskTable(jobs=jobs)
    rev = 0

    def stored(task_id: str, job: str, state: str) -> None:
        nonlocal rev
        rev += 1
        closed = rev if state == "completed" else None
        task = Task(task_id=task_id, n=1, total=1, meta={"job": job}, state=state, rev=rev)
        task.updated_at, task.closed_at = rev, closed
        table.commit(task, 0)
        table.publish()

    stored("long", "long", "active")  # the oldest run, still running: it stays
    for number in range(500):
        stored(f"bar-{number}", "etl", "completed")  # each its own run of etl
    assert len(jobs) == 50
    kept = [job.id for job in jobs.jobs()]
    assert "long#1" in kept and "etl#500" in kept and "etl#452" in kept and "etl#451" not in kept
    assert read < 3 * 500  # one run looked at a drop (with every run read: 23,001)


def test_no_container_the_garbage_collector_walks_grows_with_the_tasks_in_jobs() -> None:
    """The server freezes what exists at startup (app.keep_out_of_collections); what the job
    index fills later must not be a tracked container with an entry per task: the dict of each
    task's run, empty (so untracked) at the freeze, made every full collection walk a million
    entries once filled (5.8-7.5 ms with a million bars in ten running jobs; 0.3-0.4 without)."""
    import gc

    from progressista.server.table import TaskTable
    from progressista.server.task import Task

    table = TaskTable()
    gc.collect()
    gc.freeze()
    try:
        for number in range(3000):
            task = Task(task_id=f"bar-{number}", n=1, total=9, meta={"job": f"job-{number % 3}"})
            task.rev = task.updated_at = number + 1
            table.commit(task, 0)
            table.publish()
        assert len(table.jobs) == 3
        gc.collect()
        sizes = [
            len(found)
            for found in gc.get_objects()
            if isinstance(found, (dict, list, set, tuple)) and "bar-2999" in found
        ]
        assert max(sizes, default=0) < 3000, sizes
    finally:
        gc.unfreeze()


def test_a_run_number_used_again_leaves_the_older_runs_members_working() -> None:
    """A failed run that stops failing is running again after a newer run of its job began;
    once the newer one is dropped (max_jobs), the next run of the job takes number 1 again.
    Events of the first run's members must still be taken (an index keyed by run name and
    number raised KeyError for each of them: found in review)."""
    from progressista.server.job import JobIndex
    from progressista.server.table import TaskTable
    from progressista.server.task import Task

    table = TaskTable(jobs=JobIndex(max_jobs=2))
    rev = 0

    def put(task_id: str, state: str, at: float, job: str = "etl", created: float = 0.0) -> None:
        nonlocal rev
        rev += 1
        task = Task(task_id=task_id, state=state, n=1, total=9, meta={"job": job}, rev=rev)
        task.error = "boom" if state == "failed" else None
        task.created_at, task.updated_at = created or at, at
        task.closed_at = at if state in ("completed", "failed") else None
        table.commit(task, 0)
        table.publish()
        table.jobs.settle()

    put("A", "active", 1)  # etl#1
    put("F", "active", 2)
    put("F", "failed", 3, created=2)  # etl#1 failed
    put("B", "active", 4)  # etl#2
    put("F", "completed", 5, created=2)  # not a rerun: etl#1 runs again (A is open)
    put("B", "completed", 6, created=4)
    put("X", "active", 8, job="other")  # etl#2 dropped: the oldest finished
    put("C", "active", 9)  # a new run of etl, numbered 1 again
    put("C", "completed", 10, created=9)
    put("Y", "active", 11, job="third")  # that one dropped in turn
    put("A", "active", 12)
    put("A", "completed", 13, created=1)
    assert table.get("A") is not None and table.get("A").state == "completed"  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", range(12))
def test_every_member_counts_in_a_listed_run_through_drops_reruns_and_restores(
    seed: int,
) -> None:
    """A random life of two jobs with room for few runs: bars fail, complete, come back, go;
    runs expire and are restored from elsewhere. Every task a run counts must count in that
    very run as listed (a new run numbered like a listed one replaced it: found in review)."""
    import random

    from progressista.server.job import JobIndex
    from progressista.server.table import TaskTable
    from progressista.server.task import Task

    rng = random.Random(seed)
    jobs = JobIndex(
        stall_after=1.5, retention=rng.choice((5.0, 30.0)), max_jobs=rng.choice((1, 2, 3))
    )
    table = TaskTable(jobs=jobs)
    now, rev = 1000.0, 0
    states: dict[str, Task] = {}
    for _ in range(600):
        now += rng.choice((0.01, 0.05, 0.3, 2.0))
        rev += 1
        task_id = f"s{rng.randrange(6)}"
        before = states.get(task_id)
        roll = rng.random()
        if roll < 0.05:
            jobs.expire(now + rng.choice((0, 10, 40)))
        elif roll < 0.07:
            name, number = rng.choice(("etl", "web")), rng.randrange(1, 5)
            counts = {"active": 0, "stale": 0, "completed": 1, "failed": 0}
            jobs.restore(
                Job(
                    id=f"{name}#{number}", job=name, run=number, state="completed",
                    tasks=counts, n=1, total=1, fraction=1, rate=None, eta=None, size=None,
                    head=None, head_state=None, started_at=now - 50, updated_at=now - 20,
                    finished_at=now - 20, advanced_at=now - 20, error=None, error_task=None,
                    error_host=None, history=(),
                )
            )  # fmt: skip
        elif before is not None and roll < 0.11:
            table.remove(task_id, rev)
            table.publish()
            del states[task_id]
        else:
            state = rng.choice(("active", "active", "failed", "completed", "stale"))
            same = before is not None and (state != "active" or rng.random() < 0.1)
            task = Task(
                task_id=task_id,
                state=state,
                n=rng.randrange(10),
                total=10,
                meta={"job": rng.choice(("etl", "etl", "web"))},
                error="boom" if state == "failed" else None,
                created_at=before.created_at if same and before is not None else now,
                updated_at=now,
                closed_at=now if state in ("completed", "failed") else None,
                rev=rev,
            )
            states[task_id] = task
            table.commit(task, 0)
            table.publish()
        for task_id, run in jobs._member.items():
            assert jobs._runs.get(run.key) is run and task_id in run.ids, (task_id, run.key)
