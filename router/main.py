"""``paas-router``: keep nginx's config equal to the route table joined with the backends.

Two things in Redis make up what nginx serves: the route table document the controller
writes (:mod:`contracts.routing`: hosts and paths mapped to apps, certificates) and the
backends the agents register in ``paas:routes:*`` hashes (:class:`contracts.messages.Backend`,
one per ready instance). The router joins them by app guid (see :mod:`router.render`).

The loop re-reads both on each ``paas:routes-changed`` message and at least every second (to
notice hashes that expired), renders nginx.conf and reloads nginx only when the text changed,
and never more often than ``router_reload_interval``: a burst of changes is one reload.
Once nginx serves what it read, the router acknowledges the revision of each agent's table
(and of the route table) in ``paas:router-applied`` (see :mod:`contracts.revisions`).
A missing route table keeps the routes nginx serves (at start: none); an unreadable one is
warned about and the last one kept. Without Redis, nginx keeps serving the last good config;
once Redis answers again (or turns out to have restarted), no backend is removed for a
heartbeat TTL while the agents republish (see :mod:`router.grace`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from contracts import keys, revisions
from contracts.messages import Backend
from contracts.routing import Certificate, MappedRoute, RouteTable, read_route_table
from contracts.secretbox import SecretBox, SecretBoxError, load_box
from contracts.settings import Settings, load
from logpipe import AppLogWriter
from router.accesslog import AccessLogListener
from router.errors import NginxConfigError, RouterError
from router.grace import BackendTable, RemovalGrace, backend_table
from router.nginx import Nginx
from router.render import (
    backend_problem,
    normalize_domain,
    normalize_host,
    render_nginx_config,
    usable_routes,
)

log = logging.getLogger("paas.router")

# After the first change message, wait this long for the rest of a burst before reading.
SETTLE = 0.02


@dataclass
class AgentTable:
    """One agent's ``keys.routes`` hash as read: its revision and its valid backends."""

    revision: int = 0
    backends: list[Backend] = field(default_factory=list)


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
        self.reload_interval = max(0.0, float(settings.router_reload_interval))
        # Receives nginx's access lines and writes them as RTR lines (None: no access log).
        self.access_log = access_log
        self.listen = (settings.router_host, settings.router_port)
        self.nginx.client_ports = tuple(
            p for p in (settings.router_port, settings.router_https_port) if p)
        self.sticky_cookies = tuple(
            c.strip() for c in settings.router_sticky_cookies.split(",") if c.strip()
        )
        self.certs_dir = Path(self.nginx.runtime_dir) / "certs"
        self._applied: str | None = None  # text nginx serves
        self._rejected: str | None = None  # last text nginx -t refused; not retried
        self._rendered: tuple[object, str] | None = None  # (inputs, text) of the last render
        self._warned: set[str] = set()
        self._redis_down = False
        self._served: BackendTable = {}  # backends of the text nginx serves
        self._routes: list[MappedRoute] = []  # of the last readable route table
        self._certificates: list[Certificate] = []
        self._revision: int | None = None
        self._cert_checked: dict[str, bool] = {}  # certificate file stem -> nginx loads it
        self._box: SecretBox | None = None  # opens certificates' sealed keys
        self._grace = RemovalGrace(settings.heartbeat_ttl)
        self._held = 0  # backends nginx serves that Redis no longer has (during a grace)
        # Agent id (and APPLIED_ROUTE_TABLE) -> revision of the table nginx serves: what
        # ROUTER_APPLIED promises.
        self._acked: dict[str, int] = {}
        self._owners: dict[str, str] = {}  # backend (canonical JSON) served -> its agent
        self._written: dict[str, int] | None = None  # ROUTER_APPLIED as last written
        self._last_reload = float("-inf")  # monotonic time of the last nginx reload
        self.reloads = 0  # nginx configs applied (paas_router_reloads_total)

    @property
    def _table(self) -> BackendTable:
        return self._served

    @_table.setter
    def _table(self, table: BackendTable) -> None:
        if self.access_log is not None and table is not self._served:
            self.access_log.set_backends(table.values())
        self._served = table

    # -- reading ----------------------------------------------------------------------------

    def read_backends(self) -> list[Backend]:
        """Every valid backend of every agent; raises ``redis.RedisError`` if Redis is away."""
        return [b for table in self.read_agents().values() for b in table.backends]

    def read_agents(self) -> dict[str, AgentTable]:
        """Each agent's table: its revision and valid backends. Raises ``redis.RedisError``
        if Redis is away."""
        tables: dict[str, AgentTable] = {}
        prefix = keys.routes("")
        for key in self.redis.scan_iter(match=keys.ROUTES_PATTERN, count=1000):
            table = tables.setdefault(key[len(prefix):], AgentTable())
            for guid, raw in self.redis.hgetall(key).items():
                if guid == keys.REVISION_FIELD:
                    table.revision = revisions.parse_revision(raw)
                    continue
                try:
                    backend = Backend.from_json(raw)
                except (ValueError, TypeError, AttributeError) as e:
                    self._warn_once(f"skipping unreadable backend {guid!r} in {key!r}: {e}")
                    continue
                problem = backend_problem(backend)
                if problem:
                    self._warn_once(f"skipping backend {guid!r} in {key!r}: {problem}")
                    continue
                table.backends.append(backend)
        return tables

    def read_table(self) -> RouteTable | None:
        """The route table, or None if it is missing or unreadable (then the last one is kept).

        Raises ``redis.RedisError`` if Redis is away.
        """
        try:
            table = read_route_table(self.redis)
        except ValueError as e:
            self._warn_once(f"{e}; keeping the routes of the last readable one")
            return None
        if table is not None:
            for problem in usable_routes(table.routes)[1]:
                self._warn_once(f"skipping {problem}")
        return table

    def read_run_id(self) -> str | None:
        """Redis's run_id (new after each restart), or None if ``INFO`` is not allowed."""
        try:
            run_id = self.redis.info("server").get("run_id")
        except redis.ResponseError as e:  # INFO renamed or denied; connection errors go up
            self._warn_once(f"cannot read Redis's run_id, restarts show only as errors: {e}")
            return None
        return str(run_id) if run_id else None

    def _take_table(self, table: RouteTable | None) -> None:
        if table is None:
            return
        self._routes, self._certificates, self._revision = (
            table.routes,
            table.certificates,
            table.revision,
        )

    # -- certificates -----------------------------------------------------------------------

    def _certificate_files(self) -> dict[str, tuple[str, str]]:
        """Domain -> (cert path, key path) of each usable certificate, written to
        ``certs/<sha256>.pem|.key`` (0600 in a 0700 folder) if not there yet."""
        if not self.settings.router_https_port:
            return {}
        out: dict[str, tuple[str, str]] = {}
        for cert in sorted(self._certificates, key=lambda c: repr(c.domain)):
            domain = normalize_domain(cert.domain)
            if (
                domain is None
                or not isinstance(cert.cert_pem, str)
                or not isinstance(cert.key_sealed, str)
                or not cert.key_sealed
            ):
                self._warn_once(
                    f"skipping the certificate of {cert.domain!r}: the domain is "
                    "not a DNS name, or the PEM text or the sealed key is missing"
                )
                continue
            if domain in out:
                continue
            stem = hashlib.sha256(f"{cert.cert_pem}\0{cert.key_sealed}".encode()).hexdigest()
            paths = (str(self.certs_dir / f"{stem}.pem"), str(self.certs_dir / f"{stem}.key"))
            if not Path(paths[1]).exists():
                try:  # the key comes sealed with the platform key; opened only to write it
                    key_pem = self._secret_box().open(cert.key_sealed)
                except SecretBoxError as e:
                    self._warn_once(f"skipping the certificate of {domain}: {e}")
                    continue
                _write_private(Path(paths[1]), key_pem)
            _write_private(Path(paths[0]), cert.cert_pem)
            if stem not in self._cert_checked:
                self._cert_checked[stem] = self._loads(domain, *paths)
            if self._cert_checked[stem]:
                out[domain] = paths
        return out

    def _secret_box(self) -> SecretBox:
        """The platform key, loaded when a certificate first needs it (a router without
        certificates runs without one)."""
        if self._box is None:
            self._box = load_box(self.settings)
        return self._box

    def _loads(self, domain: str, cert_path: str, key_path: str) -> bool:
        check = getattr(self.nginx, "check_certificate", None)
        if check is None:
            return True
        try:
            check(cert_path, key_path)
        except NginxConfigError as e:
            self._warn_once(
                f"skipping the certificate of {domain}: nginx cannot use it: {e.output.strip()}"
            )
            return False
        return True

    def _prune_certificates(self, used: dict[str, tuple[str, str]]) -> None:
        keep = {p for pair in used.values() for p in pair}
        try:
            files = list(self.certs_dir.iterdir())
        except FileNotFoundError:
            return
        for path in files:
            if str(path) not in keep and path.suffix in (".pem", ".key"):
                path.unlink(missing_ok=True)  # its check result stays: same name, same text

    # -- rendering and applying -------------------------------------------------------------

    def render(
        self,
        routes: Iterable[MappedRoute],
        backends: Iterable[Backend],
        certificates: dict[str, tuple[str, str]] | None = None,
    ) -> str:
        return render_nginx_config(
            routes,
            backends,
            listen_host=self.listen[0],
            listen_port=self.listen[1],
            runtime_dir=str(self.nginx.runtime_dir),
            https_port=self.settings.router_https_port,
            certificates=certificates or {},
            access_log_path=str(self.access_log.path) if self.access_log else None,
            max_body_mb=self.settings.router_max_body_mb,
            sticky_cookies=self.sticky_cookies,
            retired_dir=str(getattr(self.nginx, "retired_dir", "")) or None,
        )

    def start(self) -> None:
        """Start nginx with the current routes and backends (none if Redis is away)."""
        agents: dict[str, AgentTable] = {}
        try:
            agents = self.read_agents()
            self._take_table(self.read_table())
            self._grace.redis_answered(self.read_run_id(), time.monotonic())
        except redis.RedisError as e:
            self._redis_lost(e)
            agents = {}
        table = backend_table(b for t in agents.values() for b in t.backends)
        _passable(Path(self.nginx.runtime_dir), Path(self.settings.data_dir))
        certs = self._certificate_files()
        text = self.render(self._routes, table.values(), certs)
        self.nginx.start(text, listen=self.listen)
        self._prune_certificates(certs)
        self._applied, self._table = text, table
        self._last_reload = time.monotonic()
        log.info("router listening on %s:%s", *self.listen)
        self._reloaded(table)
        self._acknowledge(agents, table, set())
        self._write_applied()

    def sync(self) -> bool:
        """Re-read routes and backends; reload nginx if the config changed. True if it did.

        Raises ``redis.RedisError`` if Redis is away; nginx then keeps its config.
        """
        agents = self.read_agents()
        read = backend_table(b for t in agents.values() for b in t.backends)
        route_table = self.read_table()
        run_id = self.read_run_id()  # after the reads: a restart before or during them shows
        now = time.monotonic()
        why = self._grace.redis_answered(run_id, now)
        if why:
            log.warning(
                "Redis %s; no backend is removed for %g s while the agents republish routes",
                why,
                self._grace.period,
            )
            # Revisions read before may come from a counter Redis has lost: an agent whose
            # backends are held is acknowledged again only once nginx equals its table.
            self._acked = {}
        self._take_table(route_table)
        table = self._grace.table_to_apply(self._table, read, now)
        held = table.keys() - read.keys()
        self._note_held(len(held), now)
        certs = self._certificate_files()
        # Most syncs find nothing changed: the text of the same inputs is not made again
        # (100 apps take milliseconds to render, every second).
        inputs = (list(self._routes), dict(table), dict(certs))
        if self._rendered is not None and self._rendered[0] == inputs:
            text = self._rendered[1]
        else:
            text = self.render(self._routes, table.values(), certs)
            self._rendered = (inputs, text)
        reloaded = False
        if text == self._applied:
            self._acknowledge(agents, table, held)
            self._table = table
        elif text != self._rejected:
            self._last_reload = time.monotonic()
            if not self.nginx.apply(text):
                self._rejected = text
                self._write_applied()  # what nginx still serves, as acknowledged before
                return False
            self._prune_certificates(certs)
            self._acknowledge(agents, table, held)
            self._applied, self._rejected, self._table = text, None, table
            self._reloaded(table)
            reloaded = True
        self._write_applied()
        return reloaded

    def _note_held(self, held: int, now: float) -> None:
        if self._held and not held:
            if self._grace.holding(now):
                log.info("every held backend is back in Redis")
            else:
                log.info("grace over; backends no longer in Redis are removed")
        self._held = held

    def _acknowledge(self, agents: dict[str, AgentTable], table: BackendTable,
                     held: Iterable[str]) -> None:
        """nginx now serves ``table`` and the routes read: acknowledge the route table's
        revision and each agent's revision read, but for an agent with held backends (nginx
        serves more of it than its table) keep what was acknowledged before, if anything."""
        owners = {b.to_json(): agent for agent, t in agents.items() for b in t.backends}
        held_by = {self._owners.get(key) for key in held}
        if None in held_by:  # a held backend of no known agent: acknowledge nothing new
            acked = dict(self._acked)
        else:
            acked = {a: t.revision for a, t in agents.items() if a not in held_by}
            acked.update({a: self._acked[a] for a in held_by if a in self._acked})
        acked[keys.APPLIED_ROUTE_TABLE] = self._revision or 0
        self._acked = {a: r for a, r in acked.items() if r}
        self._owners = {key: owners.get(key) or self._owners[key] for key in table
                        if key in owners or key in self._owners}

    def _write_applied(self) -> None:
        """Write ROUTER_APPLIED on every sync (Redis may have restarted without it), and
        publish on CONVERGE when it changed, so the health manager sees it at once."""
        applied = dict(self._acked)
        try:
            pipe = self.redis.pipeline()
            pipe.delete(keys.ROUTER_APPLIED)
            if applied:
                pipe.hset(keys.ROUTER_APPLIED, mapping={k: str(v) for k, v in applied.items()})
            if applied != self._written:
                pipe.publish(keys.CONVERGE, "router")
            pipe.execute()
        except redis.RedisError as e:
            log.warning("could not record the route table revisions nginx serves in Redis: %s",
                        e)
            return
        self._written = applied

    def run(self, stop_event: threading.Event) -> None:
        """Start nginx, follow the route table until ``stop_event`` is set, stop nginx."""
        if self.access_log is not None:
            self.access_log.reopen = self.nginx.reopen_logs
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

    def next_sync_at(self, *, periodic_at: float, changed_at: float | None) -> float:
        """When to sync next (monotonic): at the periodic time, or soon after a change, but
        never sooner than ``reload_interval`` after the last reload."""
        due = periodic_at if changed_at is None else min(periodic_at, changed_at + SETTLE)
        return max(due, self._last_reload + self.reload_interval)

    def _loop(self, stop_event: threading.Event) -> None:
        pubsub = None
        periodic_at = 0.0
        changed_at: float | None = None
        while not stop_event.is_set():
            self._ensure_nginx()
            try:
                if pubsub is None:
                    pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(keys.ROUTES_CHANGED)
                    periodic_at = 0.0
                now = time.monotonic()
                due = self.next_sync_at(periodic_at=periodic_at, changed_at=changed_at)
                if now < due:
                    message = pubsub.get_message(timeout=min(due - now, self.interval))
                    while message is not None:  # drain a burst
                        if changed_at is None:
                            changed_at = time.monotonic()
                        message = pubsub.get_message(timeout=0.0)
                    continue
                changed_at = None
                self.sync()
                periodic_at = time.monotonic() + self.interval
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
            self.nginx.start(self._applied or self.render([], []), listen=self.listen)
        except RouterError as e:
            log.error("%s", e)

    def _reloaded(self, table: BackendTable) -> None:
        served = usable_routes(self._routes)[0]
        hosts = len({normalize_host(r.host) for r in served})
        log.info(
            "nginx config applied: %d hosts, %d routes, %d backends", hosts, len(served), len(table)
        )
        status = {
            "reloaded_at": time.time(),
            "hosts": hosts,
            "routes": len(served),
            "backends": len(table),
            "revision": self._revision,
        }
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


def _passable(folder: Path, data_dir: Path) -> None:
    """Let nginx's workers (user nobody) pass through ``folder`` and, if it is under it, the
    data dir, to the temp folders they write request bodies to: execute for all (0711), not
    read, so nothing there can be listed; the files stay 0600 and the other folders 0700."""
    folder.mkdir(parents=True, exist_ok=True)
    inside = folder.resolve().is_relative_to(data_dir.resolve())
    for path in (folder, *([data_dir] if inside else [])):
        mode = path.stat().st_mode & 0o777
        if mode & 0o011 != 0o011:
            path.chmod(mode | 0o011)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600, folder 0700) unless it is there already."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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
            yield CounterMetricFamily(
                "paas_router_reloads", "nginx configs applied", value=router.reloads
            )
            yield GaugeMetricFamily(
                "paas_router_backends", "Backends nginx routes to", value=len(router._table)
            )
            yield GaugeMetricFamily(
                "paas_router_routes", "Routes of the route table served", value=len(router._routes)
            )

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
        access_log = AccessLogListener(
            AppLogWriter.from_settings(logs, settings), settings.router_dir / "access.log"
        )
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
