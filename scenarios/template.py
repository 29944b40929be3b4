"""Template: copy this file to scenarios/my_scenario.py and fill it in.

Run it from a console:

    amoc_local.do("my_scenario", 1, 10)        # users 1..10, one every interarrival ms
    amoc_local.add(10)                         # users 11..20
    amoc_local.remove(5, force=False)          # the 5 newest finish their run, then stop
    amoc_local.stop()

The contract:
- PARAMETERS (optional): the config values the scenario reads, each with a default
  and a one-line description. amoc checks them all before any user starts, and
  `amoc_config.get(name)` returns the value from, in order: AMOC_<NAME> in the
  environment, `amoc_config.set`, priv/app.config, the default here.
- init() (optional): called once per node per run, before any user. It may be
  async. What it returns is passed to start() as `state` if start takes two
  arguments. If it raises, no user starts.
- start(user_id) or start(user_id, state) (required): one call per user, in that
  user's own task. Prefer `async def`: a plain `def start` runs in a worker thread
  so that it cannot block the others (fine for blocking libraries, but threads
  cost far more than tasks). When start returns, the same user runs it again after
  `repeat_interval` ms, `repeat_num` times in all (default: forever). If it
  raises, the error is logged with the user id, counted, and the user goes on
  with its next run.
- terminate() or terminate(state) (optional): called once per node when the
  scenario stops.
"""

import asyncio
import logging

from amoc import metrics
from amoc.config import amoc_config, param

log = logging.getLogger(__name__)

PARAMETERS = [
    param("template_think_time", 500, "ms a user thinks between two steps"),
    param("template_greeting", "hello", "what each user says"),
]

_steps = metrics.counter("template.steps")


def init() -> dict[str, str]:
    """Prepare what every user shares (connections pools, data files, ...)."""
    return {"greeting": amoc_config.get("template_greeting")}


async def start(user_id: int, state: dict[str, str]) -> None:
    """One user's run: a few steps with think time between them."""
    for _step in range(3):
        await asyncio.sleep(amoc_config.get("template_think_time") / 1000)
        _steps.inc()
    log.debug("user %d says %s", user_id, state["greeting"])


def terminate(state: dict[str, str]) -> None:
    """Release what init() took."""
