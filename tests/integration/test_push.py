"""Push a Flask app through the real CLI, reach it through nginx, re-push, delete."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")


def wait_for(fn, timeout: float = 15.0, interval: float = 0.2):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def copy_fixture(fixtures: Path, name: str, dest: Path) -> Path:
    target = dest / name
    shutil.copytree(fixtures / name, target)
    return target


def test_push_serve_repush_delete(platform, fixtures, tmp_path):  # noqa: ANN001
    app = copy_fixture(fixtures, "flask-hello", tmp_path)
    host = platform.app_host("hello")

    pushed = platform.paas("push", "hello", "-p", str(app))
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert "Installing requirements with pip" in pushed.stdout  # staging output streamed
    assert f"http://{host}:{platform.settings.router_port}" in pushed.stdout
    response = platform.router_get(host)
    assert response.status_code == 200
    assert "hello from paas (instance 0)" in response.text

    listed = platform.paas("apps")
    assert listed.returncode == 0 and "hello" in listed.stdout
    shown = platform.paas("app", "hello")
    assert shown.returncode == 0 and "RUNNING" in shown.stdout

    # A changed version replaces the first.
    source = (app / "app.py").read_text()
    (app / "app.py").write_text(source.replace("hello from paas", "hello again"))
    repushed = platform.paas("push", "hello", "-p", str(app))
    assert repushed.returncode == 0, repushed.stdout + repushed.stderr
    assert "reusing them from the build cache" in repushed.stdout
    assert "hello again" in platform.router_get(host).text
    # The old release's instance goes away once the new one serves.
    assert wait_for(lambda: all(
        i["release"] == 2 for i in _instances(platform, "hello")), timeout=20)

    deleted = platform.paas("delete", "hello", "-f")
    assert deleted.returncode == 0, deleted.stderr
    gone = wait_for(lambda: platform.router_get(host).status_code == 404, timeout=15)
    assert gone, "the router still routes a deleted app"
    page = platform.router_get(host)
    assert "No app is at" in page.text and host in page.text
    assert "hello" not in platform.paas("apps").stdout
    assert wait_for(lambda: not _containers(platform), timeout=20), "containers left behind"


def _instances(platform, name: str) -> list[dict]:  # noqa: ANN001
    import json

    shown = platform.paas("app", name, "--json")
    return json.loads(shown.stdout)["instances"] if shown.returncode == 0 else []


def _containers(platform) -> list:  # noqa: ANN001
    import docker

    return docker.from_env().containers.list(all=True, filters={"label": [
        f"paas.platform={platform.platform_id}", "paas.kind=instance"]})
