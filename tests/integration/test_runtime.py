"""The runtime on one agent: crashes, back-off, rolling deploys, rollback, scale, health checks."""

from __future__ import annotations

import json

import docker
import pytest

from tests.integration.runtime_helpers import Load, app_json, running, runtime_app, wait_for

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")


def containers(platform, name: str) -> list:
    client = docker.from_env()
    return client.containers.list(ignore_removed=True, filters={"label": [
        f"paas.platform={platform.platform_id}", f"paas.app_name={name}"]})


def events(platform, name: str) -> list[dict]:
    from sqlalchemy import create_engine, text

    engine = create_engine(platform.settings.sqlalchemy_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT type, data FROM events WHERE app_name = :n "
                                 "ORDER BY id"), {"n": name}).all()
    engine.dispose()
    return [{"type": t, **(json.loads(d) if isinstance(d, str) else d)} for t, d in rows]


def push(platform, name: str, folder, *args: str):
    result = platform.paas("push", name, "-p", str(folder), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_killed_instance_is_replaced_and_the_crash_recorded(platform, tmp_path):
    push(platform, "crashy", runtime_app(tmp_path))
    host = platform.app_host("crashy")
    [first] = running(platform, "crashy")
    [container] = containers(platform, "crashy")
    container.kill(signal="SIGKILL")  # kill -9 of the instance's process tree

    def replaced() -> bool:
        now = running(platform, "crashy")
        return bool(now) and now[0]["since"] > first["since"]

    assert wait_for(replaced, timeout=15), app_json(platform, "crashy")
    assert wait_for(lambda: platform.router_get(host).status_code == 200, timeout=5)
    crash = [e for e in events(platform, "crashy") if e["type"] == "app.crashed"]
    assert len(crash) == 1
    assert crash[0]["exit_code"] == 137 and crash[0]["crash_count"] == 1
    assert crash[0]["restart_in"] == 0
    assert "version v1 index 0 listening" in crash[0]["last_lines"]
    assert platform.paas("delete", "crashy", "-f").returncode == 0


def test_repeated_crashes_back_off_as_the_app_policy_says(platform, tmp_path):
    push(platform, "flaky", runtime_app(tmp_path))
    host = platform.app_host("flaky")
    configured = platform.paas("configure", "flaky", "--crash-restarts", "1",
                               "--crash-backoff", "4", "--crash-backoff-max", "8")
    assert configured.returncode == 0, configured.stderr

    def crashes() -> list[dict]:
        return [e for e in events(platform, "flaky") if e["type"] == "app.crashed"]

    def crash_once() -> None:
        """Make the instance crash (the request may meet a route to a gone instance)."""
        count = len(crashes())
        for _ in range(5):
            assert wait_for(lambda: platform.router_get(host).status_code == 200, timeout=30)
            platform.router_get(host, "/crash")
            if wait_for(lambda: len(crashes()) > count, timeout=5):
                return
        pytest.fail("the instance did not crash")

    crash_once()  # 1st: restarts at once
    crash_once()  # 2nd: waits 4 s
    shown = wait_for(lambda: [i for i in app_json(platform, "flaky")["instances"]
                              if i["state"] == "CRASHED" and i.get("crash_count") == 2])
    assert shown and "exited with code 7" in shown[0]["reason"]
    assert shown[0]["restart_in"] > 1.0
    out = platform.paas("app", "flaky").stdout
    assert "CRASHED" in out and "crashed 2 times in a row" in out
    assert platform.router_get(host).status_code != 200  # nothing serves meanwhile
    crash_once()  # back after the 4 s; the 3rd crash waits 8 s
    found = crashes()
    assert [c["crash_count"] for c in found] == [1, 2, 3]
    assert found[0]["restart_in"] == 0
    assert 2.0 < found[1]["restart_in"] <= 4.0
    assert 6.0 < found[2]["restart_in"] <= 8.0
    assert platform.paas("delete", "flaky", "-f").returncode == 0


def test_rolling_deploy_env_change_failed_deploy_and_rollback(platform, tmp_path):
    host = platform.app_host("rolling")
    push(platform, "rolling", runtime_app(tmp_path, "v1"), "-i", "2")

    with Load(platform, host) as load:
        push(platform, "rolling", runtime_app(tmp_path, "v2"))  # release 2, rolled
        changed = platform.paas("set-env", "rolling", "GREETING", "hello")  # release 3
        assert changed.returncode == 0, changed.stdout + changed.stderr
        wait_for(lambda: load.total > 50)
    assert load.failures == [], load.failures[:5]
    assert load.bodies["v1 -"] and load.bodies["v2 -"] and load.bodies["v2 hello"]
    assert platform.router_get(host).text.startswith("v2 hello")
    assert wait_for(lambda: sorted(i["index"] for i in running(platform, "rolling")) == [0, 1])

    # A version that never passes its health check is abandoned; v2 keeps serving.
    broken = runtime_app(tmp_path, "v3", manifest=(
        "applications:\n- name: rolling\n  health-check-type: http\n"
        "  health-check-http-endpoint: /no-such-page-is-fine-but-this-one-404s\n"
        "  timeout: 4\n"))
    (broken / "server.py").write_text((broken / "server.py").read_text().replace(
        "status = 503 if", "status = 404 if self.path.startswith('/no-such') else 503 if"))
    with Load(platform, host) as load:
        failed = platform.paas("push", "rolling", "-p", str(broken))
    assert failed.returncode == 1
    assert "did not start (the previous release keeps serving)" in failed.stderr
    assert "http health check" in failed.stderr and "404" in failed.stderr
    assert load.failures == [] and set(load.bodies) == {"v2 hello"}

    # As in Cloud Foundry, the health check given with a push stays with the process.
    port = platform.paas("configure", "rolling", "--health-check-type", "port")
    assert port.returncode == 0, port.stdout + port.stderr
    # Env: listed, then rollback to release 1 brings back v1 without GREETING.
    assert "GREETING=hello" in platform.paas("env", "rolling").stdout
    listed = platform.paas("releases", "rolling").stdout
    assert "FAILED" in listed and "set GREETING" in listed
    back = platform.paas("rollback", "rolling", "--to", "1")
    assert back.returncode == 0, back.stdout + back.stderr
    assert platform.router_get(host).text.startswith("v1 -")
    again = platform.paas("rollback", "rolling", "--to", "3")
    assert again.returncode == 0, again.stdout + again.stderr
    assert platform.router_get(host).text.startswith("v2 hello")
    assert platform.paas("delete", "rolling", "-f").returncode == 0


def test_scale_processes_and_capacity(platform, tmp_path):
    push(platform, "scaly", runtime_app(tmp_path))
    scaled = platform.paas("scale", "scaly", "-i", "3")
    assert scaled.returncode == 0, scaled.stdout + scaled.stderr
    assert sorted(i["index"] for i in running(platform, "scaly")) == [0, 1, 2]
    seen = {platform.router_get(platform.app_host("scaly")).text.split("index=")[1].strip()
            for _ in range(12)}
    assert seen == {"0", "1", "2"}

    worker = platform.paas("scale", "scaly", "--process", "worker", "-i", "1")
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert len(running(platform, "scaly", "worker")) == 1

    too_big = platform.paas("scale", "scaly", "-m", "64G")
    assert too_big.returncode == 1
    assert "does not fit" in too_big.stderr and "free" in too_big.stderr
    unknown = platform.paas("scale", "scaly", "--process", "clock", "-i", "1")
    assert unknown.returncode == 1 and "web, worker" in unknown.stderr

    resized = platform.paas("scale", "scaly", "-i", "1", "-m", "128M")
    assert resized.returncode == 0, resized.stdout + resized.stderr
    [web] = running(platform, "scaly")
    [container] = [c for c in containers(platform, "scaly")
                   if c.labels["paas.process_type"] == "web"]
    assert container.attrs["HostConfig"]["Memory"] == 128 * 1024 * 1024
    stopped = platform.paas("stop", "scaly")
    assert stopped.returncode == 0
    assert wait_for(lambda: not containers(platform, "scaly"), timeout=30)
    started = platform.paas("start", "scaly")
    assert started.returncode == 0, started.stdout + started.stderr
    assert len(running(platform, "scaly")) == 1
    assert platform.paas("delete", "scaly", "-f").returncode == 0


def test_http_health_check_takes_a_sick_instance_out_then_restarts_it(
        platform, tmp_path):
    manifest = ("applications:\n- name: checked\n  instances: 2\n"
                "  health-check-type: http\n  health-check-http-endpoint: /health\n")
    push(platform, "checked", runtime_app(tmp_path, manifest=manifest))
    host = platform.app_host("checked")
    for _ in range(20):  # make instance 0 sick (the router alternates between the two)
        if "index=0" in platform.router_get(host, "/sick/0").text:
            break
    sick = next(i for i in running(platform, "checked") if i["index"] == 0)

    def out_of_router() -> bool:
        return all("index=1" in platform.router_get(host).text for _ in range(6))

    assert wait_for(out_of_router, timeout=10)
    # Three failed checks in a row: restarted, and back in the router.
    assert wait_for(lambda: any(i["index"] == 0 and i["since"] > sick["since"] and i["ready"]
                                for i in running(platform, "checked")), timeout=30)
    crash = [e for e in events(platform, "checked") if e["type"] == "app.crashed"]
    assert crash and "health check failed 3 times in a row" in crash[0]["reason"]
    assert wait_for(lambda: any("index=0" in platform.router_get(host).text
                                for _ in range(6)), timeout=10)
    assert platform.paas("delete", "checked", "-f").returncode == 0
