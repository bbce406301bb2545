"""Push a Flask app through the real CLI, reach it through nginx, re-push, delete."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integration.runtime_helpers import wait_for

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")


def copy_fixture(fixtures: Path, name: str, dest: Path) -> Path:
    target = dest / name
    shutil.copytree(fixtures / name, target)
    return target


def test_push_serve_repush_delete(platform, fixtures, tmp_path):
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
    # Its instances stop (after the router has let go of them), and its host gets the 404 page.
    assert wait_for(lambda: not _containers(platform), timeout=20), "containers left behind"
    page = platform.router_get(host)
    assert page.status_code == 404, page.text
    assert "No app is at" in page.text and host in page.text
    assert "hello" not in platform.paas("apps").stdout


def _instances(platform, name: str) -> list[dict]:
    import json

    shown = platform.paas("app", name, "--json")
    return json.loads(shown.stdout)["instances"] if shown.returncode == 0 else []


def _containers(platform) -> list:
    import docker

    return docker.from_env().containers.list(ignore_removed=True, all=True, filters={"label": [
        f"paas.platform={platform.platform_id}", "paas.kind=instance"]})


def test_manifest_and_resource_matching(platform, fixtures, tmp_path):
    import hashlib
    import json
    import os

    app = copy_fixture(fixtures, "flask-hello", tmp_path)
    (app / "manifest.yml").write_text(
        "applications:\n- name: manifested\n  instances: 2\n  memory: 128M\n"
        "  env:\n    GREETING: hi from the manifest\n")
    blob = os.urandom(2 * 1024 * 1024)
    (app / "asset.bin").write_bytes(blob)
    host = platform.app_host("manifested")

    first = platform.paas("push", "-p", str(app))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "not uploaded" not in first.stdout
    assert "hi from the manifest" in platform.router_get(host).text
    shown = json.loads(platform.paas("app", "manifested", "--json").stdout)
    assert shown["instances_desired"] == 2
    assert [i["state"] for i in shown["instances"]] == ["RUNNING", "RUNNING"]
    assert shown["processes"][0]["memory_mb"] == 128

    # The large file is cached: the re-push leaves it out, and the app still has it.
    (app / "app.py").write_text((app / "app.py").read_text() + "\n# changed\n")
    second = platform.paas("push", "-p", str(app))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 unchanged file not uploaded" in second.stdout
    assert platform.router_get(host, "/sha1/asset.bin").text == hashlib.sha1(blob).hexdigest()
    assert platform.paas("delete", "manifested", "-f").returncode == 0


def test_restage_with_and_without_the_cache(platform, fixtures, tmp_path):
    app = copy_fixture(fixtures, "flask-hello", tmp_path)
    assert platform.paas("push", "again", "-p", str(app)).returncode == 0

    warm = platform.paas("restage", "again")
    assert warm.returncode == 0, warm.stdout + warm.stderr
    assert "reusing them from the build cache" in warm.stdout
    cold = platform.paas("restage", "again", "--no-cache")
    assert cold.returncode == 0, cold.stdout + cold.stderr
    assert "Throwing the build cache away" in cold.stdout
    assert "Installing requirements with pip" in cold.stdout
    assert "hello from paas" in platform.router_get(platform.app_host("again")).text
    shown = platform.paas("app", "again")
    assert "release: 3 (DEPLOYED)" in shown.stdout
    assert platform.paas("delete", "again", "-f").returncode == 0
    missing = platform.paas("restage", "no-such-app")
    assert missing.returncode == 1 and "there is no app named 'no-such-app'" in missing.stderr


def test_unchanged_large_app_uploads_almost_nothing(platform, tmp_path):
    """A 50 MB, 5,000-file app: the re-push after a one-line change uploads (almost) nothing."""
    import os
    import re

    site = tmp_path / "bigsite"
    (site / "assets").mkdir(parents=True)
    (site / "index.html").write_text("<h1>version 1</h1>\n")
    for n in range(5000):
        (site / "assets" / f"file{n:04}.bin").write_bytes(os.urandom(10 * 1024))
    first = platform.paas("push", "bigsite", "-p", str(site))
    assert first.returncode == 0, first.stdout + first.stderr

    (site / "index.html").write_text("<h1>version 2</h1>\n")
    second = platform.paas("push", "bigsite", "-p", str(site))
    assert second.returncode == 0, second.stdout + second.stderr
    uploaded = re.search(r"upload ([\d.]+) MB, 5000 unchanged files not uploaded", second.stdout)
    assert uploaded, second.stdout
    assert float(uploaded.group(1)) < 0.5
    assert "version 2" in platform.router_get(platform.app_host("bigsite")).text
    asset = platform.router_get(platform.app_host("bigsite"), "/assets/file4999.bin")
    assert asset.status_code == 200 and len(asset.content) == 10 * 1024
    assert platform.paas("delete", "bigsite", "-f").returncode == 0
