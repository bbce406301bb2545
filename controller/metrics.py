"""Prometheus metrics of the controller (API requests) and the health manager (instances).

The API runs under gunicorn with several worker processes, each with its own counters. A
scrape reaches one worker at random, so each worker's numbers alone would be wrong.
``prometheus_client``'s multiprocess mode is the library's answer for exactly this: every
worker writes its values to memory-mapped files in one folder
(``PROMETHEUS_MULTIPROC_DIR``, set by :mod:`controller.serve` before the workers start) and
``/metrics`` sums the folder. Counting in Redis instead would add a network round trip to
every request and lose the metrics whenever Redis is down, when they are most needed.

Without that variable (unit tests, ``flask run``) the app's own registry serves ``/metrics``.
"""

from __future__ import annotations

import hmac
import os
import time

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from contracts.messages import Heartbeat, InstanceState
from controller.auth import Permission, requires

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _scrape_registry(own: CollectorRegistry) -> CollectorRegistry:
    if not os.environ.get(MULTIPROC_ENV):
        return own
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def init_app(app: Flask) -> None:
    """Count every request by endpoint, method and status, time it, and serve ``/metrics``."""
    registry = CollectorRegistry()
    requests = Counter("paas_api_requests", "API requests answered",
                       ["endpoint", "method", "status"], registry=registry)
    latency = Histogram("paas_api_request_seconds", "Time to answer an API request",
                        ["endpoint", "method"], buckets=LATENCY_BUCKETS, registry=registry)
    app.extensions["paas.metrics"] = registry

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        # The endpoint name, not the path: app names in paths would make a series per app.
        endpoint = request.endpoint or "unmatched"
        requests.labels(endpoint, request.method, str(response.status_code)).inc()
        if started is not None:
            latency.labels(endpoint, request.method).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics")
    @requires(Permission.PLATFORM_ADMIN)  # or the metrics token: see _authorize_scrape
    def metrics():
        _authorize_scrape(app.config["PAAS_SETTINGS"].metrics_token)
        return Response(generate_latest(_scrape_registry(registry)),
                        mimetype=CONTENT_TYPE_LATEST)


def _authorize_scrape(metrics_token: str) -> None:
    """``/metrics`` tells app names, request rates and failures: it needs the metrics token
    (``PAAS_METRICS_TOKEN``, for a Prometheus scraper) or an admin token."""
    from controller.auth import enforce, identify
    from controller.errors import Forbidden, Unauthorized

    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("/metrics needs a token: send 'Authorization: Bearer TOKEN' with "
                           "the metrics token (PAAS_METRICS_TOKEN) or an admin token.")
    if metrics_token and given and hmac.compare_digest(given.encode(), metrics_token.encode()):
        return
    identity = identify(g.db)  # Unauthorized (401) without a valid token
    if not identity.is_admin:
        raise Forbidden("/metrics needs an admin token or the metrics token "
                        "(PAAS_METRICS_TOKEN): a team's token does not read it.")
    enforce(identity, Permission.PLATFORM_ADMIN)  # and the token's scope


class HealthMetrics:
    """What the active health manager saw on its last tick."""

    STATES = (InstanceState.STARTING, InstanceState.RUNNING, InstanceState.CRASHED,
              InstanceState.STOPPING, "UNHEALTHY", "PENDING")

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.instances = Gauge("paas_instances", "Instances by state (all agents)", ["state"],
                               registry=registry)
        self.agents = Gauge("paas_agents", "Agents sending heartbeats", registry=registry)
        self.actions = Counter("paas_health_actions", "Actions taken, by kind", ["action"],
                               registry=registry)
        self.tick_seconds = Histogram("paas_health_tick_seconds", "Time of one convergence",
                                      buckets=LATENCY_BUCKETS, registry=registry)

    def observe(self, beats: list[Heartbeat], actions: list[object], seconds: float) -> None:
        counts = dict.fromkeys(self.STATES, 0)
        for beat in beats:
            for inst in beat.instances:
                state = inst.state
                if state == InstanceState.RUNNING and not inst.ready:
                    state = "UNHEALTHY"
                counts[state] = counts.get(state, 0) + 1
        counts["PENDING"] = sum(type(a).__name__ == "Unplaceable" for a in actions)
        for state, count in counts.items():
            self.instances.labels(state).set(count)
        self.agents.set(len(beats))
        for action in actions:
            self.actions.labels(type(action).__name__).inc()
        self.tick_seconds.observe(seconds)
