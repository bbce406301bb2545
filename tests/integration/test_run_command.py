"""One-off tasks through the real CLI: `paas run APP -- CMD` in the app's release."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import docker
import pytest

from launcher.sandbox import paas_command

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")

SCRIPT = ("import os, sys, flask; print('hi', os.environ['SOME_VAR']); "
          "print('flask', flask.__version__, 'in', os.getcwd()); "
          "print('to stderr', file=sys.stderr); sys.exit(3)")


def _task_containers(platform) -> list:
    return docker.from_env().containers.list(ignore_removed=True, all=True, filters={"label": [
        f"paas.platform={platform.platform_id}", "paas.kind=task"]})


def test_run_a_task_in_the_apps_release(platform, fixtures: Path, tmp_path: Path):
    app = tmp_path / "flask-hello"
    shutil.copytree(fixtures / "flask-hello", app)
    (app / "manifest.yml").write_text(
        "applications:\n- name: tasky\n  env:\n    SOME_VAR: from-the-manifest\n")
    pushed = platform.paas("push", "tasky", "-p", str(app))
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr

    # The app's env and its installed dependencies are there; stdout and stderr both show;
    # paas exits with the command's code.
    ran = platform.paas("run", "tasky", "--", "python3", "-c", SCRIPT, timeout=120)
    assert ran.returncode == 3, ran.stdout + ran.stderr
    lines = ran.stdout.splitlines()
    assert "hi from-the-manifest" in lines
    assert any(line.startswith("flask 3.0.3 in /app") for line in lines), lines
    assert "to stderr" in lines
    assert "Running `python3 -c" in ran.stderr

    # One word is a shell command line; the app's files are in /app.
    listed = platform.paas("run", "tasky", "ls /app && test -f /app/app.py", timeout=120)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "app.py" in listed.stdout.splitlines()

    # Output streams as it happens, not when the task ends.
    slow = subprocess.Popen(
        [paas_command(), "run", "tasky", "--", "python3", "-c",
         "import time; print('first', flush=True); time.sleep(6); print('last')"],
        env=platform.cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert slow.stdout.readline().strip() == "first"
        assert slow.poll() is None, "the first line waited for the task's end"
        out, err = slow.communicate(timeout=60)
    finally:
        slow.kill()
    assert slow.returncode == 0 and out.strip() == "last", out + err
    assert not _task_containers(platform), "task containers left behind"
    assert platform.paas("delete", "tasky", "-f").returncode == 0


def test_run_on_an_unknown_app_says_so(platform):
    ran = platform.paas("run", "no-such-app", "--", "true", timeout=60)
    assert ran.returncode == 1
    assert "there is no app named 'no-such-app'" in ran.stderr
