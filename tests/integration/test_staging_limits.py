"""Buildpacks that crash, hang or print megabytes: the build ends with the last lines shown,
and the release that was serving keeps serving. A platform of its own, with short limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.sandbox import Sandbox

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")


@pytest.fixture(scope="module")
def platform():  # overrides the session platform for this module
    sandbox = Sandbox(staging_timeout=15.0, staging_output_bytes=200_000, start_timeout=12.0)
    try:
        sandbox.start()
        yield sandbox
    finally:
        sandbox.close()


def buildpack(folder: Path, compile_body: str) -> Path:
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "compile").write_text("#!/bin/sh\n" + compile_body)
    (folder / "bin" / "release").write_text(
        "#!/bin/sh\nprintf -- '---\\ndefault_process_types:\\n"
        "  web: python3 -m http.server $PORT\\n'\n")
    for script in (folder / "bin").iterdir():
        script.chmod(0o755)
    return folder


def site(folder: Path) -> Path:
    folder.mkdir()
    (folder / "index.txt").write_text("served by the first release\n")
    return folder


def test_crash_shows_the_last_lines_and_keeps_the_old_release(platform, tmp_path):
    app = site(tmp_path / "app")
    good = buildpack(tmp_path / "good", "echo fine\n")
    first = platform.paas("push", "steady", "-p", str(app), "-b", str(good))
    assert first.returncode == 0, first.stdout + first.stderr
    host = platform.app_host("steady")
    assert "served by the first release" in platform.router_get(host, "/index.txt").text

    bad = buildpack(tmp_path / "bad", "echo compiling\necho 'error: the widget is missing' >&2\n"
                    "exit 3\n")
    crashed = platform.paas("push", "steady", "-p", str(app), "-b", str(bad))
    assert crashed.returncode == 1
    assert "error: the widget is missing" in crashed.stdout
    assert "failed with exit code 3" in crashed.stderr
    assert "served by the first release" in platform.router_get(host, "/index.txt").text
    assert "release: 1 (DEPLOYED)" in platform.paas("app", "steady").stdout


def test_hang_is_stopped_at_the_staging_timeout(platform, tmp_path):
    app = site(tmp_path / "app")
    hang = buildpack(tmp_path / "hang", "echo 'about to wait forever'\nsleep 600\n")
    result = platform.paas("push", "hangs", "-p", str(app), "-b", str(hang))
    assert result.returncode == 1
    assert "about to wait forever" in result.stdout
    assert "staging ran longer than 15 s" in result.stderr
    assert "hangs" not in platform.paas("apps").stdout


def test_megabytes_of_output_are_counted_not_streamed(platform, tmp_path):
    app = site(tmp_path / "app")
    chatty = buildpack(tmp_path / "chatty",
                       "i=0\nwhile [ $i -lt 60000 ]; do echo \"line $i of chatter\"; "
                       "i=$((i+1)); done\necho 'the very last line'\n")
    result = platform.paas("push", "chatty", "-p", str(app), "-b", str(chatty))
    assert result.returncode == 0, result.stderr
    assert "of output not shown: build output is limited to 0.2 MB" in result.stdout
    assert "the very last line" in result.stdout
    assert len(result.stdout) < 1_000_000
    assert platform.paas("delete", "chatty", "-f").returncode == 0
