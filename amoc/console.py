"""The interactive console: in the foreground (`console`) or over the socket (`attach`)."""

from __future__ import annotations

import code
import contextlib
import io
import os
import re
import rlcompleter
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from amoc.console_socket import ConsoleClient
from amoc.errors import AmocError, NodeError
from amoc.report import live

BANNER = """amoc console on node {name!r} (pid {pid}).
  amoc_local.do("dummy", 1, 10)     start users 1..10 of scenario dummy
  amoc_local.add(10)                10 more users with the next ids
  amoc_local.remove(10, force=True) remove the 10 newest users
  amoc_local.stop()                 stop the scenario
  amoc_local.find_capacity("xmpp_one_to_one", "xmpp.ttd_ms.p99 < 5", users="100:100:1000")
  amoc_config.get(name) / set(name, value), status(), scenarios(), watch(), report()
{leave}"""

MASTER_BANNER = """amoc console on cluster master {name!r} (pid {pid}).
  nodes()                                   the slaves: up or down, users, heartbeats
  amoc_dist.do("dummy", 1, 100)             start users 1..100 spread over the slaves
  amoc_dist.add(10) / remove(10, force=True)  more users / remove the newest
  amoc_dist.stop(), amoc_dist.placement()   stop the run / which ids run where
  amoc_dist.find_capacity(scenario, thresholds, users="START:STEP:MAX")  the load it holds
  status(), watch(), report(), amoc_config.get(name) / set(name, value), scenarios()
{leave}"""

_WATCH = re.compile(r"^\s*watch\(\s*(?:seconds\s*=\s*)?([0-9.]+)?\s*\)\s*$")

LEAVE_FOREGROUND = "Ctrl+D leaves the console and stops the node."
LEAVE_ATTACHED = "Ctrl+D detaches; the node and its users keep running."


class ThreadStreams(io.TextIOBase):
    """A sys.stdout / sys.stderr stand-in that sends a thread's writes to its own buffer.

    Attached consoles evaluate in worker threads; their output must go back to their
    client, not to the node's terminal or log.
    """

    def __init__(self, fallback: TextIO) -> None:
        self._fallback = fallback
        self._local = threading.local()

    def write(self, text: str) -> int:
        target: io.StringIO | None = getattr(self._local, "buffer", None)
        if target is None:
            return self._fallback.write(text)
        return target.write(text)

    def flush(self) -> None:
        target = getattr(self._local, "buffer", None)
        (target or self._fallback).flush()

    def isatty(self) -> bool:
        return getattr(self._local, "buffer", None) is None and self._fallback.isatty()

    def fileno(self) -> int:
        return self._fallback.fileno()

    # input() uses readline (line editing, history) only when sys.stdout names its encoding.
    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._fallback.encoding

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return self._fallback.errors

    @contextlib.contextmanager
    def capture(self) -> Iterator[io.StringIO]:
        """Within this block, this thread's writes go to the yielded buffer."""
        buffer = io.StringIO()
        self._local.buffer = buffer
        try:
            yield buffer
        finally:
            self._local.buffer = None


def install_streams() -> tuple[ThreadStreams, ThreadStreams]:
    """Replace sys.stdout and sys.stderr with per-thread routers (once per process)."""
    if not isinstance(sys.stdout, ThreadStreams):
        sys.stdout = ThreadStreams(sys.stdout)
    if not isinstance(sys.stderr, ThreadStreams):
        sys.stderr = ThreadStreams(sys.stderr)
    return sys.stdout, sys.stderr


class AmocConsole(code.InteractiveConsole):
    """An interactive console that shows amoc's own errors without internal frames."""

    def showtraceback(self) -> None:
        _type, value, _tb = sys.exc_info()
        if isinstance(value, AmocError):
            self.write(f"{type(value).__name__}: {value}\n")
            return
        super().showtraceback()


class ConsoleSession:
    """One attached console: a namespace and an interpreter fed line by line."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.console = AmocConsole(dict(namespace), filename="<amoc attach>")
        self.completer = rlcompleter.Completer(self.console.locals)

    def push(self, line: str) -> tuple[str, bool]:
        """Feed one line; return (what it printed, whether more input is needed)."""
        out, err = install_streams()
        with out.capture() as buf_out, err.capture() as buf_err:
            try:
                more = self.console.push(line)
            except SystemExit:
                more = False
                print("exit() is not available in an attached console: press Ctrl+D")
        return buf_out.getvalue() + buf_err.getvalue(), more

    def complete(self, text: str, state: int) -> str | None:
        """Tab completion, as readline asks for it."""
        try:
            return self.completer.complete(text, state)
        except Exception:
            return None

    def reset(self) -> None:
        """Drop a half-typed multi-line statement (Ctrl+C)."""
        self.console.resetbuffer()


def _setup_readline(history: Path, completer: Any) -> Any:
    try:
        import readline
    except ImportError:  # pragma: no cover - readline is in every Debian Python
        return None
    with contextlib.suppress(OSError):
        readline.read_history_file(history)
    readline.set_history_length(2000)
    readline.set_completer(completer)
    readline.parse_and_bind("tab: complete")
    return readline


def _save_history(readline: Any, history: Path) -> None:
    if readline is None:
        return
    with contextlib.suppress(OSError):
        history.parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(history)
        os.chmod(history, 0o600)


def interact(namespace: dict[str, Any], history: Path, banner: str) -> None:
    """Run the console in this (the main) thread until Ctrl+D."""
    console = AmocConsole(namespace, filename="<amoc console>")
    readline = _setup_readline(history, rlcompleter.Completer(namespace).complete)
    try:
        console.interact(banner=banner, exitmsg="leaving the console")
    finally:
        _save_history(readline, history)


def attach(socket_path: Path, history: Path) -> int:
    """Open a console on a running node over its socket; return an exit code."""
    try:
        client = ConsoleClient(socket_path, timeout=10)
    except NodeError as exc:
        print(f"amoc: {exc}; is the node started (bin/amoc start)?", file=sys.stderr)
        return 1
    with client:
        hello = client.request({"op": "console"})
        if "error" in hello:
            print(f"amoc: {hello['error']}", file=sys.stderr)
            return 1

        def complete(text: str, state: int) -> str | None:
            try:
                answer = client.request({"op": "complete", "text": text, "state": state})
            except (OSError, NodeError):
                return None
            match = answer.get("match")
            return match if isinstance(match, str) else None

        readline = _setup_readline(history, complete)
        print(hello.get("banner", ""))
        more = False
        try:
            while True:
                try:
                    line = input("... " if more else ">>> ")
                except EOFError:
                    print()
                    break
                except KeyboardInterrupt:
                    print("\nKeyboardInterrupt")
                    client.request({"op": "reset"})
                    more = False
                    continue
                watching = _WATCH.match(line) if not more else None
                if watching:
                    # The live view is drawn here, from the node's samples.
                    seconds = float(watching.group(1)) if watching.group(1) else None
                    live.watch(lambda: client.request({"op": "sample"})["sample"], seconds)
                    continue
                answer = client.request({"op": "line", "line": line}, timeout=None)
                if "error" in answer:
                    print(f"amoc: {answer['error']}")
                    more = False
                    continue
                sys.stdout.write(answer.get("out", ""))
                sys.stdout.flush()
                more = bool(answer.get("more"))
        except (OSError, NodeError) as exc:
            print(f"amoc: lost the node: {exc}", file=sys.stderr)
            return 1
        finally:
            _save_history(readline, history)
    print("detached; the node keeps running")
    return 0
