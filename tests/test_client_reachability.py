"""What the client knows about a server, and how long it lets the program wait: a fake clock."""

from __future__ import annotations

import sys

import pytest

from progressista.client.reachability import Reachability
from progressista.client.tuning import UNREACHABLE_EXIT_ATTEMPT, UNREACHABLE_WARNING_AFTER

from .conftest import FakeClock

URL = "http://127.0.0.1:8000"


def server(clock: FakeClock, flush_timeout: float = 2.0) -> Reachability:
    return Reachability(URL, flush_timeout, clock)


def test_a_server_never_tried_may_be_waited_for_the_whole_budget(clock: FakeClock) -> None:
    assert server(clock).allowance(10.0) == 2.0
    assert server(clock).allowance(0.5) == 0.5


def test_after_a_failed_attempt_nobody_waits_but_the_exit_tries_once(clock: FakeClock) -> None:
    reach = server(clock)
    reach.failed("connection refused")
    assert reach.known_down
    assert reach.allowance(2.0) == 0.0  # flush(), aclose(), a loop shutting down
    assert reach.allowance(2.0, at_exit=True) == UNREACHABLE_EXIT_ATTEMPT


def test_waiting_for_a_hung_server_spends_one_budget_for_the_whole_program(
    clock: FakeClock,
) -> None:
    reach = server(clock, flush_timeout=2.0)
    first = reach.allowance(2.0)  # the first aclose() against a server that never answers
    reach.spent(first, delivered=False)
    assert reach.unresponsive
    later = [reach.allowance(2.0) for _ in range(5)]  # every later block
    at_exit = reach.allowance(2.0, at_exit=True)
    assert first + sum(later) + at_exit <= 2.0
    assert later == [0.0] * 5 and at_exit == 0.0


def test_a_success_refills_the_budget(clock: FakeClock) -> None:
    reach = server(clock)
    reach.spent(2.0, delivered=False)
    assert reach.allowance(2.0) == 0.0
    reach.succeeded()
    assert not reach.known_down and reach.allowance(2.0) == 2.0


def test_one_warning_once_failures_have_lasted_and_one_line_on_recovery(
    clock: FakeClock,
) -> None:
    reach = server(clock)
    said = [reach.failed("connection refused")]
    clock.advance(UNREACHABLE_WARNING_AFTER - 1)
    said.append(reach.failed("connection refused"))
    clock.advance(1)
    said.append(reach.failed("connection refused"))
    clock.advance(60)
    said.append(reach.failed("connection refused"))
    assert said[:2] == [None, None] and said[3] is None
    assert said[2] == (
        f"progress updates have not reached the server at {URL} for 10 s (connection refused). "
        "Bars keep working here; their state is sent when the server answers again. Is it "
        "running, and is PROGRESSISTA_URL its address?"
    )
    assert (
        reach.succeeded() == f"the server at {URL} answers again; bars' states are being delivered."
    )
    assert reach.succeeded() is None


def test_a_short_program_hears_about_undelivered_states_at_exit_once(clock: FakeClock) -> None:
    reach = server(clock)
    reach.failed("connection refused")
    assert reach.undelivered_at_exit(3) == (
        f"the final state of 3 bars could not be delivered to the server at {URL} "
        "(connection refused)."
    )
    assert reach.undelivered_at_exit(3) is None


def test_a_program_warned_of_an_outage_still_hears_what_its_exit_could_not_deliver(
    clock: FakeClock,
) -> None:
    reach = server(clock)
    reach.failed("HTTP 503")
    clock.advance(12)
    assert reach.failed("HTTP 503") is not None  # the outage's warning
    assert reach.undelivered_at_exit(2) == (
        f"the final state of 2 bars could not be delivered to the server at {URL} (HTTP 503)."
    )
    assert reach.undelivered_at_exit(2) is None


@pytest.mark.parametrize("failures_before", [0, 1])
def test_nothing_to_say_when_nothing_was_lost(clock: FakeClock, failures_before: int) -> None:
    reach = server(clock)
    for _ in range(failures_before):
        reach.failed("HTTP 503")
    assert reach.undelivered_at_exit(0) is None


def test_a_warning_written_while_a_bar_is_shown_gets_a_line_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bar on the terminal has no newline: the warning was glued to the end of its line
    (``…9.94it/s]progressista:0: ProgressistaWarning: …``). It is cleared first and drawn
    again after, as ``tqdm.write`` does."""
    import io
    import warnings

    from tqdm import tqdm

    from progressista.client.warning import warn

    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stderr", terminal)

    def shown(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: object = None,
        line: str | None = None,
    ) -> None:
        # As Python's own: pytest records warnings instead of writing them.
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = shown
        with tqdm(total=10, file=sys.stderr, desc="shown", mininterval=0) as bar:
            bar.update(3)
            warn("the server is away")
            written = terminal.getvalue()
    lines = written.replace("\r", "\n").split("\n")
    (said,) = [line for line in lines if "the server is away" in line]
    assert said.startswith("progressista:0: ProgressistaWarning: the server is away")
    # And the bar is drawn again after it.
    assert "shown:  30%" in written[written.index("the server is away") :]
