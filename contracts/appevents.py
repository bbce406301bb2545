"""What an app's event stream carries (``GET /v1/apps/<name>/stream``).

Each event is one state change of one app, as the process that owns the change saw it: the
controller's API (a push, a scale, an env change...), the health manager (builds settled,
releases deployed or failed, instances starting, running, crashing and stopping, the
router serving a rollout). Every audit event about an app (``controller.events.record``) is
also a stream event of the same type; the ``instance.*`` events and ``app.routed`` are the
stream's own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

BUILD_STARTED = "build.started"
BUILD_SUCCEEDED = "build.succeeded"  # data: build, release, buildpack
BUILD_FAILED = "build.failed"  # data: build, error
RELEASE_CREATED = "release.created"  # data: release, description
RELEASE_DEPLOYED = "release.deployed"  # data: release
RELEASE_FAILED = "release.failed"  # data: release, reason, serving
INSTANCE_STARTING = "instance.starting"
INSTANCE_RUNNING = "instance.running"  # running and passing its health check
INSTANCE_CRASHED = "instance.crashed"  # data also: reason, exit_code
INSTANCE_STOPPED = "instance.stopped"
INSTANCE_PENDING = "instance.pending"  # no agent has room: process_type, index, reason
# The router sends the app's web traffic only to ready instances of this release and
# generation (sent once per rollout): data: release, generation, urls.
APP_ROUTED = "app.routed"
APP_DELETED = "app.deleted"

INSTANCE_EVENTS = (INSTANCE_STARTING, INSTANCE_RUNNING, INSTANCE_CRASHED, INSTANCE_STOPPED,
                   INSTANCE_PENDING)


@dataclass(frozen=True)
class AppEvent:
    """One event: ``id`` is its position in the stream (Redis stream id, the SSE id)."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    def fields(self) -> dict[str, str]:
        """The stream entry's fields."""
        return {"type": self.type, "data": json.dumps(self.data, sort_keys=True)}

    @classmethod
    def from_entry(cls, entry_id: bytes | str, fields: dict[Any, Any]) -> AppEvent:
        def text(value: Any) -> str:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

        got = {text(k): text(v) for k, v in fields.items()}
        try:
            data = json.loads(got.get("data") or "{}")
        except ValueError:
            data = {}
        return cls(type=got.get("type", ""), data=data if isinstance(data, dict) else {},
                   id=text(entry_id))

    def sse(self) -> str:
        """The event as server-sent events text (one ``data`` line: JSON has no newline)."""
        return f"id: {self.id}\nevent: {self.type}\ndata: {json.dumps(self.data)}\n\n"
