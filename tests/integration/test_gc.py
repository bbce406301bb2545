"""Garbage collection on the real platform: after three pushes with changed code and a
retention of two releases, `paas-admin gc` removes the first droplet's blobs, image and
package, while the app serves on and rolls back to a release within the window."""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker
import docker.errors
import pytest
from sqlalchemy import select

from contracts.settings import as_env
from controller.db import make_engine, make_sessionmaker
from controller.models import App, Droplet, Package, Release
from launcher.sandbox import Sandbox, paas_command
from tests.integration.runtime_helpers import wait_for

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")
NAME = "gc-app"
SERVER = """import os
from http.server import BaseHTTPRequestHandler, HTTPServer

VERSION = {version!r}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = VERSION.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"""


def push(platform: Sandbox, folder: Path, version: str) -> None:
    (folder / "server.py").write_text(SERVER.format(version=version))
    pushed = platform.paas("push", NAME, "-p", str(folder))
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr


def serves(platform: Sandbox, version: str) -> bool:
    answer = platform.router_get(platform.app_host(NAME))
    return answer.status_code == 200 and answer.text == version


def droplets(platform: Sandbox) -> dict[int, tuple[str, str]]:
    """Release version -> (the droplet's manifest blob key, its image tag)."""
    engine = make_engine(platform.settings.sqlalchemy_url)
    try:
        with make_sessionmaker(engine)() as session:
            rows = session.execute(
                select(Release.version, Droplet.blob_path, Droplet.image)
                .join(Droplet, Droplet.id == Release.droplet_id)
                .join(App, App.id == Release.app_id).where(App.name == NAME))
            return {version: (blob, image) for version, blob, image in rows}
    finally:
        engine.dispose()


def packages(platform: Sandbox) -> list[str]:
    engine = make_engine(platform.settings.sqlalchemy_url)
    try:
        with make_sessionmaker(engine)() as session:
            return list(session.scalars(select(Package.blob_path).join(
                App, App.id == Package.app_id).where(App.name == NAME).order_by(Package.id)))
    finally:
        engine.dispose()


def image_exists(tag: str) -> bool:
    client = docker.from_env()
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False
    finally:
        client.close()


def test_gc_removes_what_no_kept_release_uses_and_the_app_serves_and_rolls_back(
        platform: Sandbox, tmp_path: Path) -> None:
    folder = tmp_path / NAME
    folder.mkdir()
    (folder / "Procfile").write_text("web: python3 server.py\n")
    for version in ("v1", "v2", "v3"):
        push(platform, folder, version)
    assert wait_for(lambda: serves(platform, "v3"), timeout=30)
    made = droplets(platform)
    assert sorted(made) == [1, 2, 3]
    blobs = platform.settings.blobstore_dir
    first_blob, first_image = made[1]
    assert (blobs / first_blob).is_file() and image_exists(first_image)
    pushed = packages(platform)
    assert len(pushed) == 3 and all((blobs / p).is_file() for p in pushed)

    admin = Path(paas_command()).with_name("paas-admin")
    collected = subprocess.run(
        [str(admin), "gc", "--keep", "2"], capture_output=True, text=True, timeout=300,
        env={**platform.cli_env(), **as_env(platform.settings), "PAAS_GC_MIN_AGE_SECONDS": "0"})
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert collected.stdout.startswith("removed "), collected.stdout
    assert "cannot be read" not in collected.stderr  # sealed push options opened

    assert not (blobs / first_blob).exists(), collected.stdout
    assert not image_exists(first_image), collected.stdout
    for version in (2, 3):
        blob, image = made[version]
        assert (blobs / blob).is_file() and image_exists(image), (version, collected.stdout)
    assert [(blobs / p).is_file() for p in pushed] == [False, False, True]  # restage's kept
    assert serves(platform, "v3")

    too_old = platform.paas("rollback", NAME, "--to", "1")
    assert too_old.returncode == 1, too_old.stdout + too_old.stderr
    assert "release 1's droplet was removed by garbage collection" in too_old.stderr
    assert serves(platform, "v3")
    rolled = platform.paas("rollback", NAME, "--to", "2")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert wait_for(lambda: serves(platform, "v2"), timeout=60)
    platform.paas("delete", NAME, "-f")
