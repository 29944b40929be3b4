"""The README's console walkthrough, through a real terminal, on the built release."""

import io
import itertools
import os
import re
import signal
import time
from pathlib import Path

import pexpect
import pytest

from tests.e2e.terminal import PROMPT, Terminal, amoc

pytestmark = pytest.mark.e2e

_names = itertools.count()


@pytest.fixture
def node_name() -> str:
    return f"t{os.getpid()}_{next(_names)}"


def console(release: Path, name: str, **env: str) -> Terminal:
    return Terminal(release, ["--name", name, "console"], {"AMOC_INTERARRIVAL": "0", **env})


def test_do_add_remove_and_leave(release: Path, node_name: str) -> None:
    term = console(release, node_name, AMOC_DUMMY_WAIT="3000")
    assert "amoc_local" in term.banner
    out = term.run('amoc_local.do("dummy", 1, 10)')
    assert out.startswith("running dummy"), out
    term.wait("amoc_local.users()", lambda ids: ids == list(range(1, 11)))
    term.run("amoc_local.add(10)")
    term.wait("amoc_local.users()", lambda ids: ids == list(range(1, 21)))

    out = term.run("amoc_local.remove(5, force=True)")
    assert out.startswith("removed 5 users (force)"), out
    assert term.value("amoc_local.users()") == list(range(1, 16))
    assert term.value('metrics.counter("dummy.runs").value') == 0  # killed mid-wait

    # Gentle: the 5 newest finish their current wait, then do not start again.
    term.run("amoc_local.remove(5)")
    assert term.value("amoc_local.users()") == list(range(1, 11))
    assert term.value('status()["users"]["stopping"]') == 5
    term.wait('status()["users"]["stopping"]', lambda n: n == 0)
    runs = term.value('metrics.counter("dummy.runs").value')
    assert runs >= 5, runs

    status = amoc(release, "--name", node_name, "status")
    assert status.returncode == 0 and "10 running" in status.stdout, status.stdout

    out = term.leave()
    assert "leaving the console" in out
    assert amoc(release, "--name", node_name, "status").returncode == 3


def test_repeat_num_and_repeat_interval(release: Path, node_name: str) -> None:
    term = console(release, node_name, AMOC_DUMMY_WAIT="10")
    term.run('amoc_config.set("repeat_num", 3)')
    term.run('amoc_config.set("repeat_interval", 400)')
    begun = time.monotonic()
    term.run('amoc_local.do("dummy", 1, 4)')
    term.wait('status()["state"]', lambda s: s == "finished")
    elapsed = time.monotonic() - begun
    assert term.value('metrics.counter("dummy.runs").value') == 12
    assert term.value('status()["users"]["finished"]') == 4
    assert elapsed >= 0.8, elapsed  # two repeat intervals of 400 ms
    term.leave()


def test_attach_detach_keeps_users_running(release: Path, node_name: str) -> None:
    env = {"AMOC_INTERARRIVAL": "0", "AMOC_DUMMY_WAIT": "60000"}
    started = amoc(release, "--name", node_name, "start", env=env)
    assert started.returncode == 0, started.stderr
    try:
        again = amoc(release, "--name", node_name, "start", env=env)
        assert again.returncode == 1 and "already running" in again.stderr

        term = Terminal(release, ["--name", node_name, "attach"], env)
        assert "detaches" in term.banner
        term.run('amoc_local.do("dummy", 1, 5)')
        term.wait("amoc_local.users()", lambda ids: ids == [1, 2, 3, 4, 5])
        term.run("x = 41")
        assert "detached" in term.leave()

        status = amoc(release, "--name", node_name, "status")
        assert "5 running" in status.stdout, status.stdout

        term = Terminal(release, ["--name", node_name, "attach"], env)
        assert term.value("amoc_local.users()") == [1, 2, 3, 4, 5]
        assert "NameError" in term.run("x")  # each attach has its own namespace
        term.run("amoc_local.add(2)")
        assert term.value("amoc_local.users()") == list(range(1, 8))
        term.leave()
    finally:
        stopped = amoc(release, "--name", node_name, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert amoc(release, "--name", node_name, "status").returncode == 3
    assert "not running" in amoc(release, "--name", node_name, "stop").stderr


def test_console_socket_is_private(release: Path, node_name: str) -> None:
    started = amoc(release, "--name", node_name, "start")
    assert started.returncode == 0, started.stderr
    try:
        run_dir = release / "run" / node_name
        assert (run_dir.stat().st_mode & 0o777) == 0o700
        sock = run_dir / "console.sock"
        assert (sock.stat().st_mode & 0o777) == 0o600
    finally:
        amoc(release, "--name", node_name, "stop")


def test_errors_are_clear_and_disturb_nothing(release: Path, node_name: str) -> None:
    scenarios = release / "scenarios"
    go = scenarios / "flaky.go"  # user 3 fails once this exists: when the console is idle
    go.unlink(missing_ok=True)
    (scenarios / "flaky.py").write_text(
        "from pathlib import Path\n"
        f"GO = Path({str(go)!r})\n"
        "async def start(user_id):\n"
        "    if user_id == 3 and GO.exists():\n"
        "        raise RuntimeError('user three is broken')\n"
    )
    (scenarios / "unimportable.py").write_text(
        "import not_a_module_xyz\nasync def start(u): pass\n"
    )
    (scenarios / "startless.py").write_text("def init():\n    pass\n")
    (scenarios / "badinit.py").write_text(
        "def init():\n    raise ValueError('no data file')\nasync def start(u): pass\n"
    )
    term = console(release, node_name, AMOC_DUMMY_WAIT="60000")
    out = term.run('amoc_local.do("nope", 1, 2)')
    assert "ScenarioError: scenario 'nope' not found" in out
    assert "failed to import" in term.run('amoc_local.do("unimportable", 1, 2)')
    assert "has no start function" in term.run('amoc_local.do("startless", 1, 2)')
    assert "init of scenario 'badinit' raised ValueError" in term.run(
        'amoc_local.do("badinit", 1, 2)'
    )
    assert term.value('status()["state"]') == "idle"

    term.run('amoc_local.do("dummy", 1, 4)')
    term.wait("amoc_local.users()", lambda ids: ids == [1, 2, 3, 4])
    assert "already running" in term.run('amoc_local.do("dummy", 5, 6)')
    assert "ids out of order" in term.run('amoc_local.stop(); amoc_local.do("dummy", 9, 1)')
    term.run('amoc_local.do("dummy", 1, 4)')
    term.wait("amoc_local.users()", lambda ids: ids == [1, 2, 3, 4])
    assert "only 4 are running" in term.run("amoc_local.remove(9)")
    assert "unknown config name 'interarival'" in term.run('amoc_config.set("interarival", 1)')
    assert "'repeat_num'" in term.run('amoc_config.set("repeat_num", -1)')
    assert term.value("amoc_local.users()") == [1, 2, 3, 4]
    term.run("amoc_local.stop()")

    # User 3 fails ten times a second: its first failure is shown at once, then nothing
    # until user_error_interval (30 s) is over or the run stops, so the console stays usable.
    term.run('amoc_config.set("repeat_interval", 100)')
    shown = io.StringIO()
    term.child.logfile_read = shown  # everything the terminal shows from here on
    term.run('amoc_local.do("flaky", 1, 5)')
    # Only now, at a quiet prompt: a line printed while the prompt is being drawn can split
    # it, and no prompt would be seen.
    go.touch()
    term.child.expect(
        r"\[error\] user 3: start raised \(run \d+\): "
        r"RuntimeError: user three is broken \(traceback in the log\)\r?\n"
    )
    failed = term.wait('metrics.counter("users.failed").value', lambda n: n >= 31)  # >= 3 s
    assert term.value("amoc_local.users()") == [1, 2, 3, 4, 5]  # user 3 is retried
    out = term.run("amoc_local.stop()")  # the run's last counts are shown as it stops
    total = term.value('metrics.counter("users.failed").value')
    assert isinstance(failed, int) and isinstance(total, int) and total >= failed
    last = re.compile(
        rf"\[error\] user 3 failed {total - 1} times in [0-9.]+ s; "
        r"last: RuntimeError: user three is broken$",
        re.M,
    )
    assert last.search(out), out
    assert term.value("1 + 1") == 2
    term.child.logfile_read = None
    errors = [line for line in shown.getvalue().splitlines() if "[error]" in line]
    assert len(errors) == 2, errors  # not one per failure
    term.leave()
    log = (release / "log" / f"{node_name}.log").read_text()
    assert log.count("user 3: start raised") == 1
    assert "RuntimeError: user three is broken" in log and "Traceback" in log
    assert f"user 3 failed {total - 1} times in " in log


def test_ctrl_c_in_the_console_keeps_the_node(release: Path, node_name: str) -> None:
    term = console(release, node_name)
    term.child.send("amoc_local.do(")
    term.child.expect_exact("amoc_local.do(")
    term.child.kill(signal.SIGINT)
    # readline may see the signal late: held until its next key, or after a key it was
    # busy with (the half line then goes on); a Ctrl+C at a quiet prompt always lands.
    for _ in range(4):
        seen = term.child.expect(["KeyboardInterrupt", r"\.\.\. ", pexpect.TIMEOUT], timeout=3)
        if seen == 0:
            break
        if seen == 1:
            term.child.kill(signal.SIGINT)
        else:
            term.child.sendline("")
    else:
        raise AssertionError("Ctrl+C never reached the console")
    # Whatever prompts are pending, the console then evaluates a fresh line.
    term.child.sendline('print("after" + "-interrupt", 1 + 1)')
    term.child.expect("after-interrupt 2\r\n")
    term.child.expect(PROMPT)
    assert term.value('status()["state"]') == "idle"
    term.leave()


def test_console_has_line_editing_and_history(release: Path, node_name: str) -> None:
    term = console(release, node_name)
    term.run("x = 41")
    # Up arrow recalls the last line; typing goes on at its end.
    term.run("\x1b[A + 1")
    assert term.value("x") == 42
    term.leave()
    again = console(release, node_name)
    again.run("\x1b[A\x1b[A")  # history survives the node: "x = 41 + 1" two lines back
    assert again.value("x") == 42
    again.leave()
