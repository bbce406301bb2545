"""The health manager: converges desired state (SQL) to actual (heartbeats).

One is active at a time (a Redis lock); a second one started waits as a hot standby. Each
tick it settles finished builds, asks :func:`controller.convergence.plan` what to do, and
does it: start and stop tasks to agents, release status changes in the database; then it
tells the apps' streams what it saw happen (:mod:`controller.health.watch`). It ticks every
``health_interval`` seconds and at once when anything publishes on ``CONVERGE``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict

import redis
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload, selectinload, sessionmaker

import logpipe
from contracts import keys, revisions
from contracts.appevents import INSTANCE_PENDING, AppEvent
from contracts.messages import (
    START_INSTANCE_TASK,
    STOP_INSTANCE_TASK,
    InstanceReport,
    InstanceState,
    agent_queue,
    dump,
    seal,
)
from contracts.secretbox import load_box
from contracts.settings import Settings
from controller import accounts, appstream, events, routing, staging
from controller.actual import read_heartbeats
from controller.convergence import (
    Action,
    AgentCapacity,
    Clock,
    Crashed,
    CrashKey,
    CrashPolicy,
    CrashRecord,
    DesiredApp,
    DesiredProcess,
    DesiredRelease,
    HealthCheckSpec,
    ReleaseDeployed,
    ReleaseFailed,
    Start,
    Stop,
    Unplaceable,
    is_ready,
    plan,
)
from controller.health import watch
from controller.metrics import HealthMetrics
from controller.models import (
    App,
    AppState,
    Build,
    BuildState,
    Release,
    ReleaseStatus,
    Route,
)

log = logging.getLogger("paas.health")
# A start not seen in any heartbeat after this long is forgotten (and so tried again). Long
# enough for an agent whose task threads are busy stopping instances with a grace period.
PENDING_TTL = 120.0
RESEND_STOP_AFTER = 30.0
LOST_BUILD_AFTER = 30.0  # seconds a build may wait for a stager before it is sent again
ROUTE_TABLE_CHECK = 10.0  # seconds between comparisons of the route table with the database
TOKEN_USE_EVERY = 60.0  # seconds between copies of the tokens' last use into their rows


class HealthManager:
    def __init__(self, settings: Settings, sessions: sessionmaker, client: redis.Redis,
                 celery: Celery) -> None:
        self.settings = settings
        self.sessions = sessions
        appstream.install(sessions, client, settings.app_stream_length)
        self.redis = client
        self.celery = celery
        self.box = load_box(settings)  # seals the env of start messages
        self.pending: dict[str, tuple[float, InstanceReport]] = {}
        self.stopping: dict[str, float] = {}
        self.requeued: dict[str, float] = {}
        self.crashes: dict[CrashKey, CrashRecord] | None = None  # loaded when active
        self.unplaced: dict[str, str] = {}  # as last published under keys.UNPLACED
        self.where: dict[CrashKey, str] = {}  # index -> agent it last ran on
        self.lost_from: dict[CrashKey, str] = {}  # index -> agent lost under it
        self.redis_run_id: str | None = None
        self.metrics: HealthMetrics | None = None  # set by main() when metrics are served
        self.hold_until = 0.0
        self.identity = f"{uuid.uuid4()}"
        self.route_table_checked = -ROUTE_TABLE_CHECK
        self.tokens_recorded = -TOKEN_USE_EVERY
        self.seen: dict[str, watch.Seen] | None = None  # instances as last told to streams
        self.routed_told: dict[str, str] | None = None  # as under keys.APP_ROUTED

    # -- desired state -------------------------------------------------------------------
    def crash_policy(self, app: App) -> CrashPolicy:
        s, custom = self.settings, app.crash_policy or {}
        return CrashPolicy(
            immediate_restarts=int(custom.get("immediate_restarts",
                                              s.crash_immediate_restarts)),
            backoff_base=float(custom.get("backoff_base", s.crash_backoff_base)),
            backoff_max=float(custom.get("backoff_max", s.crash_backoff_max)),
            reset_after=float(custom.get("reset_after", s.crash_reset_after)))

    def desired(self, session: Session) -> list[DesiredApp]:
        apps = []
        s = self.settings
        for app in session.scalars(select(App).options(
                selectinload(App.routes).joinedload(Route.domain), joinedload(App.team))):
            release = session.get(Release, app.release_id) if app.release_id else None
            desired_release, processes = None, []
            if release is not None:
                desired_release = DesiredRelease(
                    version=release.version, status=release.status,
                    image=release.droplet.image, env=dict(release.env))
                for p in app.processes:
                    command = release.command(p.type)
                    if not command:
                        continue  # a process type this release does not have
                    processes.append(DesiredProcess(
                        type=p.type, instances=p.instances, memory_mb=p.memory_mb,
                        disk_mb=p.disk_mb, command=command,
                        health_check=HealthCheckSpec(
                            type=p.health_check_type, endpoint=p.health_check_endpoint,
                            start_timeout=float(p.start_timeout or s.start_timeout),
                            interval=p.health_check_interval or s.health_check_interval,
                            probe_timeout=p.health_check_probe_timeout or
                            s.health_probe_timeout)))
            apps.append(DesiredApp(
                guid=app.guid, name=app.name, started=app.state == AppState.STARTED,
                routes=tuple(r.url for r in app.routes), release=desired_release,
                processes=tuple(processes), generation=app.generation,
                max_in_flight=app.max_in_flight, crash_policy=self.crash_policy(app),
                team=app.team.guid, runtime=s.runtime_for(app.team.name, app.name)))
        return apps

    # -- one tick ------------------------------------------------------------------------
    def tick(self) -> list[Action]:
        self._repair_route_table()
        if self._redis_restarted():
            return []
        started = time.monotonic()
        with self.sessions() as session:
            if started >= self.tokens_recorded + TOKEN_USE_EVERY:
                self.tokens_recorded = started
                accounts.record_token_use(session, self.redis)
            for build in session.scalars(select(Build).where(
                    Build.state == BuildState.STAGING)).all():
                try:
                    if not staging.settle(session, self.redis, self.settings, build):
                        self._requeue_if_lost(session, build)
                except Exception:  # one bad build must not stop every app's healing
                    log.exception("settling build %s failed", build.guid)
                    session.rollback()
            desired = self.desired(session)
            beats = read_heartbeats(self.redis)
            actual = self._actual(beats)
            agents = [AgentCapacity(b.agent_id, b.memory_mb, b.memory_used_mb, b.disk_mb,
                                    b.disk_used_mb, b.slots, b.slots_used) for b in beats]
            clock = Clock(now=time.time())
            applied = self._router_applied()
            crashes = self._crash_records()
            self._note_lost_agents(actual, {b.agent_id for b in beats})
            actions = plan(desired, actual, agents, clock, crashes, applied=applied)
            for action in actions:
                try:
                    self._act(session, action)
                    session.commit()
                except Exception:
                    # Not the action itself: a start carries the app's env (secrets).
                    log.exception("acting on a %s for app %s failed", type(action).__name__,
                                  getattr(action, "app_guid", None) or
                                  getattr(getattr(action, "spec", None), "app_guid", "?"))
                    session.rollback()
            self._forget_crashes(desired, crashes)
            self._publish_unplaced([a for a in actions if isinstance(a, Unplaceable)],
                                   {a.guid: a.name for a in desired})
            self._tell_streams(desired, actual, lambda i: is_ready(i, applied))
        if self.metrics is not None:
            self.metrics.observe(beats, actions, time.monotonic() - started)
        return actions

    def _repair_route_table(self) -> None:
        """Write the route table if Redis lost it (a restart) at once, and compare it with
        the database every ``ROUTE_TABLE_CHECK`` seconds (a write lost while Redis was away)."""
        now = time.monotonic()
        if self.redis.exists(keys.ROUTE_TABLE) and now < self.route_table_checked + \
                ROUTE_TABLE_CHECK:
            return
        self.route_table_checked = now
        with self.sessions() as session:
            if routing.republish(self.redis, session):
                log.info("wrote the route table to Redis (it was missing or stale)")

    def _tell_streams(self, desired: list[DesiredApp], actual: list[InstanceReport],
                      ready: Callable[[InstanceReport], bool]) -> None:
        """Publish what happened to instances since the last tick, and rollouts the router
        now serves, on their apps' streams (see :mod:`controller.health.watch`)."""
        found, seen = watch.instance_events(self.seen or {}, actual)
        if self.seen is None:
            found = []  # just became the active manager: take over what is, silently
        self.seen = seen
        if self.routed_told is None:
            self.routed_told = {k.decode(): v.decode() for k, v in
                                self.redis.hgetall(keys.APP_ROUTED).items()}
        routed = watch.routed_rollouts(desired, actual, ready)
        more, marks, gone = watch.routed_events(desired, routed, self.routed_told)
        if marks:
            self.redis.hset(keys.APP_ROUTED, mapping=marks)
        if gone:
            self.redis.hdel(keys.APP_ROUTED, *gone)
        self.routed_told = {k: v for k, v in {**self.routed_told, **marks}.items()
                            if k not in gone}
        appstream.publish_all(self.redis, found + more, self.settings.app_stream_length)

    def _publish_unplaced(self, found: list[Unplaceable], names: dict[str, str]) -> None:
        """Instances no agent has room for, for ``paas app`` to show (and the log)."""
        now = {keys.crash_field(u.app_guid, u.process_type, u.index): json.dumps(
            {"memory_mb": u.memory_mb, "disk_mb": u.disk_mb}) for u in found}
        if now == self.unplaced:
            return
        told = []
        for u in found:
            field_ = keys.crash_field(u.app_guid, u.process_type, u.index)
            if field_ not in self.unplaced:
                log.warning("no agent has room for %s (%s)", field_, now[field_])
                told.append((u.app_guid, AppEvent(INSTANCE_PENDING, {
                    "app": names.get(u.app_guid), "by": "health",
                    "process_type": u.process_type, "index": u.index,
                    "reason": f"no agent has room for {u.memory_mb} MB memory and "
                              f"{u.disk_mb} MB disk: scale something down or add an agent"})))
        appstream.publish_all(self.redis, told, self.settings.app_stream_length)
        pipe = self.redis.pipeline()
        pipe.delete(keys.UNPLACED)
        if now:
            pipe.hset(keys.UNPLACED, mapping=now)
        pipe.execute()
        self.unplaced = now

    def _note_lost_agents(self, actual: list[InstanceReport], alive: set[str]) -> None:
        """Remember which indices ran on an agent that stopped reporting, so their
        replacements are recorded as rescheduled."""
        for key, agent_id in list(self.where.items()):
            if agent_id not in alive:
                self.lost_from[key] = agent_id
                del self.where[key]
        for inst in actual:
            if inst.state == InstanceState.RUNNING and inst.agent_id in alive:
                self.where[(inst.app_guid, inst.process_type, inst.index)] = inst.agent_id

    def _redis_restarted(self) -> bool:
        """True for a heartbeat TTL after Redis came back empty (it keeps no data): the
        agents have not republished yet, and their instances must not look lost."""
        run_id = self.redis.info("server").get("run_id")
        if self.redis_run_id is not None and run_id != self.redis_run_id:
            log.warning("Redis restarted; waiting %.0f s for the agents to report again",
                        self.settings.heartbeat_ttl)
            self.hold_until = time.monotonic() + self.settings.heartbeat_ttl
            self.pending.clear()
            self.crashes = None
        self.redis_run_id = run_id
        return time.monotonic() < self.hold_until

    def _router_applied(self) -> dict[str, int]:
        """What nginx serves: agent id -> revision of its route table (contracts.revisions)."""
        return revisions.read_applied(self.redis)

    def _crash_records(self) -> dict[CrashKey, CrashRecord]:
        if self.crashes is None:  # became active: take over what the last one knew
            self.crashes = {}
            for field_, raw in self.redis.hgetall(keys.CRASHES).items():
                try:
                    app_guid, type_, index = field_.decode().rsplit("/", 2)
                    self.crashes[(app_guid, type_, int(index))] = CrashRecord(
                        **json.loads(raw))
                except (ValueError, TypeError):
                    log.warning("ignoring a malformed crash record %r", field_)
        return self.crashes

    def _forget_crashes(self, desired: list[DesiredApp],
                        crashes: dict[CrashKey, CrashRecord]) -> None:
        """Drop the records of apps that are gone, and of indices up long enough."""
        apps = {a.guid: a for a in desired}
        now = time.time()
        for key, record in list(crashes.items()):
            app = apps.get(key[0])
            if app is None or now - record.last_at > 2 * app.crash_policy.reset_after + \
                    app.crash_policy.backoff_max:
                del crashes[key]
                self.redis.hdel(keys.CRASHES, keys.crash_field(*key))

    def _requeue_if_lost(self, session: Session, build: Build) -> None:
        """A build no stager has started (its task lost with a Redis restart, say) is sent
        again; staging is idempotent per build, so a late duplicate does no harm."""
        if build.state != BuildState.STAGING or staging.age(build) < LOST_BUILD_AFTER:
            return
        if self.redis.exists(keys.build_log(build.guid)):
            return  # a stager has it
        sent = self.requeued.get(build.guid)
        if sent is not None and time.monotonic() - sent < LOST_BUILD_AFTER:
            return
        log.warning("build %s of %s was not picked up by any stager; sending it again",
                    build.guid, build.app.name)
        self.requeued[build.guid] = time.monotonic()
        staging.enqueue(self.celery, session, build.app, build, build.package, self.settings)

    def _actual(self, beats) -> list[InstanceReport]:
        now = time.monotonic()
        actual: list[InstanceReport] = []
        seen: set[str] = set()
        for beat in beats:
            for inst in beat.instances:
                inst.agent_id = beat.agent_id
                seen.add(inst.instance_guid)
                actual.append(inst)
        for guid, (at, report) in list(self.pending.items()):
            if guid in seen or now - at > PENDING_TTL:
                del self.pending[guid]
            else:
                actual.append(report)
        for guid in list(self.stopping):
            if guid not in seen:
                del self.stopping[guid]
        return actual

    def _act(self, session: Session, action: Action) -> None:
        if isinstance(action, Start):
            spec = action.spec
            log.info("start %s/%s index %d release %d on %s", spec.app_name,
                     spec.process_type, spec.index, spec.release, action.agent_id)
            lost_on = self.lost_from.pop((spec.app_guid, spec.process_type, spec.index), None)
            app = session.scalar(select(App).where(App.guid == spec.app_guid)) \
                if lost_on else None
            if app is not None:
                events.record(session, "app.instance_rescheduled", "health", app,
                              process_type=spec.process_type, index=spec.index,
                              from_agent=lost_on, to_agent=action.agent_id,
                              reason=f"agent {lost_on} stopped reporting")
            self.celery.send_task(START_INSTANCE_TASK, args=[dump(seal(spec, self.box))],
                                  queue=agent_queue(action.agent_id))
            self.pending[spec.instance_guid] = (time.monotonic(), InstanceReport(
                instance_guid=spec.instance_guid, app_guid=spec.app_guid,
                app_name=spec.app_name, release=spec.release, process_type=spec.process_type,
                index=spec.index, state=InstanceState.STARTING, host_port=0, since=time.time(),
                agent_id=action.agent_id))
        elif isinstance(action, Stop):
            sent = self.stopping.get(action.instance_guid)
            if sent is not None and time.monotonic() - sent < RESEND_STOP_AFTER:
                return
            log.info("stop %s on %s: %s", action.instance_guid, action.agent_id, action.reason)
            self.stopping[action.instance_guid] = time.monotonic()
            self.pending.pop(action.instance_guid, None)
            self.celery.send_task(STOP_INSTANCE_TASK, args=[action.instance_guid],
                                  queue=agent_queue(action.agent_id))
        elif isinstance(action, ReleaseDeployed):
            self._deployed(session, action)
        elif isinstance(action, ReleaseFailed):
            self._failed(session, action)
        elif isinstance(action, Crashed):
            self._crashed(session, action)
        elif isinstance(action, Unplaceable):
            pass  # published with the others after the tick (see _publish_unplaced)

    def _crashed(self, session: Session, action: Crashed) -> None:
        record = action.record
        key = (action.app_guid, action.process_type, action.index)
        assert self.crashes is not None
        self.crashes[key] = record
        self.redis.hset(keys.CRASHES, keys.crash_field(*key), json.dumps(asdict(record)))
        app = session.scalar(select(App).where(App.guid == action.app_guid))
        if app is None:
            return
        delay = max(0.0, record.restart_at - time.time())
        events.record(session, "app.crashed", "health", app, process_type=action.process_type,
                      index=action.index, exit_code=record.exit_code, reason=record.reason,
                      crash_count=record.count, restart_in=round(delay, 1),
                      last_lines=list(action.last_lines))
        logpipe.append(self.redis, self.settings, app.guid, logpipe.HEALTH,
                      f"{action.process_type} instance {action.index} crashed: {record.reason} "
                      f"({record.count} in a row; restarting "
                      f"{f'in {delay:.0f} s' if delay else 'now'})")
        log.info("%s/%s index %d crashed (%d in a row): %s; restarting %s", app.name,
                 action.process_type, action.index, record.count, record.reason,
                 f"in {delay:.0f} s" if delay else "now")

    def _release(self, session: Session, app_guid: str,
                 version: int) -> tuple[App, Release] | tuple[None, None]:
        app = session.scalar(select(App).where(App.guid == app_guid))
        if app is None:  # deleted since this tick began
            return None, None
        release = session.scalar(select(Release).where(
            Release.app_id == app.id, Release.version == version))
        return (app, release) if release is not None else (None, None)

    def _deployed(self, session: Session, action: ReleaseDeployed) -> None:
        app, release = self._release(session, action.app_guid, action.version)
        if app is None or release is None:
            return
        for older in session.scalars(select(Release).where(
                Release.app_id == app.id, Release.status == ReleaseStatus.DEPLOYED)):
            older.status = ReleaseStatus.SUPERSEDED
        release.status = ReleaseStatus.DEPLOYED
        events.record(session, "release.deployed", "health", app, release=release.version)
        logpipe.append(self.redis, self.settings, app.guid, logpipe.HEALTH,
                      f"release {release.version} deployed")
        log.info("%s release %d deployed", app.name, release.version)

    def _failed(self, session: Session, action: ReleaseFailed) -> None:
        app, release = self._release(session, action.app_guid, action.version)
        if app is None or release is None:
            return
        release.status = ReleaseStatus.FAILED
        release.error = action.reason
        previous = session.scalar(select(Release).where(
            Release.app_id == app.id, Release.status == ReleaseStatus.DEPLOYED)
            .order_by(Release.version.desc()))
        app.release_id = previous.id if previous else None
        events.record(session, "release.failed", "health", app, release=release.version,
                      reason=action.reason,
                      serving=previous.version if previous else None)
        logpipe.append(self.redis, self.settings, app.guid, logpipe.HEALTH,
                      f"release {release.version} failed: {action.reason}")
        log.info("%s release %d failed: %s", app.name, release.version, action.reason)

    # -- the loop ------------------------------------------------------------------------
    def _hold_lock(self) -> bool:
        ttl = int(max(15.0, self.settings.health_interval * 5) * 1000)
        if self.redis.set(keys.HEALTH_LOCK, self.identity, nx=True, px=ttl):
            log.info("this health manager is now the active one")
            self.crashes = None  # read again: another manager may have counted some
            self.seen = self.routed_told = None  # and told the streams what it saw
            return True
        if self.redis.get(keys.HEALTH_LOCK) == self.identity.encode():
            self.redis.pexpire(keys.HEALTH_LOCK, ttl)
            return True
        return False

    def run(self, stop: threading.Event) -> None:
        wake = threading.Event()
        listener = threading.Thread(target=self._listen, args=(wake, stop), daemon=True)
        listener.start()
        while not stop.is_set():
            try:
                if self._hold_lock():
                    self.tick()
            except redis.RedisError as e:
                log.warning("Redis is unreachable (%s); retrying", e)
            except Exception:
                log.exception("health manager tick failed; retrying")
            wake.wait(self.settings.health_interval)
            wake.clear()
        if self.redis.get(keys.HEALTH_LOCK) == self.identity.encode():
            self.redis.delete(keys.HEALTH_LOCK)

    def _listen(self, wake: threading.Event, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(keys.CONVERGE)
                while not stop.is_set():
                    if pubsub.get_message(timeout=1.0):
                        wake.set()
            except redis.RedisError:
                stop.wait(1.0)
