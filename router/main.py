"""``paas-router``: keep nginx's config equal to the route table in Redis.

The loop re-reads every ``paas:routes:*`` hash on each ``paas:routes-changed`` message and at
least every second (to notice hashes that expired), renders nginx.conf and reloads nginx only
when the text changed. Without Redis, nginx keeps serving the last good config; once Redis
answers again (or turns out to have restarted), no backend is removed for a heartbeat TTL
while the agents republish (see :mod:`router.grace`).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterable
from types import FrameType
from typing import Any

import redis

from contracts import keys
from contracts.applog import AppLogWriter
from contracts.messages import Route
from contracts.settings import Settings, load
from router.accesslog import AccessLogListener
from router.errors import RouterError
from router.grace import RemovalGrace, RouteTable, route_table
from router.nginx import Nginx
from router.render import normalize_host, render_nginx_config, route_problem

log = logging.getLogger("paas.router")


class Router:
    """The control loop. Redis client and :class:`Nginx` can be injected (tests pass fakes)."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis_client: Any = None,
        nginx: Nginx | None = None,
        interval: float = 1.0,
        access_log: AccessLogListener | None = None,
    ) -> None:
        self.settings = settings
        if redis_client is None:
            redis_client = redis.Redis.from_url(
                settings.redis_url,
                decode_responses=True,
                socket_connect_timeout=2,
                socket_timeout=5,
                health_check_interval=10,
            )
        self.redis = redis_client
        self.nginx = nginx or Nginx(settings.nginx_binary, settings.router_dir)
        self.interval = interval
        # Receives nginx's access lines and writes them as RTR lines (None: no access log).
        self.access_log = access_log
        self.listen = (settings.router_host, settings.router_port)
        self._applied: str | None = None  # text nginx serves
        self._rejected: str | None = None  # last text nginx -t refused; not retried
        self._warned: set[str] = set()
        self._redis_down = False
        self._served: RouteTable = {}  # routes of the text nginx serves
        self._grace = RemovalGrace(settings.heartbeat_ttl)
        self._held = 0  # routes nginx serves that Redis no longer has (during a grace)
        # Read time of the last table nginx was made equal to (what ROUTER_SYNCED promises).
        self._synced_at: float | None = None
        self.reloads = 0  # nginx configs applied (paas_router_reloads_total)

    @property
    def _table(self) -> RouteTable:
        return self._served

    @_table.setter
    def _table(self, table: RouteTable) -> None:
        if self.access_log is not None and table is not self._served:
            self.access_log.set_routes(table.values())
        self._served = table

    def read_routes(self) -> list[Route]:
        """Every valid route of every agent; raises ``redis.RedisError`` if Redis is away."""
        routes: list[Route] = []
        for key in self.redis.scan_iter(match=keys.ROUTES_PATTERN, count=1000):
            for guid, raw in self.redis.hgetall(key).items():
                try:
                    route = Route.from_json(raw)
                except (ValueError, TypeError) as e:
                    self._warn_once(f"skipping unreadable route {guid!r} in {key!r}: {e}")
                    continue
                problem = route_problem(route)
                if problem:
                    self._warn_once(f"skipping route {guid!r} in {key!r}: {problem}")
                    continue
                routes.append(route)
        return routes

    def read_run_id(self) -> str | None:
        """Redis's run_id (new after each restart), or None if ``INFO`` is not allowed."""
        try:
            run_id = self.redis.info("server").get("run_id")
        except redis.ResponseError as e:  # INFO renamed or denied; connection errors go up
            self._warn_once(f"cannot read Redis's run_id, restarts show only as errors: {e}")
            return None
        return str(run_id) if run_id else None

    def render(self, routes: Iterable[Route]) -> str:
        return render_nginx_config(
            routes,
            listen_host=self.listen[0],
            listen_port=self.listen[1],
            runtime_dir=str(self.nginx.runtime_dir),
            access_log_port=self.access_log.port if self.access_log else None,
            max_body_mb=self.settings.router_max_body_mb,
        )

    def start(self) -> None:
        """Start nginx with the current route table (an empty one if Redis is away)."""
        try:
            table = route_table(self.read_routes())
            self._grace.redis_answered(self.read_run_id(), time.monotonic())
        except redis.RedisError as e:
            self._redis_lost(e)
            table = {}
        text = self.render(table.values())
        self.nginx.start(text, listen=self.listen)
        self._applied, self._table = text, table
        log.info("router listening on %s:%s", *self.listen)
        self._reloaded(table)

    def sync(self) -> bool:
        """Re-read the route table; reload nginx if the config changed. True if it reloaded.

        Raises ``redis.RedisError`` if Redis is away; nginx then keeps its config.
        """
        read_at = time.time()
        read = route_table(self.read_routes())
        run_id = self.read_run_id()  # after the table: a restart before or during the read shows
        now = time.monotonic()
        why = self._grace.redis_answered(run_id, now)
        if why:
            log.warning(
                "Redis %s; no backend is removed for %g s while the agents republish routes",
                why,
                self._grace.period,
            )
        table = self._grace.table_to_apply(self._table, read, now)
        self._note_held(len(table.keys() - read.keys()), now)
        text = self.render(table.values())
        reloaded = False
        if text == self._applied:
            self._table = table
        elif text != self._rejected:
            if not self.nginx.apply(text):
                self._rejected = text
                return False
            self._applied, self._rejected, self._table = text, None, table
            self._reloaded(table)
            reloaded = True
        if not self._held:
            self._synced_at = read_at
        self._synced()
        return reloaded

    def _note_held(self, held: int, now: float) -> None:
        if self._held and not held:
            if self._grace.holding(now):
                log.info("every held backend is back in Redis")
            else:
                log.info("grace over; backends no longer in Redis are removed")
        self._held = held

    def _synced(self) -> None:
        """Write ROUTER_SYNCED on every sync (Redis may have restarted without it).

        While removals are held nginx is not equal to the table read, so the time written
        stays that of the last sync that was.
        """
        if self._synced_at is None:
            return
        try:
            self.redis.set(keys.ROUTER_SYNCED, repr(self._synced_at))
        except redis.RedisError as e:
            log.warning("could not record the router's sync time in Redis: %s", e)

    def run(self, stop_event: threading.Event) -> None:
        """Start nginx, follow the route table until ``stop_event`` is set, stop nginx."""
        if self.access_log is not None:
            self.access_log.start()
        try:
            self.start()
            try:
                self._loop(stop_event)
            finally:
                self.nginx.stop()
        finally:
            if self.access_log is not None:
                self.access_log.stop()

    def _loop(self, stop_event: threading.Event) -> None:
        pubsub = None
        next_sync = 0.0
        while not stop_event.is_set():
            self._ensure_nginx()
            try:
                if pubsub is None:
                    pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(keys.ROUTES_CHANGED)
                    next_sync = 0.0
                changed = False
                wait = next_sync - time.monotonic()
                if wait > 0:
                    message = pubsub.get_message(timeout=min(wait, self.interval))
                    while message is not None:  # drain a burst, then render once
                        changed = True
                        message = pubsub.get_message(timeout=0.0)
                if changed or time.monotonic() >= next_sync:
                    self.sync()
                    next_sync = time.monotonic() + self.interval
                self._redis_back()
            except redis.RedisError as e:
                self._redis_lost(e)
                _close_quietly(pubsub)
                pubsub = None
                stop_event.wait(self.interval)
        _close_quietly(pubsub)

    def _ensure_nginx(self) -> None:
        if self.nginx.is_running():
            return
        if self.nginx.returncode is not None:
            log.error("nginx exited with status %s; restarting it", self.nginx.returncode)
        try:
            self.nginx.start(self._applied or self.render([]), listen=self.listen)
        except RouterError as e:
            log.error("%s", e)

    def _reloaded(self, table: RouteTable) -> None:
        hosts = len({normalize_host(r.host) for r in table.values()})
        log.info("nginx config applied: %d hosts, %d backends", hosts, len(table))
        status = {"reloaded_at": time.time(), "routes": len(table), "hosts": hosts}
        self.reloads += 1
        try:
            self.redis.set(keys.ROUTER_STATUS, json.dumps(status))
        except redis.RedisError as e:
            log.warning("could not record the router status in Redis: %s", e)

    def _redis_lost(self, error: Exception) -> None:
        self._grace.redis_failed()
        if not self._redis_down:
            log.warning(
                "Redis is unreachable (%s); nginx keeps serving the last good config; "
                "retrying every %g s",
                error,
                self.interval,
            )
        self._redis_down = True

    def _redis_back(self) -> None:
        self._redis_down = False

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            if len(self._warned) > 10_000:
                self._warned.clear()
            self._warned.add(message)
            log.warning("%s", message)


def _close_quietly(pubsub: Any) -> None:
    if pubsub is None:
        return
    try:
        pubsub.close()
    except (redis.RedisError, OSError):
        pass


def _serve_metrics(router: Router, settings: Settings) -> None:
    """Prometheus text on ``metrics_port_router``: reloads and routes, read at each scrape."""
    from prometheus_client import REGISTRY, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self) -> Iterable[Any]:
            yield CounterMetricFamily("paas_router_reloads", "nginx configs applied",
                                      value=router.reloads)
            yield GaugeMetricFamily("paas_router_backends", "Backends nginx routes to",
                                    value=len(router._table))

    REGISTRY.register(_Collector())
    start_http_server(settings.metrics_port_router, addr=settings.metrics_host)


def main() -> int:
    """Console entry ``paas-router``: settings from ``PAAS_*`` variables, no arguments."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load()
    except ValueError as e:
        log.error("%s", e)
        return 2
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping nginx gracefully", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        logs = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
        access_log = AccessLogListener(AppLogWriter.from_settings(logs, settings))
        router = Router(settings, access_log=access_log)
        if settings.metrics_port_router:
            _serve_metrics(router, settings)
        router.run(stop)
    except RouterError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
