"""``paas-health``: the health manager. Converges desired state (SQL) to actual (heartbeats).

One is active at a time (a Redis lock); a second one started waits as a hot standby. Each
tick it settles finished builds, asks :func:`controller.convergence.plan` what to do, and
does it: start and stop tasks to agents, release status changes in the database. It ticks
every ``health_interval`` seconds and at once when anything publishes on ``CONVERGE``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid

import redis
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from contracts import keys
from contracts import settings as settings_mod
from contracts.celery_app import make_celery
from contracts.messages import (
    START_INSTANCE_TASK,
    STOP_INSTANCE_TASK,
    InstanceReport,
    InstanceState,
    agent_queue,
    dump,
)
from contracts.settings import Settings
from controller import events, staging
from controller.actual import read_heartbeats
from controller.convergence import (
    Action,
    AgentCapacity,
    DesiredApp,
    DesiredRelease,
    ReleaseDeployed,
    ReleaseFailed,
    Start,
    Stop,
    plan,
)
from controller.db import make_engine, make_sessionmaker
from controller.models import App, AppState, Build, BuildState, Release, ReleaseStatus

log = logging.getLogger("paas.health")
# A start not seen in any heartbeat after this long is forgotten (and so tried again). Long
# enough for an agent whose task threads are busy stopping instances with a grace period.
PENDING_TTL = 120.0
RESEND_STOP_AFTER = 30.0
LOST_BUILD_AFTER = 30.0  # seconds a build may wait for a stager before it is sent again


class HealthManager:
    def __init__(self, settings: Settings, sessions: sessionmaker, client: redis.Redis,
                 celery: Celery) -> None:
        self.settings = settings
        self.sessions = sessions
        self.redis = client
        self.celery = celery
        self.pending: dict[str, tuple[float, InstanceReport]] = {}
        self.stopping: dict[str, float] = {}
        self.requeued: dict[str, float] = {}
        self.identity = f"{uuid.uuid4()}"

    # -- desired state -------------------------------------------------------------------
    def desired(self, session: Session) -> list[DesiredApp]:
        apps = []
        for app in session.scalars(select(App)):
            release = session.get(Release, app.release_id) if app.release_id else None
            web = next((p for p in app.processes if p.type == "web"), None)
            desired_release = None
            if release is not None:
                command = (web.command if web and web.command else
                           release.droplet.process_types.get("web", ""))
                desired_release = DesiredRelease(
                    version=release.version, status=release.status,
                    image=release.droplet.image, command=command, env=dict(release.env))
            apps.append(DesiredApp(
                guid=app.guid, name=app.name, started=app.state == AppState.STARTED,
                instances=web.instances if web else 0,
                memory_mb=web.memory_mb if web else self.settings.default_memory_mb,
                routes=(f"{app.name}.{self.settings.domain}",),
                release=desired_release))
        return apps

    # -- one tick ------------------------------------------------------------------------
    def tick(self) -> list[Action]:
        with self.sessions() as session:
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
            agents = [AgentCapacity(b.agent_id, b.memory_mb, b.memory_used_mb) for b in beats]
            actions = plan(desired, actual, agents, self.settings.start_timeout)
            for action in actions:
                try:
                    self._act(session, action)
                    session.commit()
                except Exception:
                    log.exception("acting on %s failed", action)
                    session.rollback()
        return actions

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
        staging.enqueue(self.celery, session, build.app, build, build.package)

    def _actual(self, beats) -> list[InstanceReport]:  # noqa: ANN001
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
            log.info("start %s/web index %d release %d on %s", spec.app_name, spec.index,
                     spec.release, action.agent_id)
            self.celery.send_task(START_INSTANCE_TASK, args=[dump(spec)],
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
        log.info("%s release %d failed: %s", app.name, release.version, action.reason)

    # -- the loop ------------------------------------------------------------------------
    def _hold_lock(self) -> bool:
        ttl = int(max(15.0, self.settings.health_interval * 5) * 1000)
        if self.redis.set(keys.HEALTH_LOCK, self.identity, nx=True, px=ttl):
            log.info("this health manager is now the active one")
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


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_mod.load()
    sessions = make_sessionmaker(make_engine(settings.sqlalchemy_url))
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10)
    manager = HealthManager(settings, sessions, client, make_celery(settings))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    manager.run(stop)



if __name__ == "__main__":
    main()
