"""Bad pushes end with one sentence, a non-zero exit, and nothing half-made."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_no_buildpack_recognises_the_folder(platform, tmp_path):
    folder = write(tmp_path / "notes", {"notes.txt": "just text\n"})
    result = platform.paas("push", "notes", "-p", str(folder))
    assert result.returncode == 1
    assert "no buildpack recognises this app" in result.stderr
    assert "requirements.txt" in result.stderr
    assert "notes" not in platform.paas("apps").stdout  # no app left behind


def test_dependencies_that_fail_to_install(platform, tmp_path):
    folder = write(tmp_path / "deps", {
        "requirements.txt": "paas-no-such-package-anywhere==1.0\n",
        "Procfile": "web: python3 app.py\n",
    })
    result = platform.paas("push", "deps", "-p", str(folder))
    assert result.returncode == 1
    assert "No matching distribution found for paas-no-such-package-anywhere" in result.stdout
    assert "installing the app's dependencies failed" in result.stderr
    assert "deps" not in platform.paas("apps").stdout


def test_invalid_app_name(platform, fixtures):
    result = platform.paas("push", "Not_A_Name", "-p", str(fixtures / "flask-hello"))
    assert result.returncode != 0
    assert "is not a valid app name" in result.stderr


def test_controller_that_is_down(platform, tmp_path, fixtures):
    from launcher.sandbox import free_port

    home = tmp_path / "home"
    home.mkdir()
    (home / "config").write_text(
        f'{{"target": "http://127.0.0.1:{free_port()}", "token": "x"}}')
    import subprocess

    from launcher.sandbox import paas_command

    result = subprocess.run(
        [paas_command(), "push", "hello", "-p", str(fixtures / "flask-hello")],
        env={**platform.cli_env(), "PAAS_HOME": str(home)}, capture_output=True, text=True,
        timeout=60)
    assert result.returncode == 1
    assert "could not reach the controller" in result.stderr
    assert "make up" in result.stderr


def test_an_app_that_never_opens_its_port_keeps_the_old_release(
        platform, fixtures, tmp_path):
    app = tmp_path / "steady"
    shutil.copytree(fixtures / "flask-hello", app)
    first = platform.paas("push", "steady", "-p", str(app))
    assert first.returncode == 0, first.stdout + first.stderr
    host = platform.app_host("steady")
    assert "hello from paas" in platform.router_get(host).text

    (app / "Procfile").write_text("web: python3 -c 'import time; print(\"not listening\"); "
                                  "time.sleep(600)'\n")
    broken = platform.paas("push", "steady", "-p", str(app))
    assert broken.returncode == 1
    assert "did not pass its port health check" in broken.stderr
    assert "make it listen on 0.0.0.0:$PORT" in broken.stderr
    assert "the previous release keeps serving" in broken.stderr
    # The first release still answers, and stays the app's release.
    assert "hello from paas" in platform.router_get(host).text
    shown = platform.paas("app", "steady")
    assert "release: 1 (DEPLOYED)" in shown.stdout
    assert "release 2 failed" in shown.stdout
    assert platform.paas("delete", "steady", "-f").returncode == 0


def test_unauthenticated_calls_are_refused(platform):
    import requests

    response = requests.get(f"{platform.settings.api_url}/v1/apps", timeout=5)
    assert response.status_code == 401
    assert "paas login" in response.json()["error"]
