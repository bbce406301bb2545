"""Python apps of the shapes teams push: FastAPI started with -c, a pyproject-only service in
a subfolder of a repository, and one with no way to start."""

from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")


def test_fastapi_started_with_dash_c(platform, fixtures):
    result = platform.paas("push", "fast", "-p", str(fixtures / "fastapi-hello"),
                           "-c", "uvicorn main:app --host 0.0.0.0 --port $PORT")
    assert result.returncode == 0, result.stdout + result.stderr
    answer = platform.router_get(platform.app_host("fast"))
    assert answer.json()["hello"] == "from fastapi"
    assert platform.paas("delete", "fast", "-f").returncode == 0


def test_pyproject_only_service_in_a_subfolder(platform, fixtures):
    result = platform.paas("push", "-p", str(fixtures / "monorepo" / "services" / "hello"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Installing the project with pip" in result.stdout
    # Named after the folder, as when pushing from inside it.
    answer = platform.router_get(platform.app_host("hello"))
    assert "hello from a pyproject-only service" in answer.text
    assert platform.paas("delete", "hello", "-f").returncode == 0


def test_no_start_command(platform, fixtures, tmp_path):
    app = tmp_path / "nocmd"
    shutil.copytree(fixtures / "flask-hello", app)
    (app / "Procfile").unlink()
    result = platform.paas("push", "nocmd", "-p", str(app))
    assert result.returncode == 1
    assert "no start command: add a Procfile with a 'web:' line, or pass one with -c" \
        in result.stderr
    assert "nocmd" not in platform.paas("apps").stdout
