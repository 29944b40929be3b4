"""Runner overhead: memory per idle user and users started per second.

    .venv/bin/python bench/bench_runner.py [--users 20000] [--rounds 3]

Each case runs in a fresh process (clean RSS) and holds N users that sleep:
- amoc: the runner's Controller with the bundled dummy scenario, interarrival 0;
- asyncio floor: bare asyncio tasks that sleep (what any asyncio runner must pay),
  the peer the amoc figures are divided by.
Prints one line per case and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident set size of this process in bytes."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


async def case_amoc(users: int) -> dict[str, float]:
    from amoc.config import amoc_config
    from amoc.node import new_event_loop  # noqa: F401 - the loop is chosen by main()
    from amoc.runner import Controller

    amoc_config.set("interarrival", 0)
    ctl = Controller([ROOT / "scenarios"], amoc_config)
    amoc_config.declare([])
    # Load once outside the measurement: importing the scenario is not per user.
    await ctl.do("dummy", 1, 1, settings={"dummy_wait": 3_600_000})
    await ctl.stop()
    gc.collect()
    before = rss()
    begun = time.perf_counter()
    await ctl.do("dummy", 1, users)
    while ctl.status()["users"]["running"] < users:
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - begun
    await asyncio.sleep(0.5)
    gc.collect()
    after = rss()
    await ctl.stop()
    return {"seconds": elapsed, "rss_delta": after - before}


async def case_floor(users: int) -> dict[str, float]:
    async def user() -> None:
        await asyncio.sleep(3600)

    gc.collect()
    before = rss()
    begun = time.perf_counter()
    loop = asyncio.get_running_loop()
    tasks = []
    for i in range(users):
        tasks.append(loop.create_task(user()))
        if i % 200 == 199:
            await asyncio.sleep(0)
    await asyncio.sleep(0)
    elapsed = time.perf_counter() - begun
    await asyncio.sleep(0.5)
    gc.collect()
    after = rss()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"seconds": elapsed, "rss_delta": after - before}


def child(case: str, users: int) -> None:
    from amoc.node import new_event_loop

    loop = new_event_loop()
    fn = case_amoc if case == "amoc" else case_floor
    result = loop.run_until_complete(fn(users))
    print(json.dumps(result))


def measure(case: str, users: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", case, "--users", str(users)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=["amoc", "floor"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.users)
        return
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for case in ("floor", "amoc"):
            result = measure(case, args.users)
            kept = best.get(case)
            if kept is None or result["seconds"] < kept["seconds"]:
                best[case] = result
    for case in ("amoc", "floor"):
        r = best[case]
        print(
            f"runner {case:5s} users={args.users} started/s={args.users / r['seconds']:,.0f} "
            f"KiB/idle user={r['rss_delta'] / args.users / 1024:.2f}"
        )
    amoc, floor = best["amoc"], best["floor"]
    print(
        f"ratio amoc/asyncio-floor: start time x{amoc['seconds'] / floor['seconds']:.1f}, "
        f"memory per user x{amoc['rss_delta'] / max(floor['rss_delta'], 1):.2f}"
    )


if __name__ == "__main__":
    main()
