"""Stats, events, status and metrics on the real platform: what an operator and an app's
team see when they ask what happened and where things stand."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from contracts.settings import as_env
from tests.integration.runtime_helpers import app_json, running, runtime_app, wait_for

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")
APP = "observed"


def paas_ok(platform, *args: str) -> str:
    result = platform.paas(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def admin_cli(platform, *args: str) -> str:
    """``paas-admin`` against the sandbox's database."""
    admin = os.path.join(os.path.dirname(sys.executable), "paas-admin")
    result = subprocess.run([admin, *args], env={**os.environ, **as_env(platform.settings)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def observed(platform, tmp_path_factory):
    """An app pushed, scaled to two and crashed once (no restart for a while)."""
    folder = runtime_app(tmp_path_factory.mktemp("observed"))
    paas_ok(platform, "push", APP, "-p", str(folder))
    yield APP
    platform.paas("delete", APP, "-f")


def test_paas_app_shows_resource_use_of_a_running_instance(platform, observed):
    def sampled() -> dict | None:
        found = [i for i in running(platform, observed) if (i.get("memory_bytes") or 0) > 0
                 and i.get("cpu_percent") is not None]
        return found[0] if found else None

    inst = wait_for(sampled, timeout=20, interval=0.5)
    assert inst, app_json(platform, observed)
    assert inst["memory_limit_bytes"] == 256 * 1024 * 1024  # the default memory
    assert 0 < inst["memory_bytes"] < inst["memory_limit_bytes"]
    assert inst["disk_bytes"] is not None and inst["started_at"] > 0
    out = paas_ok(platform, "app", observed)
    assert f"routes: http://{observed}.localhost:{platform.settings.router_port}" in out
    for words in ("cpu", "memory", "disk", "RUNNING", "/256M", "%"):
        assert words in out, out


def test_paas_status_shows_the_agent_and_the_queues(platform, observed):
    assert wait_for(lambda: running(platform, observed), timeout=20)
    out = paas_ok(platform, "status")
    agent_id = platform.settings.agent_id
    for words in ("redis: ok", "database: ok", "holds the lock", "router: last reload",
                  agent_id, "healthy", "staging", f"agent.{agent_id}"):
        assert words in out, out
    body = json.loads(paas_ok(platform, "status", "--json"))
    [agent] = body["agents"]
    assert agent["id"] == agent_id and agent["healthy"] and agent["instances"] >= 1
    assert agent["memory_used_mb"] >= 256 and agent["memory_in_use_bytes"] > 0
    assert {q["name"] for q in body["queues"]} >= {"staging", f"agent.{agent_id}"}


def test_a_crash_shows_with_its_reason_and_the_events_tell_the_story(platform,
                                                                     observed):
    paas_ok(platform, "scale", observed, "-i", "2")
    # No restart for a while after the first crash, so it stays visible as CRASHED.
    paas_ok(platform, "configure", observed, "--crash-restarts", "0", "--crash-backoff", "60")
    host = platform.app_host(observed)

    def crashed() -> list[dict]:
        return [i for i in app_json(platform, observed)["instances"]
                if i["state"] == "CRASHED"]

    for _ in range(5):  # the router may hand /crash to an instance already gone
        try:
            platform.router_get(host, "/crash", timeout=3)
        except requests.RequestException:
            pass
        if wait_for(crashed, timeout=8):
            break
    # nginx may retry the broken request on the other instance, which then exits too.
    found = crashed()
    assert found and all("the app exited with code 7" in i["reason"] for i in found), found
    out = paas_ok(platform, "app", observed)
    assert "CRASHED" in out and "the app exited with code 7" in out

    def crash_recorded() -> list[dict]:
        found = json.loads(paas_ok(platform, "events", observed, "--json"))
        return found if any(e["type"] == "app.crashed" for e in found) else []

    found = wait_for(crash_recorded, timeout=10)
    types = [e["type"] for e in found]
    story = ["app.pushed", "build.succeeded", "release.deployed", "app.scaled", "app.crashed"]
    positions = [types.index(t) for t in story]
    assert positions == sorted(positions), types
    table = paas_ok(platform, "events", observed)
    for words in ("created and pushed", "staged with", "release 1 deployed", "scaled web 1→2",
                  "crashed web #", "exit 7"):
        assert words in table, table
    assert table.index("created and pushed") < table.index("scaled web 1→2") < \
        table.index("exit 7")


def test_the_controller_serves_prometheus_text_summed_over_its_workers(platform):
    api = platform.settings.api_url
    for _ in range(12):  # gunicorn spreads these over its workers
        assert requests.get(f"{api}/v1/info", timeout=5).status_code == 200
    r = requests.get(f"{api}/metrics", timeout=5,
                     headers={"Authorization": f"Bearer {platform.token}"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    counts = {tuple(sorted(s.labels.items())): s.value
              for family in text_string_to_metric_families(r.text)
              for s in family.samples if s.name == "paas_api_requests_total"}
    info = counts.get((("endpoint", "v1.info"), ("method", "GET"), ("status", "200")), 0)
    assert info >= 12, counts  # every worker's requests, not one worker's share
    assert "paas_api_request_seconds_bucket" in r.text


def test_another_teams_developer_is_told_the_app_does_not_exist(platform, observed):
    secret = admin_cli(platform, "create-token", "outsider", "--team", "strangers")
    headers = {"Authorization": f"Bearer {secret}"}
    api = platform.settings.api_url
    r = requests.get(f"{api}/v1/apps/{observed}/events", headers=headers, timeout=10)
    assert r.status_code == 404 and f"there is no app named {observed!r}" in r.json()["error"]
    assert requests.get(f"{api}/v1/events", headers=headers, timeout=10).status_code == 403
    assert requests.get(f"{api}/v1/status", headers=headers, timeout=10).status_code == 403
    mine = requests.get(f"{api}/v1/apps/{observed}/events",
                        headers={"Authorization": f"Bearer {platform.token}"}, timeout=10)
    assert mine.status_code == 200 and mine.json()["events"]
