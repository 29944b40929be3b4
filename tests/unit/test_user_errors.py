"""amoc.user_errors: a failing user's first failure at once, then one line per interval."""

import asyncio
import logging
import re
import time
from pathlib import Path

import pytest

from amoc import metrics, user_errors
from amoc.config import Config
from amoc.runner import Controller
from amoc.user_errors import FailureLog

pytestmark = pytest.mark.unit


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    """Keeps the records a logger got, and their text."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def lines() -> Lines:
    handler = Lines()
    logger = logging.getLogger("test.user_errors")
    logger.handlers[:] = [handler]
    logger.propagate = False
    return handler


def failure_log(lines: Lines, clock: Clock) -> FailureLog:
    return FailureLog(logging.getLogger("test.user_errors"), clock=clock)


def config(**values: object) -> Config:
    cfg = Config(environ={})
    cfg.declare(user_errors.PARAMETERS)
    for key, value in values.items():
        cfg.set(key, value)
    return cfg


def broken(text: str = "user three is broken") -> RuntimeError:
    try:
        raise RuntimeError(text)
    except RuntimeError as exc:
        return exc


RUN = object()


def test_first_failure_at_once_with_traceback_then_one_line_per_interval(lines: Lines) -> None:
    clock, cfg = Clock(), config()  # 30 s
    failures = failure_log(lines, clock)
    failures.failed(RUN, 3, 1, broken(), cfg)
    assert lines.text == ["user 3: start raised (run 1)"]
    assert lines.records[0].levelno == logging.ERROR
    assert lines.records[0].exc_info is not None  # the traceback, for the log file

    for run in range(2, 298):  # ten a second for 29.6 s: counted, not logged
        clock.now += 0.1
        failures.failed(RUN, 3, run, broken(f"broken at run {run}"), cfg)
    assert len(lines.records) == 1

    clock.now += 0.4  # 30 s after the first: the next failure writes the sum
    failures.failed(RUN, 3, 298, broken(), cfg)
    assert lines.text[1:] == [
        "user 3 failed 296 times in 30 s; last: RuntimeError: broken at run 297"
    ]
    assert lines.records[1].exc_info is None

    clock.now += 29.9  # within the next interval: nothing more
    failures.failed(RUN, 3, 299, broken(), cfg)
    assert len(lines.records) == 2


def test_the_last_counts_are_logged_when_the_run_ends_and_the_next_run_starts_afresh(
    lines: Lines,
) -> None:
    clock, cfg = Clock(), config()
    failures = failure_log(lines, clock)
    for run in range(1, 6):
        failures.failed(RUN, 3, run, broken(), cfg)
        clock.now += 0.5
    failures.ended(RUN)
    assert lines.text == [
        "user 3: start raised (run 1)",
        "user 3 failed 4 times in 2.5 s; last: RuntimeError: user three is broken",
    ]
    failures.ended(RUN)  # twice: nothing more
    assert len(lines.records) == 2

    again = object()  # the next run: user 3's first failure is logged at once again
    failures.failed(again, 3, 1, broken(), cfg)
    assert lines.text[2:] == ["user 3: start raised (run 1)"]


def test_a_new_run_does_not_reuse_the_counts_of_one_that_never_ended(lines: Lines) -> None:
    clock, cfg = Clock(), config()
    failures = failure_log(lines, clock)
    failures.failed(RUN, 3, 1, broken(), cfg)
    failures.failed(RUN, 3, 2, broken(), cfg)
    failures.failed(object(), 3, 1, broken(), cfg)  # its users were abandoned: no ended()
    assert lines.text == ["user 3: start raised (run 1)", "user 3: start raised (run 1)"]


def test_a_few_failing_users_get_a_line_each(lines: Lines) -> None:
    clock, cfg = Clock(), config(user_error_interval=10_000)
    failures = failure_log(lines, clock)
    for _ in range(3):
        for uid in (9, 4, 7):
            failures.failed(RUN, uid, 1, broken(f"user {uid}"), cfg)
    assert lines.text == [f"user {u}: start raised (run 1)" for u in (9, 4, 7)]
    clock.now += 10
    failures.failed(RUN, 4, 4, broken("user 4"), cfg)
    assert lines.text[3:] == [
        f"user {u} failed 2 times in 10 s; last: RuntimeError: user {u}" for u in (4, 7, 9)
    ]


def test_many_failing_users_get_one_line_together(lines: Lines) -> None:
    clock, cfg = Clock(), config()
    failures = failure_log(lines, clock)
    for uid in range(412, 0, -1):  # 412 users fail their first run: a server is down
        failures.failed(RUN, uid, 1, broken("connection refused"), cfg)
    assert len(lines.records) == user_errors.FEW  # the first five, not 412 tracebacks
    assert lines.text[0] == "user 412: start raised (run 1)"
    for run in range(2, 23):
        clock.now += 1
        for uid in range(1, 413):
            failures.failed(RUN, uid, run, broken("connection refused"), cfg)
    assert len(lines.records) == user_errors.FEW
    clock.now += 9
    failures.ended(RUN)
    assert lines.text[user_errors.FEW :] == [
        "412 users failed 9059 runs in the last 30 s; first ids: 1, 2, 3, 4, 5; "
        "last: RuntimeError: connection refused"
    ]


def test_the_interval_is_read_again_for_each_interval(lines: Lines) -> None:
    clock, cfg = Clock(), config()
    failures = failure_log(lines, clock)
    failures.failed(RUN, 3, 1, broken(), cfg)
    cfg.set("user_error_interval", 0)  # from the next interval on: every failure
    clock.now += 30
    failures.failed(RUN, 3, 2, broken(), cfg)
    failures.failed(RUN, 3, 3, broken(), cfg)
    assert lines.text == [f"user 3: start raised (run {n})" for n in (1, 2, 3)]


def test_a_bad_interval_falls_back_to_the_default(lines: Lines) -> None:
    clock = Clock()
    cfg = Config(environ={"AMOC_USER_ERROR_INTERVAL": "'soon'"})  # not declared: not checked
    failures = failure_log(lines, clock)
    for run in (1, 2):
        failures.failed(RUN, 3, run, broken(), cfg)
    assert "'user_error_interval' = 'soon'" in lines.text[0]
    assert lines.text[0].endswith("using 30000 ms")
    assert lines.text[1:] == ["user 3: start raised (run 1)"]


def test_long_and_multi_line_exception_texts_make_one_short_line(lines: Lines) -> None:
    clock, cfg = Clock(), config()
    failures = failure_log(lines, clock)
    failures.failed(RUN, 3, 1, broken(), cfg)
    failures.failed(RUN, 3, 2, broken("line one\nline two " + "x" * 500), cfg)
    failures.failed(RUN, 3, 3, KeyError(), cfg)
    failures.failed(RUN, 3, 4, ValueError("x" * 500), cfg)
    failures.ended(RUN)
    last = lines.text[-1].split("; last: ")[1]
    assert last.startswith("ValueError: xxx") and last.endswith("...") and len(last) < 220
    assert "\n" not in "".join(lines.text)


def test_a_failure_costs_no_log_call(lines: Lines) -> None:
    clock, cfg = Clock(), config()
    failures = failure_log(lines, clock)
    exc = broken()
    for run in range(1, 100_001):
        clock.now += 0.0001  # 10 s in all
        failures.failed(RUN, 3, run, exc, cfg)
    assert len(lines.records) == 1
    failures.ended(RUN)
    assert lines.text[1].startswith("user 3 failed 99999 times in 10 s;")


FLAKY = """
async def start(user_id):
    if user_id == 3:
        raise RuntimeError("user three is broken")
"""


async def test_the_controller_logs_a_first_failure_then_the_sum_when_it_stops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY)
    ctl = Controller([tmp_path], config(interarrival=0, repeat_interval=5))
    caplog.set_level(logging.INFO, logger="amoc.user")
    failed = metrics.counter("users.failed")
    before = failed.value
    await ctl.do("flaky", 1, 5)
    deadline = time.monotonic() + 5
    while failed.value - before < 20:
        assert time.monotonic() < deadline, "user 3 did not fail 20 times"
        await asyncio.sleep(0.01)
    await ctl.stop()
    await ctl.close()
    count = failed.value - before  # every failure counted, as before
    shown = [r.getMessage() for r in caplog.records if r.name == "amoc.user"]
    assert shown[0] == "user 3: start raised (run 1)", shown
    assert len(shown) == 2, shown
    assert re.fullmatch(
        rf"user 3 failed {count - 1} times in [0-9.]+ s; last: RuntimeError: user three is broken",
        shown[1],
    ), shown
