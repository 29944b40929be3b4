"""How user ids are spread over nodes: pure, deterministic, pluggable functions.

A strategy gets the ids to place (in order), the nodes (name -> capacity, in order) and
`offset`, the number of ids the run placed before (so that `add` continues the rotation),
and returns name -> ids. `round_robin` gives id k of the run to node k mod n; `weighted`
is a smooth weighted round-robin by capacity (a node of capacity 2 gets twice the users
of a node of capacity 1, interleaved, never in bursts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from amoc.errors import AmocError

Strategy = Callable[[Sequence[int], Mapping[str, float], int], dict[str, list[int]]]


def round_robin(
    ids: Sequence[int], nodes: Mapping[str, float], offset: int = 0
) -> dict[str, list[int]]:
    """Id number k of the run (counting from 0 over do and every add) goes to node k mod n."""
    names = _names(nodes)
    placed: dict[str, list[int]] = {name: [] for name in names}
    for k, uid in enumerate(ids, start=offset):
        placed[names[k % len(names)]].append(uid)
    return placed


def weighted(
    ids: Sequence[int], nodes: Mapping[str, float], offset: int = 0
) -> dict[str, list[int]]:
    """Smooth weighted round-robin by capacity, continued from `offset` earlier ids."""
    names = _names(nodes)
    weights = {n: float(nodes[n]) for n in names}
    if any(w <= 0 for w in weights.values()):
        raise AmocError("weighted: every node needs a capacity > 0")
    total = sum(weights.values())
    current = dict.fromkeys(names, 0.0)
    placed: dict[str, list[int]] = {name: [] for name in names}

    def pick() -> str:
        for n in names:
            current[n] += weights[n]
        best = max(names, key=lambda n: current[n])  # first of equals: deterministic
        current[best] -= total
        return best

    for _ in range(offset):
        pick()
    for uid in ids:
        placed[pick()].append(uid)
    return placed


def _names(nodes: Mapping[str, float]) -> list[str]:
    names = list(nodes)
    if not names:
        raise AmocError("no slave node to place users on: is any slave connected? see nodes()")
    return names


STRATEGIES: dict[str, Strategy] = {"round_robin": round_robin, "weighted": weighted}


def register(name: str, strategy: Strategy) -> None:
    """Make `strategy` available as `amoc_dist.do(..., strategy=name)`."""
    if not name.isidentifier():
        raise AmocError(f"strategy name {name!r} must be an identifier")
    STRATEGIES[name] = strategy


def get(name: str) -> Strategy:
    """The strategy called `name`, or an error listing the known ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise AmocError(
            f"unknown distribution strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}"
        ) from None
