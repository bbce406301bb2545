"""Third-party buildpacks of the Heroku/Cloud Foundry v2 contract: given with -b, or
registered by an admin and chosen by their bin/detect."""

from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")


def test_buildpack_given_with_the_push(platform, fixtures, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(fixtures / "greeting-site", site)
    buildpack = str(fixtures / "greeting-buildpack")
    first = platform.paas("push", "greeter", "-p", str(site), "-b", buildpack)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "greeting buildpack: compile run 1" in first.stdout
    answer = platform.router_get(platform.app_host("greeter")).text
    assert answer.strip() == "hi from hello.txt from a shell buildpack"  # .profile.d sourced

    again = platform.paas("push", "greeter", "-p", str(site), "-b", buildpack)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "compile run 2" in again.stdout  # the app's build cache is kept between builds
    assert platform.paas("delete", "greeter", "-f").returncode == 0


def test_registered_buildpack_is_detected(platform, fixtures, tmp_path):
    created = platform.paas("create-buildpack", "greeting", str(fixtures / "greeting-buildpack"))
    assert created.returncode == 0, created.stderr
    listed = platform.paas("buildpacks")
    assert "greeting" in listed.stdout and "registered" in listed.stdout
    try:
        site = tmp_path / "site"
        shutil.copytree(fixtures / "greeting-site", site)
        pushed = platform.paas("push", "detected", "-p", str(site))
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        assert "Buildpack: greeting (greeting)" in pushed.stdout
        assert "hi from hello.txt" in platform.router_get(platform.app_host("detected")).text
        assert platform.paas("delete", "detected", "-f").returncode == 0

        # Nothing recognises a folder without hello.txt: the sentence names what was tried.
        (site / "hello.txt").unlink()
        (site / "other.txt").write_text("x")
        refused = platform.paas("push", "undetected", "-p", str(site))
        assert refused.returncode == 1
        assert "no buildpack recognises this app" in refused.stderr
    finally:
        assert platform.paas("delete-buildpack", "greeting", "-f").returncode == 0
    assert "greeting" not in platform.paas("buildpacks").stdout


def test_a_folder_that_is_no_buildpack(platform, fixtures, tmp_path):
    result = platform.paas("push", "x", "-p", str(fixtures / "greeting-site"),
                           "-b", str(tmp_path))
    assert result.returncode == 1
    assert "has no bin/compile" in result.stderr
