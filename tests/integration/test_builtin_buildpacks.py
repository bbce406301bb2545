"""Each built-in buildpack stages a real-shaped app that answers through the router (or fails
with the sentence a pusher needs): node, static, procfile, python (Django inference, and a
Python version the stack cannot give)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")


def copy_fixture(fixtures: Path, name: str, dest: Path) -> Path:
    target = dest / name
    shutil.copytree(fixtures / name, target)
    return target


@contextmanager
def app(platform, name: str) -> Iterator[str]:
    """The app's host name; the app is deleted afterwards, however the test ended."""
    try:
        yield platform.app_host(name)
    finally:
        platform.paas("delete", name, "-f")


def push(platform, name: str, folder: Path, *extra: str):
    result = platform.paas("push", name, "-p", str(folder), *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_node_app_with_lockfile_and_engines(platform, fixtures, tmp_path):
    folder = copy_fixture(fixtures, "node-hello", tmp_path)
    with app(platform, "nodehello") as host:
        first = push(platform, "nodehello", folder)
        assert "-----> Buildpack: node" in first.stdout
        assert "Node.js 20." in first.stdout and "engines.node '^20.10.0'" in first.stdout
        assert "Installing dependencies with npm ci (package-lock.json)" in first.stdout
        response = platform.router_get(host)
        assert response.status_code == 200
        assert response.text.startswith("hello from node v20.")
        assert "(instance 0, 2m)" in response.text  # the dependency is installed and works

        # Unchanged dependencies: nothing is downloaded or installed again.
        (folder / "app.js").write_text((folder / "app.js").read_text().replace(
            "hello from node", "hello again from node"))
        again = push(platform, "nodehello", folder)
        assert "Dependencies unchanged: reusing node_modules from the build cache" in again.stdout
        assert "unchanged: reusing it from the build cache" in again.stdout  # Node.js itself
        assert "Downloading Node.js" not in again.stdout
        assert "npm ci" not in again.stdout
        assert platform.router_get(host).text.startswith("hello again from node v20.")


def test_node_app_with_only_server_js(platform, fixtures, tmp_path):
    folder = copy_fixture(fixtures, "node-server-only", tmp_path)
    with app(platform, "nodeserver") as host:
        result = push(platform, "nodeserver", folder)
        assert "the default 20.x" in result.stdout
        assert "node server.js" in result.stdout
        response = platform.router_get(host)
        assert response.status_code == 200
        assert response.text.startswith("server.js on node v20.")


def test_static_site_served_from_its_root(platform, fixtures, tmp_path):
    folder = copy_fixture(fixtures, "static-site", tmp_path)
    with app(platform, "site") as host:
        result = push(platform, "site", folder)
        assert "-----> Buildpack: static" in result.stdout
        assert "serving /app/public with nginx" in result.stdout
        page = platform.router_get(host)
        assert page.status_code == 200
        assert "hello from a static site" in page.text
        css = platform.router_get(host, "/css/site.css")
        assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css")
        assert platform.router_get(host, "/.secret").status_code == 404
        assert platform.router_get(host, "/README.txt").status_code == 404  # outside the root
        assert platform.router_get(host, "/no-such-page").status_code == 404


def test_procfile_only_app(platform, fixtures, tmp_path):
    folder = copy_fixture(fixtures, "procfile-only", tmp_path)
    with app(platform, "plain") as host:
        result = push(platform, "plain", folder)
        assert "-----> Buildpack: procfile" in result.stdout
        assert "made ./serve.sh executable" in result.stdout
        response = platform.router_get(host, "/hello.txt")
        assert response.status_code == 200
        assert response.text == "hello from a Procfile-only app\n"


def test_django_project_starts_without_a_procfile(platform, fixtures, tmp_path):
    folder = copy_fixture(fixtures, "django-hello", tmp_path)
    with app(platform, "django") as host:
        result = push(platform, "django", folder)
        assert "gunicorn mysite.wsgi --bind 0.0.0.0:$PORT" in result.stdout
        response = platform.router_get(host)
        assert response.status_code == 200
        assert response.text == "hello from django\n"


def test_python_version_the_stack_cannot_give(platform, fixtures, tmp_path):
    folder = copy_fixture(fixtures, "python-wrong-version", tmp_path)
    with app(platform, "oldpy"):
        result = platform.paas("push", "oldpy", "-p", str(folder))
        assert result.returncode == 1, result.stdout + result.stderr
        assert "this app asks for Python 3.8.10 (runtime.txt) but the stack provides only " \
               "Python 3.11" in result.stderr
        assert "change runtime.txt to python-3.11" in result.stderr
        assert "Installing requirements" not in result.stdout  # it failed at once
