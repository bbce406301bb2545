"""``paas logs``: an app's stdout and stderr, staging, API and health lines, stored and live;
the cap, the rate limit and the team check hold on a real platform."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from contracts import keys
from contracts.settings import as_env
from launcher.sandbox import paas_command
from tests.integration.runtime_helpers import FIXTURES, wait_for

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")
NAME = "logs-app"


@pytest.fixture(scope="module")
def log_app(platform, tmp_path_factory):
    folder = tmp_path_factory.mktemp("logs") / "log-app"
    shutil.copytree(FIXTURES / "log-app", folder)
    pushed = platform.paas("push", NAME, "-p", str(folder))
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    yield NAME
    platform.paas("delete", NAME, "-f")


def get(platform, path: str) -> None:
    """GET ``path`` of the app once it answers 200 (it may be restarting after a crash)."""
    r = wait_for(lambda: (lambda r: r if r.status_code == 200 else None)(
        platform.router_get(platform.app_host(NAME), path)), timeout=15)
    assert r is not None, f"{NAME} did not answer 200 on {path}"


def recent(platform, *args: str) -> list[dict]:
    shown = platform.paas("logs", NAME, "--recent", "--json", *args)
    assert shown.returncode == 0, shown.stderr
    return [json.loads(x) for x in shown.stdout.splitlines() if x.strip()]


def app_guid(platform) -> str:
    shown = platform.paas("app", NAME, "--json")
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    return body.get("guid") or body["app"]["guid"]


def test_recent_shows_stdout_stderr_staging_and_api_lines(platform, log_app):
    get(platform, "/say/hello-recent")

    def said() -> list[dict]:
        return [x for x in recent(platform) if x["text"].endswith("hello-recent")]

    lines = wait_for(lambda: len(said()) == 2 and said(), timeout=10)
    assert lines, recent(platform)[-20:]
    assert {(x["fd"], x["text"]) for x in lines} == {("out", "out hello-recent"),
                                                       ("err", "err hello-recent")}
    assert all(x["source"] == "APP" and x["process_type"] == "web" and x["instance"] == 0
               for x in lines)
    everything = recent(platform)
    assert any(x["source"] == "STG" and x["text"].startswith("-----> Buildpack")
               for x in everything), [x["text"] for x in everything[:10]]
    # As people read it:
    text = platform.paas("logs", NAME, "--recent", "--source", "APP").stdout
    assert "[APP/WEB/0] out hello-recent" in text
    assert "[APP/WEB/0] ERR err hello-recent" in text

    scaled = platform.paas("scale", NAME, "-i", "2")
    assert scaled.returncode == 0, scaled.stdout + scaled.stderr
    api = [x["text"] for x in recent(platform, "--source", "API")]
    assert any(t.startswith("scaled web to 2 instances") for t in api), api
    assert wait_for(lambda: any(x["instance"] == 1 for x in recent(
        platform, "--instance", "1")), timeout=20), "instance 1's output never showed"
    assert platform.paas("scale", NAME, "-i", "1").returncode == 0


def test_a_live_follow_prints_lines_as_they_come(platform, log_app):
    follower = subprocess.Popen([paas_command(), "logs", NAME], env=platform.cli_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [seen.put(line) for line in follower.stdout],
                     daemon=True).start()
    try:
        got: list[str] = []
        deadline = time.monotonic() + 20
        n = 0
        def both() -> bool:  # (an RTR line of the request may come first)
            return any("[APP/WEB/0] out live-" in g for g in got) and \
                any("[APP/WEB/0] ERR err live-" in g for g in got)

        while time.monotonic() < deadline and not both():
            n += 1
            get(platform, f"/say/live-{n}")  # again until the follower is connected
            try:
                while True:
                    got.append(seen.get(timeout=0.5))
            except queue.Empty:
                pass
        live = [g for g in got if "live-" in g]
        assert any("[APP/WEB/0] out live-" in g for g in live), got
        assert any("[APP/WEB/0] ERR err live-" in g for g in live), got
        assert follower.poll() is None  # still following
    finally:
        follower.terminate()
        follower.wait(10)
        follower.stdout.close()


def test_a_crash_shows_as_a_health_line(platform, log_app):
    try:
        platform.router_get(platform.app_host(NAME), "/crash", timeout=3)
    except Exception:
        pass
    health = wait_for(lambda: [x["text"] for x in recent(platform, "--source", "HEALTH")
                               if "crashed" in x["text"]], timeout=20)
    assert health and "exited with code 7" in health[-1], health
    assert "its last output: crashing on purpose (index 0)" in health[-1], health
    app_lines = [x["text"] for x in recent(platform, "--source", "APP")]
    assert "crashing on purpose (index 0)" in app_lines
    # Back up for the next tests.
    assert wait_for(lambda: platform.router_get(platform.app_host(NAME), "/").status_code
                    == 200, timeout=30)


def test_output_while_the_agent_is_down_arrives_once_when_it_is_back(platform, log_app):
    get(platform, "/say/before-the-kill")
    assert wait_for(lambda: "out before-the-kill" in [x["text"] for x in recent(platform)],
                    timeout=10)
    agent = platform.agent_service(platform.agent_ids[0])
    platform.platform.kill(agent)  # SIGKILL: nothing is flushed or cleaned up
    try:
        # The instance neither blocks nor dies for want of a reader of its output.
        get(platform, "/say/while-the-agent-is-down")
        get(platform, "/paced?n=300&rate=1000&tag=down")
        time.sleep(0.5)
    finally:
        platform.platform.start_service(agent)

    def texts() -> list[str]:
        return [x["text"] for x in recent(platform, "--source", "APP")]

    assert wait_for(lambda: sum(t.startswith("down ") for t in texts()) == 300, timeout=30), \
        texts()[-20:]
    shown = texts()
    assert shown.count("out while-the-agent-is-down") == 1
    assert shown.count("err while-the-agent-is-down") == 1
    assert shown.count("out before-the-kill") == 1  # not shipped again by the new agent
    downs = [int(t.split()[1]) for t in shown if t.startswith("down ")]
    assert downs == list(range(300))


def test_a_flood_is_rate_limited_with_an_honest_count_and_capped(platform, log_app):
    settings = platform.settings
    client = redis.Redis.from_url(settings.redis_url)
    stream = keys.app_log(app_guid(platform))
    total = 50_000
    get(platform, f"/flood?n={total}&tag=flood")

    def dropped() -> int:
        return sum(int(x["text"].split()[0]) for x in recent(platform, "--source", "APP",
                                                              "--lines", "10000")
                   if x["text"].endswith(f"(rate limit {settings.log_rate_per_app:g} lines/s)"))

    def kept() -> int:
        return sum(1 for x in recent(platform, "--source", "APP", "--lines", "10000")
                   if x["text"].startswith("flood "))

    assert wait_for(lambda: kept() + dropped() == total, timeout=30), (kept(), dropped())
    assert dropped() > total // 2, (kept(), dropped())  # most of it: far above the limit
    assert kept() >= settings.log_rate_per_app, (kept(), dropped())  # a second's worth
    assert client.xlen(stream) <= settings.log_lines_per_app + 150

    # The cap: more lines than it holds, under the rate limit; the oldest go.
    n = settings.log_lines_per_app + 500
    rate = settings.log_rate_per_app * 0.9
    get(platform, f"/paced?n={n}&rate={rate}")
    assert wait_for(lambda: any(x["text"].startswith(f"paced {n - 1} ") for x in recent(
        platform, "--source", "APP", "--lines", "5")), timeout=n / rate + 20)
    assert client.xlen(stream) <= settings.log_lines_per_app + 150
    oldest = client.xrange(stream, count=1)[0][1][b"line"].decode()
    assert not oldest.startswith("-----> "), oldest  # staging lines were trimmed away
    most = str(settings.log_lines_per_app + 1000)
    paced = [x for x in recent(platform, "--source", "APP", "--lines", most)
             if x["text"].startswith("paced ")]
    assert not any("lines dropped" in x["text"] for x in recent(platform, "--lines", "50"))
    assert len(paced) >= settings.log_lines_per_app - 600
    client.close()


def test_another_team_is_told_the_app_does_not_exist(platform, log_app, tmp_path):
    admin = Path(paas_command()).with_name("paas-admin")
    made = subprocess.run([str(admin), "create-token", "outsider", "--team", "other-team"],
                          env={**platform.cli_env(), **as_env(platform.settings)},
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    home = tmp_path / "outsider"
    home.mkdir()
    (home / "config").write_text(json.dumps({"target": platform.settings.api_url,
                                             "token": made.stdout.strip()}))
    env = {**platform.cli_env(), "PAAS_HOME": str(home)}
    for args in (["--recent"], []):
        shown = subprocess.run([paas_command(), "logs", NAME, *args], env=env,
                               capture_output=True, text=True, timeout=30)
        assert shown.returncode == 1
        assert f"there is no app named {NAME!r}" in shown.stderr
