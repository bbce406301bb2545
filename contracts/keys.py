"""Redis key names. Actual state lives under these keys, each republished by its owner."""

from __future__ import annotations

PREFIX = "paas"


def agent(agent_id: str) -> str:
    """JSON heartbeat of one agent (capacity and instances), with a TTL of a few beats."""
    return f"{PREFIX}:agent:{agent_id}"


AGENT_PATTERN = f"{PREFIX}:agent:*"


def routes(agent_id: str) -> str:
    """Hash of instance guid -> backend JSON (:class:`contracts.messages.Backend`) for one
    agent's ready web instances, plus ``REVISION_FIELD``: the table's revision (see
    :mod:`contracts.revisions`); with the heartbeat's TTL."""
    return f"{PREFIX}:routes:{agent_id}"


ROUTES_PATTERN = f"{PREFIX}:routes:*"
# Field of a ``routes(agent)`` hash holding the revision of that table (no instance guid).
REVISION_FIELD = "#revision"
# Counter: each agent table publication that changes the table takes the next value (INCR).
ROUTES_REVISION = f"{PREFIX}:routes-revision"
# String: the route table document the controller writes (see :mod:`contracts.routing`).
ROUTE_TABLE = f"{PREFIX}:route-table"
# Pub/sub channel: the route table or the backends changed; the router re-renders at once.
ROUTES_CHANGED = f"{PREFIX}:routes-changed"
# Pub/sub channel: desired or actual state changed; the health manager converges at once.
CONVERGE = f"{PREFIX}:converge"
# Lock held by the active health manager.
HEALTH_LOCK = f"{PREFIX}:health-lock"
# String: the router's last successful reload, as JSON.
ROUTER_STATUS = f"{PREFIX}:router-status"
# Hash of agent id -> revision of that agent's table nginx serves (written by the router once
# nginx accepted it), plus ``APPLIED_ROUTE_TABLE``: the route table document's revision.
ROUTER_APPLIED = f"{PREFIX}:router-applied"
APPLIED_ROUTE_TABLE = "#route-table"


def build_log(build_guid: str) -> str:
    """Stream of a build's output lines; its last entry carries ``end``."""
    return f"{PREFIX}:build-log:{build_guid}"


def build_result(build_guid: str) -> str:
    """JSON result of a finished build, written by the stager before the end entry."""
    return f"{PREFIX}:build-result:{build_guid}"


def task_log(task_guid: str) -> str:
    """Stream of a one-off task: the controller's opening ``task`` entry (JSON: app guid,
    agent), then output ``line`` entries, then ``exit_code`` or ``error``, then ``end``."""
    return f"{PREFIX}:task-log:{task_guid}"


# Hash of "<app guid>/<process type>/<index>" -> JSON crash record (count, restart time,
# reason), kept by the health manager for its crash back-off and shown by ``paas app``.
CRASHES = f"{PREFIX}:crashes"


def crash_field(app_guid: str, process_type: str, index: int) -> str:
    return f"{app_guid}/{process_type}/{index}"


# Hash of "<app guid>/<process type>/<index>" -> JSON {memory_mb, disk_mb}: instances the
# health manager cannot place now because no agent has room; rewritten when it changes.
UNPLACED = f"{PREFIX}:unplaced"


def app_log(app_guid: str) -> str:
    """Stream of an app's log lines from every source (see :mod:`logpipe.lines`), capped
    at ``log_lines_per_app`` entries."""
    return f"{PREFIX}:applog:{app_guid}"


def app_log_cursors(agent_id: str) -> str:
    """Hash of container id -> where the agent has shipped that container's output to, so a
    restarted agent resumes it where it stopped (``dea_agent/logs.py``), written with each
    batch of its lines and deleted with the container.

    An instance with output files (``instance_log_files``): ``f<stdout>:<stderr>``, the byte
    offsets in its ``stdout`` and ``stderr`` files up to which whole lines were shipped, such
    as ``f18234:0``. A container followed through Docker's log instead: the Docker timestamp
    (ns since the epoch) of the last line shipped, such as ``1764442862123456789``."""
    return f"{PREFIX}:applog-cursors:{agent_id}"


def app_events(app_guid: str) -> str:
    """Stream of an app's state changes (:mod:`contracts.appevents`): fields ``type`` and
    ``data`` (JSON), capped at ``app_stream_length`` entries; the entry id is the event id."""
    return f"{PREFIX}:app-events:{app_guid}"


# Hash of app guid -> "<release>/<generation>": the last rollout the health manager told the
# app's stream was routed (``app.routed`` is sent once, also across a failover).
APP_ROUTED = f"{PREFIX}:app-routed"
# Hash of token id -> epoch seconds of its last use, marked by the API and copied into
# ``tokens.last_used_at`` by the health manager (a request, even a GET, writes no row).
TOKENS_USED = f"{PREFIX}:tokens-used"
