"""Actual state, read from the agents' heartbeats in Redis."""

from __future__ import annotations

import logging

import redis

from contracts import keys
from contracts.messages import Heartbeat, InstanceReport

log = logging.getLogger("paas.controller")


def read_heartbeats(client: redis.Redis) -> list[Heartbeat]:
    names = sorted(client.scan_iter(match=keys.AGENT_PATTERN, count=500))
    if not names:
        return []
    beats = []
    for raw in client.mget(names):
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            beats.append(Heartbeat.from_json(raw))
        except (ValueError, TypeError) as e:
            log.warning("ignoring a malformed heartbeat: %s", e)
    return beats


def instances_by_app(beats: list[Heartbeat]) -> dict[str, list[InstanceReport]]:
    grouped: dict[str, list[InstanceReport]] = {}
    for beat in beats:
        for inst in beat.instances:
            inst.agent_id = beat.agent_id
            grouped.setdefault(inst.app_guid, []).append(inst)
    for insts in grouped.values():
        insts.sort(key=lambda i: (i.process_type, i.index, -i.release))
    return grouped


def nudge(client: redis.Redis) -> None:
    """Ask the health manager to converge now rather than at its next tick."""
    try:
        client.publish(keys.CONVERGE, "1")
    except redis.RedisError as e:
        log.warning("could not nudge the health manager: %s", e)
