"""Drive bin/amoc console and attach through a real pseudo-terminal (pexpect)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pexpect

from tests.wait import wait_until

PROMPT = re.compile(r"^(>>>|\.\.\.) ", re.M)
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]|\r")


class Terminal:
    """A console session: send a line, get what it printed before the next prompt."""

    def __init__(self, release: Path, args: list[str], env: dict[str, str]) -> None:
        self.child = pexpect.spawn(
            str(release / "bin" / "amoc"),
            args,
            env={**os.environ, **env, "TERM": "dumb"},
            encoding="utf-8",
            timeout=30,
            dimensions=(50, 200),
        )
        self.child.expect(PROMPT)
        self.banner = ANSI.sub("", self.child.before)

    def run(self, line: str, timeout: float = 30) -> str:
        """Type `line` and Enter; return its output (without the echo)."""
        self.child.sendline(line)
        self.child.expect(PROMPT, timeout=timeout)
        text = ANSI.sub("", self.child.before)
        lines = text.split("\n")
        if lines and lines[0].strip() == line.strip():
            lines = lines[1:]
        return "\n".join(lines).strip()

    def value(self, expression: str) -> object:
        """Evaluate a Python literal-valued expression in the console."""
        import ast

        out = self.run(f"print(repr({expression}))")
        return ast.literal_eval(out.splitlines()[-1])

    def wait(
        self, expression: str, predicate: Callable[[object], bool], timeout: float = 20
    ) -> object:
        """Evaluate `expression` until `predicate` holds on its value."""
        return wait_until(
            lambda: self.value(expression),
            f"{expression} to meet the condition",
            timeout,
            holds=predicate,
            every=0.1,
        )

    def leave(self, timeout: float = 30) -> str:
        """Ctrl+D; wait for the program to end; return what it printed last."""
        self.child.sendeof()
        self.child.expect(pexpect.EOF, timeout=timeout)
        self.child.close()
        return ANSI.sub("", self.child.before or "")


def amoc(
    release: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run bin/amoc with arguments, capturing its output."""
    return subprocess.run(
        [str(release / "bin" / "amoc"), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
