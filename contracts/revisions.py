"""Route table revisions: how the agents, the router and the health manager agree on what
nginx serves without comparing the clocks of two processes.

- An agent that publishes a changed table of its ready web instances (``keys.routes(agent)``)
  gives it the next value of a global Redis counter (``keys.ROUTES_REVISION``), stored in the
  hash's ``keys.REVISION_FIELD``; the same revision is rewritten with every heartbeat until
  the table changes again. An instance's :class:`~contracts.messages.InstanceReport` carries
  ``routes_rev``: the revision of the first table of its agent that included it.
- The router, once nginx accepted a config equal to what it read, writes
  ``keys.ROUTER_APPLIED``: agent id -> the revision of that agent's table it applied (and
  ``keys.APPLIED_ROUTE_TABLE`` -> the route table document's revision), then publishes on
  ``keys.CONVERGE``.
- A web instance is routed when ``applied[agent] >= routes_rev``; an agent stopping an
  instance waits (bounded) until ``applied[agent]`` reaches the revision of its first table
  without it.

Each agent's revisions only grow: a counter lost with a Redis restart starts again above
the agent's last one (:func:`next_revision`), so an old acknowledgement never covers a new
table. The router forgets what it acknowledged when Redis comes back, so no stale entry
outlives the counter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from contracts import keys


def next_revision(client: Any, last: int) -> int:
    """The next revision for an agent whose last table had revision ``last``: the counter's
    next value, moved past ``last`` if Redis lost the counter (a restart)."""
    revision = int(client.incr(keys.ROUTES_REVISION))
    if revision <= last:
        revision = int(client.incrby(keys.ROUTES_REVISION, last - revision + 1))
    return revision


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_revision(raw: bytes | str | None) -> int:
    """A stored revision as an int: 0 for a missing or unreadable one (never routed)."""
    if raw is None:
        return 0
    try:
        return max(0, int(_text(raw)))
    except ValueError:
        return 0


def parse_applied(raw: Mapping[Any, Any]) -> dict[str, int]:
    """``keys.ROUTER_APPLIED`` as read with HGETALL (bytes or text): field -> revision,
    unreadable entries left out."""
    applied: dict[str, int] = {}
    for field, value in raw.items():
        revision = parse_revision(value)
        if revision:
            applied[_text(field)] = revision
    return applied


def read_applied(client: Any) -> dict[str, int]:
    """What the router has applied: agent id (and ``keys.APPLIED_ROUTE_TABLE``) -> revision.
    Empty if no router has written it (none runs, or Redis restarted since)."""
    return parse_applied(client.hgetall(keys.ROUTER_APPLIED))


def is_routed(agent_id: str, routes_rev: int, applied: Mapping[str, int]) -> bool:
    """True if the router applied a table of ``agent_id`` at least as new as ``routes_rev``
    (0: the instance was in no table yet)."""
    return routes_rev > 0 and applied.get(agent_id, 0) >= routes_rev
