"""The removal grace: which backends to apply right after Redis comes back. Pure: no I/O, and the
caller passes the clock.

Redis keeps nothing across a restart, so right after one the backends are gone and come
back as the agents republish (each rewrites its whole backend hash every heartbeat). A key
can also expire while Redis, or the router's connection to it, is away. A backend missing
from such a read is not a removal, so for ``period`` seconds (the heartbeat TTL: by then every
live agent has republished) after Redis answers again nothing is removed:

- outside a grace period the backends are applied as read, so a normal stop's removal is
  live at the next sync;
- during one, nginx gets the union of the backends it serves and those read, so new ones
  go live at once and none goes away;
- when it ends, the backends are applied as read again, and those nobody republished go.

(The route table itself, :mod:`contracts.routing`, needs no grace: a missing document is
"not known", and the router keeps the routes it has.)

A grace period starts when Redis answers after a failed call, or when its ``run_id`` (from
``INFO server``) differs from the one seen last, which catches a restart between two reads
that the client's reconnects hid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from contracts.messages import Backend

# Backends by their canonical JSON, so equal entries count once and entries whose fields
# hold unhashable JSON (a list as app_name) are still keys.
BackendTable = Mapping[str, Backend]


def backend_table(backends: Iterable[Backend]) -> dict[str, Backend]:
    return {backend.to_json(): backend for backend in backends}


def table_to_apply(
    last: BackendTable,
    read: BackendTable,
    *,
    now: float,
    reconnected_at: float | None,
    period: float,
) -> dict[str, Backend]:
    """The backends nginx should serve: ``read``, plus ``last`` while Redis came back recently.

    ``last`` is the backends nginx serves, ``read`` the one just read from Redis, ``now`` and
    ``reconnected_at`` (when Redis answered again, None if it never failed) monotonic seconds.
    """
    if reconnected_at is None or now >= reconnected_at + period:
        return dict(read)
    return {**last, **read}


class RemovalGrace:
    """Follows Redis failures and restarts; knows whether removals are held right now."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.reconnected_at: float | None = None
        self._failed = False
        self._run_id: str | None = None

    def redis_failed(self) -> None:
        """A call to Redis failed: the next answer starts a grace period."""
        self._failed = True

    def redis_answered(self, run_id: str | None, now: float) -> str | None:
        """Redis answered a whole read. Returns why a grace period starts now, or None.

        ``run_id`` is Redis's ``INFO server`` run_id, None if unknown (then only failed calls
        start a grace period).
        """
        restarted = run_id is not None and self._run_id is not None and run_id != self._run_id
        if run_id is not None:
            self._run_id = run_id
        if not (restarted or self._failed):
            return None
        self._failed = False
        self.reconnected_at = now
        return "restarted" if restarted else "answers again"

    def holding(self, now: float) -> bool:
        """True while removals are held."""
        return self.reconnected_at is not None and now < self.reconnected_at + self.period

    def table_to_apply(
        self, last: BackendTable, read: BackendTable, now: float
    ) -> dict[str, Backend]:
        return table_to_apply(
            last, read, now=now, reconnected_at=self.reconnected_at, period=self.period
        )
