"""GET and HEAD change nothing: every such endpoint of the API, called by every kind of
caller, leaves every row of every table as it was.

State changes have one owner each (docs/architecture.md): a build that staging has finished
is settled by the health manager, never by whoever reads it first; a token's use is marked
in Redis, and the health manager copies it into the token's row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from contracts import keys
from contracts.messages import StageResult, dump
from controller import accounts
from controller.api import builds
from controller.models import Base, Build, BuildState, Token
from tests.unit.test_authorization import (
    CALLERS,
    ENDPOINTS,
    MANAGER,
    RECIPES,
    UnitWorld,
    cheap_hasher,
)

Snapshot = dict[str, list[tuple]]


def snapshot(world: UnitWorld) -> Snapshot:
    """Every row of every table, in a stable order."""
    engine = world.flask.extensions["paas.engine"]
    with engine.connect() as conn:
        return {table.name: sorted((tuple(row) for row in conn.execute(select(table))),
                                   key=repr)
                for table in Base.metadata.sorted_tables}


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    found = []
    for name, rows in before.items():
        gone = [r for r in rows if r not in after[name]]
        new = [r for r in after[name] if r not in rows]
        if gone or new:
            found.append(f"{name}: {len(gone)} row(s) changed or removed, {len(new)} new")
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnitWorld]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(accounts, "_hasher", cheap_hasher)
        patch.setattr(builds, "SETTLE_WAIT", 0.3)  # nothing settles here: do not wait long
        made = UnitWorld(str(tmp_path_factory.mktemp("reads")))
        made.populate()
        yield made
    made.flask.extensions["paas.engine"].dispose()


def staged_unsettled(world: UnitWorld) -> str:
    """A push whose staging has ended (the stager's result and end marker are in Redis) and
    that nobody has settled yet: what reading it used to settle."""
    answer = world.push(world.tokens[MANAGER.key], world.unique("app"))
    assert answer.status == 201, answer
    guid = answer.body["build"]["guid"]
    world.redis.set(keys.build_result(guid), json.dumps(dump(StageResult(
        ok=True, droplet_digest="e" * 64, droplet_path="droplets/e.tar",
        image="paas/droplet:reads", buildpack="procfile", process_types={"web": "serve"}))))
    world.redis.xadd(keys.build_log(guid), {"line": "done"})
    world.redis.xadd(keys.build_log(guid), {"end": "1"})
    return guid


GETS = [e for e in ENDPOINTS if e.method == "GET"]


@pytest.mark.parametrize("endpoint", [pytest.param(e, id=e.rule) for e in GETS])
def test_get_and_head_change_no_row(world: UnitWorld, endpoint) -> None:
    target = RECIPES[endpoint.name]
    for caller in CALLERS:
        req = target.make(world, caller, True)
        token = req.token if req.token is not None else world.tokens.get(caller.key)
        before = snapshot(world)
        for method in ("GET", "HEAD"):
            world.send(token, method, req.path)
        changed = changes(before, snapshot(world))
        assert not changed, f"{caller}: GET/HEAD {req.path} changed {changed}"


def test_reading_a_finished_build_leaves_it_to_the_health_manager(world: UnitWorld) -> None:
    guid = staged_unsettled(world)
    before = snapshot(world)
    token = world.tokens[MANAGER.key]
    shown = world.send(token, "GET", f"/v1/builds/{guid}")
    assert shown.status == 200 and shown.body["state"] == BuildState.STAGING
    world.send(token, "GET", f"/v1/builds/{guid}/log")
    assert not changes(before, snapshot(world))
    with world.flask.extensions["paas.sessionmaker"]() as session:
        assert session.scalar(select(Build.state).where(Build.guid == guid)) == \
            BuildState.STAGING


def test_a_tokens_use_is_marked_in_redis_and_copied_by_the_health_manager(
        world: UnitWorld) -> None:
    token = world.tokens[MANAGER.key]
    world.redis.hashes.pop(keys.TOKENS_USED, None)
    assert world.send(token, "GET", "/v1/whoami").status == 200
    marks = world.redis.hgetall(keys.TOKENS_USED)
    assert len(marks) == 1
    # paas tokens shows the use before the copy...
    listed = world.send(token, "GET", "/v1/tokens").body["tokens"]
    assert next(t for t in listed if t["current"])["last_used_at"] is not None
    # ... and the health manager's copy writes it into the row, once.
    with world.flask.extensions["paas.sessionmaker"]() as session:
        assert accounts.record_token_use(session, world.redis) == 1
        [token_id] = [int(k) for k in marks]
        assert session.get(Token, token_id).last_used_at is not None
    assert not world.redis.hgetall(keys.TOKENS_USED)
