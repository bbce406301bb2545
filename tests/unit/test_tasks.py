"""One-off tasks (paas run): the API, the agent's runner and the CLI, with stand-ins."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time
from typing import Any

import docker.errors
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cli.main import main as cli_main
from cli.run import shell_command
from contracts import keys
from contracts.labels import LABEL_KIND, LABEL_PLATFORM
from contracts.messages import (
    RUN_TASK_TASK,
    Heartbeat,
    StageResult,
    TaskSpec,
    dump,
    unseal,
)
from contracts.secretbox import load_box
from contracts.settings import load
from controller import staging
from controller.accounts import member_token
from controller.models import Build, Event, Role
from dea_agent.tasks import TaskRunner, split_lines
from tests.unit.fakes import FakeCelery, FakeRedis


class StreamRedis(FakeRedis):
    """FakeRedis with the stream commands tasks use."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: dict[str, list[tuple[bytes, dict[bytes, bytes]]]] = {}
        self.seq = 0

    def xadd(self, key: str, fields: dict[str, Any], **_: Any) -> bytes:
        self.seq += 1
        entry_id = f"{self.seq}-0".encode()
        self.streams.setdefault(key, []).append(
            (entry_id, {self._b(k): self._b(v) for k, v in fields.items()}))
        return entry_id

    def xrange(self, key: str, min: str = "-", max: str = "+",
               count: int | None = None) -> list:
        entries = list(self.streams.get(key, []))
        return entries[:count] if count else entries

    def xrevrange(self, key: str, count: int | None = None) -> list:
        entries = list(reversed(self.streams.get(key, [])))
        return entries[:count] if count else entries

    def xread(self, streams: dict[str, Any], block: int = 0, count: int = 0) -> list:
        found = []
        for key, last in streams.items():
            last_seq = int(self._b(last).split(b"-")[0])
            newer = [e for e in self.streams.get(key, [])
                     if int(e[0].split(b"-")[0]) > last_seq]
            if newer:
                found.append((key.encode(), newer[:count or None]))
        return found

    def exists(self, key: str) -> int:
        return int(key in self.data or key in self.streams)

    def expire(self, key: str, seconds: float, **_: Any) -> bool:
        return True

    def delete(self, key: str) -> int:
        return int(self.streams.pop(key, None) is not None) + super().delete(key)

    def pipeline(self) -> StreamRedis:
        return self

    def execute(self) -> list:
        return []

    def entries(self, key: str) -> list[dict[str, str]]:
        return [{k.decode(): v.decode() for k, v in fields.items()}
                for _id, fields in self.streams.get(key, [])]


# -- the controller API -------------------------------------------------------------------

@pytest.fixture
def fake_redis() -> StreamRedis:  # the shared ``env`` fixture, with streams
    return StreamRedis()


def _package() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"web: python app.py\n"
        info = tarfile.TarInfo("Procfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _push(env, name: str, released: bool = True, env_vars: dict | None = None) -> None:
    options = {"env": env_vars} if env_vars else {}
    response = env.client.post(
        f"/v1/apps/{name}/push", content_type="multipart/form-data",
        data={"options": json.dumps(options), "package": (io.BytesIO(_package()), "a.tgz")})
    assert response.status_code == 201, response.json
    if not released:
        return
    guid = response.json["build"]["guid"]
    env.redis.set(keys.build_result(guid), json.dumps(dump(StageResult(
        ok=True, droplet_digest="d" * 64, droplet_path="droplets/d.tar", image="paas/droplet:d1",
        process_types={"web": "python app.py"}))))
    with env.app.extensions["paas.sessionmaker"]() as session:
        build = session.scalar(select(Build).where(Build.guid == guid))
        staging.settle(session, env.redis, env.settings, build)
    env.celery.sent.clear()


def _agent(env, agent_id: str, memory: int, used: int) -> None:
    env.redis.set(keys.agent(agent_id), Heartbeat(
        agent_id=agent_id, address="127.0.0.1", sent_at=0.0, memory_mb=memory,
        memory_used_mb=used).to_json())


def _run(env, name: str, command: object = "python manage.py migrate", headers=None):
    return env.client.post(f"/v1/apps/{name}/tasks", json={"command": command},
                           headers=headers)


def test_task_goes_to_the_agent_with_most_free_memory_with_the_release(env):
    _push(env, "myapp", env_vars={"SECRET": "s3cret"})
    _agent(env, "agent-a", 4096, 3000)
    _agent(env, "agent-b", 4096, 100)
    response = _run(env, "myapp")
    assert response.status_code == 201, response.json
    body = response.json
    assert body["agent"] == "agent-b" and body["command"] == "python manage.py migrate"
    [(name, [spec], queue)] = env.celery.sent
    assert (name, queue) == (RUN_TASK_TASK, "agent.agent-b")
    assert spec["task_guid"] == body["guid"]
    assert spec["image"] == "paas/droplet:d1" and spec["release"] == 1
    # Env and command travel sealed with the platform key; the agent opens them.
    assert spec["env"] == {} and spec["command"] == "" and "s3cret" not in json.dumps(spec)
    opened = unseal(TaskSpec(**spec), load_box(env.settings))
    assert opened.env == {"SECRET": "s3cret"} and opened.command == body["command"]
    # The stream names the app, so its log is authorised against the app.
    [opening] = env.redis.entries(keys.task_log(body["guid"]))
    assert json.loads(opening["task"])["agent"] == "agent-b"
    with env.app.extensions["paas.sessionmaker"]() as session:
        event = session.scalar(select(Event).where(Event.type == "app.task_run"))
    assert event.app_name == "myapp" and event.data["command"] == "python (arguments hidden)"
    assert "s3cret" not in json.dumps(event.data)


def test_task_before_the_first_release_says_push_first(env):
    _push(env, "myapp", released=False)
    _agent(env, "agent-a", 4096, 0)
    response = _run(env, "myapp")
    assert response.status_code == 404
    assert "push it first" in response.json["error"]


@pytest.mark.parametrize("command", ["", "   ", None, 42])
def test_task_needs_a_command(env, command):
    _push(env, "myapp")
    response = _run(env, "myapp", command)
    assert response.status_code == 400
    assert "give the command to run" in response.json["error"]
    assert env.celery.sent == []


def test_task_with_no_agent_up_is_503(env):
    _push(env, "myapp")
    response = _run(env, "myapp")
    assert response.status_code == 503
    assert "no agent is up" in response.json["error"]
    assert env.celery.sent == []


def test_task_on_an_unknown_app_is_404(env):
    response = _run(env, "ghost")
    assert response.status_code == 404
    assert "no app named 'ghost'" in response.json["error"]


def test_task_when_the_queue_is_down_is_503_and_leaves_no_stream(env):
    _push(env, "myapp")
    _agent(env, "agent-a", 4096, 0)
    env.app.extensions["paas.celery"] = FakeCelery(fail=True)
    response = _run(env, "myapp")
    assert response.status_code == 503
    assert "redis-server" in response.json["error"]
    assert not any(k.startswith("paas:task-log:") for k in env.redis.streams)


def _log(env, guid: str, headers=None) -> list[dict]:
    response = env.client.get(f"/v1/tasks/{guid}/log", headers=headers)
    assert response.status_code == 200, response.json
    assert response.mimetype == "application/x-ndjson"
    return [json.loads(line) for line in response.data.decode().splitlines()]


def test_task_log_streams_lines_then_the_exit_code(env):
    _push(env, "myapp")
    _agent(env, "agent-a", 4096, 0)
    guid = _run(env, "myapp").json["guid"]
    stream = keys.task_log(guid)
    env.redis.xadd(stream, {"line": "hi there"})
    env.redis.xadd(stream, {"line": "bye"})
    env.redis.xadd(stream, {"exit_code": "3"})
    env.redis.xadd(stream, {"end": "1"})
    assert _log(env, guid) == [{"line": "hi there"}, {"line": "bye"}, {"exit_code": 3}]


def test_a_task_log_follow_takes_a_follow_slot_and_gives_it_back(env):
    from controller.ratelimit import follows_key

    _push(env, "myapp")
    _agent(env, "agent-a", 4096, 0)
    guid = _run(env, "myapp").json["guid"]
    for entry in ({"line": "hi"}, {"exit_code": "0"}, {"end": "1"}):
        env.redis.xadd(keys.task_log(guid), entry)
    followed = env.client.get(f"/v1/tasks/{guid}/log")
    assert [json.loads(line) for line in followed.get_data(as_text=True).splitlines()] == [
        {"line": "hi"}, {"exit_code": 0}]
    [held] = env.redis.follows.values()
    assert len(held) == 1  # held while the response is open
    followed.close()
    assert held == set()  # and given back when it closes
    digest = hashlib.sha256(b"paas-limits:" + env.token.encode()).hexdigest()
    env.redis.follows[follows_key(f"token:{digest[:32]}")] = {f"f{n}" for n in range(10)}
    refused = env.client.get(f"/v1/tasks/{guid}/log")
    assert refused.status_code == 429 and refused.headers["Retry-After"]
    assert "already follows 10 log streams" in refused.json["error"]


def test_task_log_ends_with_the_agents_error(env):
    _push(env, "myapp")
    _agent(env, "agent-a", 4096, 0)
    guid = _run(env, "myapp").json["guid"]
    env.redis.xadd(keys.task_log(guid), {"error": "the image x is missing"})
    assert _log(env, guid) == [{"error": "the image x is missing"}]


def test_task_log_says_so_when_the_agent_is_gone(env):
    _push(env, "myapp")
    _agent(env, "agent-a", 4096, 0)
    guid = _run(env, "myapp").json["guid"]
    env.redis.xadd(keys.task_log(guid), {"line": "working"})
    del env.redis.data[keys.agent("agent-a")]
    lines = _log(env, guid)
    assert lines[0] == {"line": "working"}
    assert "agent agent-a stopped answering" in lines[-1]["error"]


def test_task_log_of_an_unknown_task_is_404(env):
    response = env.client.get("/v1/tasks/nope/log")
    assert response.status_code == 404
    assert "there is no task nope" in response.json["error"]


def test_another_teams_developer_can_neither_run_nor_read_tasks(env):
    _push(env, "theirs")
    _agent(env, "agent-a", 4096, 0)
    guid = _run(env, "theirs").json["guid"]
    with env.app.extensions["paas.sessionmaker"]() as session:
        secret = member_token(session, "dev-" + "other", "other", Role.DEVELOPER)
    headers = {"Authorization": f"Bearer {secret}"}
    r = _run(env, "theirs", headers=headers)
    assert r.status_code == 404 and "there is no app named 'theirs'" in r.json["error"]
    r = env.client.get(f"/v1/tasks/{guid}/log", headers=headers)
    assert r.status_code == 404
    assert r.json["error"] == f"there is no task {guid} (a task's output is kept for a day)."


# -- the agent's runner -------------------------------------------------------------------

class FakeContainer:
    def __init__(self, chunks: list[bytes], code: int = 0, oom: bool = False) -> None:
        self.id = "c" * 64
        self.chunks, self.code = chunks, code
        self.attrs = {"State": {"OOMKilled": oom}}
        self.started = self.removed = False

    def start(self) -> None:
        self.started = True

    def logs(self, **kwargs: Any) -> list[bytes]:
        assert kwargs["follow"] and kwargs["stream"]
        return self.chunks

    def wait(self) -> dict:
        return {"StatusCode": self.code}

    def reload(self) -> None:
        pass

    def remove(self, force: bool = False) -> None:
        self.removed = True


class FakeDocker:
    def __init__(self, container: FakeContainer | None = None,
                 error: Exception | None = None) -> None:
        self.container, self.error = container, error
        self.created: list[tuple[str, dict]] = []
        self.containers = self

    def create(self, image: str, **kwargs: Any) -> FakeContainer:
        self.created.append((image, kwargs))
        if self.error is not None:
            raise self.error
        return self.container


def _spec(**changes: Any) -> TaskSpec:
    values: dict[str, Any] = dict(
        task_guid="t" * 36, app_guid="app-guid", app_name="myapp", release=4,
        image="paas/droplet:d1", command="python -c 'print(1)'", memory_mb=256,
        env={"SOME_VAR": "x"})
    values.update(changes)
    return TaskSpec(**values)


def _settings(tmp_path):
    return load(env={}, data_dir=str(tmp_path), platform_id="p1", agent_id="agent-a")


def test_runner_streams_output_and_exit_code_in_a_locked_down_container(tmp_path):
    container = FakeContainer([b"hello\nwor", b"ld\r\n", b"no newline"], code=3)
    fake_docker, redis = FakeDocker(container), StreamRedis()
    code = TaskRunner(_settings(tmp_path), fake_docker, redis).run(_spec())
    assert code == 3
    assert redis.entries(keys.task_log("t" * 36)) == [
        {"line": "hello"}, {"line": "world"}, {"line": "no newline"},
        {"exit_code": "3"}, {"end": "1"}]
    assert container.started and container.removed
    [(image, kwargs)] = fake_docker.created
    assert image == "paas/droplet:d1"
    assert kwargs["user"] == "2000:2000" and kwargs["cap_drop"] == ["ALL"]
    assert kwargs["security_opt"] == ["no-new-privileges"] and kwargs["init"] is True
    assert kwargs["mem_limit"] == "256m" and kwargs["pids_limit"] and "ports" not in kwargs
    assert kwargs["working_dir"] == "/app"
    assert kwargs["labels"][LABEL_PLATFORM] == "p1" and kwargs["labels"][LABEL_KIND] == "task"
    assert kwargs["environment"]["SOME_VAR"] == "x"
    assert kwargs["environment"]["PAAS_START_COMMAND"] == "python -c 'print(1)'"
    assert ".profile.d" in kwargs["command"][-1]


def test_runner_says_when_the_task_ran_out_of_memory(tmp_path):
    redis = StreamRedis()
    TaskRunner(_settings(tmp_path), FakeDocker(FakeContainer([], 137, oom=True)), redis).run(
        _spec())
    entries = redis.entries(keys.task_log("t" * 36))
    assert "ran out of memory (256 MB)" in entries[0]["line"]
    assert entries[-2:] == [{"exit_code": "137"}, {"end": "1"}]


def test_runner_with_a_missing_image_ends_with_an_error(tmp_path):
    redis = StreamRedis()
    fake = FakeDocker(error=docker.errors.ImageNotFound("no such image"))
    assert TaskRunner(_settings(tmp_path), fake, redis).run(_spec()) is None
    [error, end] = redis.entries(keys.task_log("t" * 36))
    assert "the image paas/droplet:d1 of release 4 is missing on agent agent-a" in error["error"]
    assert end == {"end": "1"}


def test_runner_does_not_run_a_task_twice(tmp_path):
    redis = StreamRedis()
    redis.xadd(keys.task_log("t" * 36), {"exit_code": "0"})
    redis.xadd(keys.task_log("t" * 36), {"end": "1"})
    fake = FakeDocker(FakeContainer([b"again\n"]))
    assert TaskRunner(_settings(tmp_path), fake, redis).run(_spec()) is None
    assert fake.created == []


def test_split_lines_keeps_characters_cut_between_chunks():
    snowman = "☃".encode()
    assert list(split_lines([b"a" + snowman[:1], snowman[1:] + b"\nb\n"])) == ["a☃", "b"]


# -- the CLI ------------------------------------------------------------------------------

class FakeClient:
    def __init__(self, events: list[dict], posted: list | None = None) -> None:
        self.events = events
        self.posted = posted if posted is not None else []

    def post(self, path: str, json: dict) -> dict:
        self.posted.append((path, json))
        return {"guid": "g1", "agent": "agent-a", "command": json["command"], "release": 2}

    def lines(self, path: str) -> list[dict]:
        assert path == "/tasks/g1/log"
        return self.events


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("PAAS_HOME", str(tmp_path / "home"))
    return CliRunner()


def _cli(monkeypatch, runner, events: list[dict], args: list[str]):
    posted: list = []
    monkeypatch.setattr("cli.run.Client", lambda _config: FakeClient(events, posted))
    return runner.invoke(cli_main, ["run", *args]), posted


def test_cli_prints_the_output_and_exits_with_the_tasks_code(monkeypatch, runner):
    result, posted = _cli(monkeypatch, runner, [
        {"line": "hi x"}, {"ping": True}, {"line": "bye"}, {"exit_code": 3}],
        ["myapp", "--", "python3", "-c", "print('hi x')"])
    assert result.exit_code == 3, result.output
    assert "hi x\nbye\n" in result.stdout
    assert posted == [("/apps/myapp/tasks", {"command": "python3 -c 'print('\"'\"'hi x'\"'\"')'"})]


def test_cli_passes_options_after_the_app_to_the_command(monkeypatch, runner):
    result, posted = _cli(monkeypatch, runner, [{"exit_code": 0}], ["myapp", "ls", "-la"])
    assert result.exit_code == 0, result.output
    assert posted[0][1] == {"command": "ls -la"}


def test_cli_reports_a_task_that_could_not_run(monkeypatch, runner):
    result, _ = _cli(monkeypatch, runner, [{"error": "the image x is missing"}],
                     ["myapp", "--", "true"])
    assert result.exit_code == 1
    assert "the task did not finish: the image x is missing" in result.output


def test_cli_says_when_the_stream_ended_early(monkeypatch, runner):
    result, _ = _cli(monkeypatch, runner, [{"line": "partial"}], ["myapp", "--", "true"])
    assert result.exit_code == 1
    assert "outcome is unknown" in result.output


def test_cli_needs_a_command(runner):
    result = runner.invoke(cli_main, ["run", "myapp"])
    assert result.exit_code == 2
    assert "Missing argument 'COMMAND...'" in result.output


@pytest.mark.parametrize("words, line", [
    (("ls /app | wc -l",), "ls /app | wc -l"),
    (("python", "-c", "print(1)"), "python -c 'print(1)'"),
])
def test_shell_command(words, line):
    assert shell_command(words) == line


def test_cli_with_only_a_double_dash_needs_a_command(runner):
    result = runner.invoke(cli_main, ["run", "myapp", "--"])
    assert result.exit_code == 2
    assert "give the command to run" in result.output


class HangingContainer(FakeContainer):
    """A task that runs until it is stopped."""

    def __init__(self) -> None:
        super().__init__([b"working\n"], code=143)
        self.stopped = threading.Event()

    def logs(self, **kwargs: Any) -> Any:
        yield from self.chunks
        self.stopped.wait(10)

    def stop(self, timeout: int = 10) -> None:
        self.stopped.set()


def test_runner_stops_a_task_at_its_timeout_and_says_so(tmp_path):
    redis = StreamRedis()
    container = HangingContainer()
    runner = TaskRunner(_settings(tmp_path), FakeDocker(container), redis)
    assert runner.run(_spec(timeout=0.2)) == 143
    entries = redis.entries(keys.task_log("t" * 36))
    assert entries[0] == {"line": "working"}
    assert entries[1]["line"] == "[paas] the task ran longer than its timeout (0.2 s) and " \
                                 "was stopped."
    assert entries[-2:] == [{"exit_code": "143"}, {"end": "1"}]
    assert container.stopped.is_set() and container.removed


def test_running_tasks_hold_memory_and_a_slot_until_they_end(tmp_path):
    container = HangingContainer()
    runner = TaskRunner(_settings(tmp_path), FakeDocker(container), StreamRedis())
    assert runner.held() == (0, 0)
    thread = runner.start(_spec(memory_mb=512, timeout=5))
    deadline = time.monotonic() + 5
    while runner.held() == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runner.held() == (512, 1)
    container.stop()
    thread.join(5)
    assert runner.held() == (0, 0)


def test_tasks_run_on_their_teams_network_under_their_runtime(tmp_path):
    class Networks:
        def for_team(self, team: str) -> str:
            return f"net-of-{team}"

    fake = FakeDocker(FakeContainer([]))
    TaskRunner(_settings(tmp_path), fake, StreamRedis(), Networks()).run(
        _spec(team="team-guid", runtime="runsc"))
    [(_, kwargs)] = fake.created
    assert kwargs["network"] == "net-of-team-guid" and kwargs["runtime"] == "runsc"
    assert kwargs["cpu_shares"] == 256  # 256 MB of 1024 per GB


def test_runner_stops_a_task_past_its_disk_quota_and_says_so(tmp_path):
    class Api:
        def containers(self, **kwargs: Any) -> list[dict]:
            assert kwargs["size"] and kwargs["filters"] == {"id": "c" * 64}
            return [{"SizeRw": 300 << 20}]  # 300 MB written

    fake = FakeDocker(HangingContainer())
    fake.api = Api()
    settings = _settings(tmp_path).replace(stats_disk_interval=0.05)
    redis = StreamRedis()
    assert TaskRunner(settings, fake, redis).run(_spec(disk_mb=256)) == 143
    entries = redis.entries(keys.task_log("t" * 36))
    assert entries[1] == {"line": "[paas] the task wrote more than its disk quota (256 MB) "
                                  "and was stopped."}
    assert entries[-2:] == [{"exit_code": "143"}, {"end": "1"}]
