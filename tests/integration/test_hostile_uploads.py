"""Hostile uploads against the real platform: each archive is sent as the CLI sends it (the
package upload and create-buildpack), refused with a 400 and a sentence naming the entry,
with nothing stored (blobstore unchanged, no app, no build, no buildpack) and nothing written
outside (the symlink chain aims at a folder the test watches). A .pth in the upload never
runs on the stager host, and a YAML alias bomb in bin/release fails the build at once.

A platform of its own: the fast path runs on an interpreter that reads user site-packages
(as a system-wide one does), so that the .pth test could fail."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from launcher.sandbox import Sandbox
from tests.hostile_archives import E, archive, cve_2025_4517, file, folder, hardlink, symlink

pytestmark = pytest.mark.usefixtures("dump_logs_on_failure")


def _user_site_python() -> str:
    base = getattr(sys, "_base_executable", sys.executable)
    out = subprocess.run([base, "-c", "import site; print(site.ENABLE_USER_SITE)"],
                         capture_output=True, text=True)
    if out.stdout.strip() != "True":
        pytest.fail(f"{base} reads no user site-packages: the .pth test needs one that does")
    return base


@pytest.fixture(scope="module")
def platform() -> Iterator[Sandbox]:  # overrides the session platform for this module
    sandbox = Sandbox(staging_fast_path_python=_user_site_python(), start_timeout=12.0)
    try:
        sandbox.start()
        yield sandbox
    finally:
        sandbox.close()


def api(platform: Sandbox, method: str, path: str, **kw: object) -> requests.Response:
    return requests.request(method, f"{platform.settings.api_url}/v1{path}", timeout=300,
                            headers={"Authorization": f"Bearer {platform.token}"}, **kw)


def push_raw(platform: Sandbox, name: str, data: bytes) -> requests.Response:
    """What ``paas push`` sends: the package, the options and the matched resources."""
    return api(platform, "POST", f"/apps/{name}/push",
               files={"package": ("app.tar.gz", data)},
               data={"options": "{}", "resources": "[]"})


def blobs(platform: Sandbox) -> dict[str, tuple[int, int]]:
    root = platform.settings.blobstore_dir
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def watched_escape(watched: Path) -> str:
    """Where the symlink chain leads from the stager's folder for an upload: ``watched``."""
    return os.path.relpath(watched, Path(tempfile.gettempdir()) / "paas-stage-x")


def header_bomb(name: str, claimed: int) -> bytes:
    """A header claiming ``claimed`` bytes, then 4 MB of zeros, gzip'd to a few KB."""
    info = tarfile.TarInfo(name)
    info.size = claimed
    return gzip.compress(info.tobuf(tarfile.GNU_FORMAT) + bytes(4 * 1024**2))


def many_tiny_files(count: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for i in range(count):
            tar.addfile(tarfile.TarInfo(f"f/{i // 1000}/{i}"))
    return buf.getvalue()


CASES: dict[str, tuple[Callable[[Path], bytes], list[str]]] = {
    "symlink-chain": (lambda w: cve_2025_4517(watched_escape(w)),
                      ["entry 'ddd", "longer than 1024 bytes"]),
    # A file large enough for the resource cache comes first: the cache gets nothing either.
    "cacheable-then-dotdot": (lambda w: archive(file("big.bin", os.urandom(64 * 1024)),
                                                file("../big.bin")),
                              ["entry '../big.bin' points outside the app folder"]),
    "dotdot": (lambda w: archive(file("../../escape.txt")),
               ["entry '../../escape.txt' points outside the app folder"]),
    "absolute": (lambda w: archive(file(str(w / "abs.txt"))),
                 ["abs.txt' points outside the app folder (an absolute path)"]),
    "link-parent": (lambda w: archive(symlink("l", "."), file("l/x.txt")),
                    ["entry 'l/x.txt' lies under 'l', which is a symlink"]),
    "link-out": (lambda w: archive(symlink("out", watched_escape(w))),
                 ["symlink 'out' points outside the app folder"]),
    "hardlink-out": (lambda w: archive(hardlink("h", str(w / "keep.txt"))),
                     ["entry 'h' is a hard link"]),
    "device": (lambda w: archive(E("dev", tarfile.CHRTYPE)),
               ["entry 'dev' is a character device"]),
    "setuid": (lambda w: archive(file("run", b"#!/bin/sh\n", 0o4755)),
               ["entry 'run' has the setuid, setgid or sticky bit"]),
    "gzip-bomb": (lambda w: header_bomb("bomb.bin", 5 * 1024**3),
                  ["unpacks to more than 4 GiB (at 'bomb.bin')"]),
    "not-utf8": (lambda w: archive(file("caf\udce9.txt"), fmt=tarfile.GNU_FORMAT),
                 ["is not valid UTF-8"]),
    "many-files": (lambda w: many_tiny_files(100_001),
                   ["has more than 100000 files (at 'f/100/100000')"]),
}


def _hostile(tmp_path: Path, case: str) -> tuple[Path, bytes, list[str]]:
    """A folder the archive of ``case`` aims at (holding keep.txt), the archive, and the words
    its refusal must say."""
    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / "keep.txt").write_text("untouched")
    build, words = CASES[case]
    return watched, build(watched), words


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_package_is_refused_and_nothing_is_kept(platform: Sandbox, tmp_path: Path,
                                                          case: str) -> None:
    watched, data, words = _hostile(tmp_path, case)
    before = blobs(platform)
    name = f"hostile-{case}"
    response = push_raw(platform, name, data)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    for word in words:
        assert word in error, error
    assert error.endswith(".")
    assert blobs(platform) == before  # no upload, package or resource cache file kept
    assert api(platform, "GET", f"/apps/{name}").status_code == 404  # no app, so no build
    assert sorted(p.name for p in watched.iterdir()) == ["keep.txt"]
    assert (watched / "keep.txt").read_text() == "untouched"


BUILDPACK_CASES = ["symlink-chain", "dotdot", "link-parent", "hardlink-out", "device", "setuid",
                   "gzip-bomb", "not-utf8"]


@pytest.mark.parametrize("case", BUILDPACK_CASES)
def test_a_hostile_buildpack_is_refused_and_nothing_is_kept(platform: Sandbox, tmp_path: Path,
                                                            case: str) -> None:
    watched, data, words = _hostile(tmp_path, case)
    before, listed = blobs(platform), api(platform, "GET", "/buildpacks").json()
    response = api(platform, "POST", "/buildpacks", data={"name": f"evil-{case}"},
                   files={"buildpack": ("buildpack.tar.gz", data)})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    for word in words:
        assert word.replace("app folder", "buildpack") in error.replace("package", "buildpack"), \
            error
    assert error.startswith("the buildpack") or "uploaded buildpack" in error
    assert blobs(platform) == before
    assert api(platform, "GET", "/buildpacks").json() == listed
    assert sorted(p.name for p in watched.iterdir()) == ["keep.txt"]


def test_a_pth_in_the_upload_never_runs_on_the_stager_host(platform: Sandbox,
                                                           tmp_path: Path) -> None:
    app, marks = tmp_path / "app", tmp_path / "marks"
    marks.mkdir()
    app.mkdir()
    (app / "requirements.txt").write_text("# nothing to install\n")
    (app / "Procfile").write_text("web: python3 -m http.server $PORT --bind 0.0.0.0\n")
    (app / "index.html").write_text("served\n")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = app / ".local" / "lib" / version / "site-packages"
    site.mkdir(parents=True)
    # On the host the marks folder exists; in the app's own containers it does not.
    (site / "evil.pth").write_text(
        f"import pathlib; d = pathlib.Path({str(marks)!r}); d.is_dir() and "
        f"(d / 'ran-on-the-host').write_text('pwned')\n")
    first = platform.paas("push", "pth", "-p", str(app))
    assert first.returncode == 0, first.stdout + first.stderr
    second = platform.paas("push", "pth", "-p", str(app))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "reusing them from the build cache" in second.stdout
    assert "Dependencies ready" not in second.stdout  # the fast path: no staging container
    assert "served" in platform.router_get(platform.app_host("pth"), "/index.html").text
    assert list(marks.iterdir()) == []
    assert platform.paas("delete", "pth", "-f").returncode == 0


def test_a_yaml_alias_bomb_in_release_fails_the_build_at_once(platform: Sandbox,
                                                              tmp_path: Path) -> None:
    bp, app = tmp_path / "bomb-buildpack", tmp_path / "site"
    (bp / "bin").mkdir(parents=True)
    app.mkdir()
    (app / "index.txt").write_text("hi\n")
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 12)]
    bomb = "\n".join(lines) + "\ndefault_process_types:\n  web: *a11\n"
    (bp / "bin" / "compile").write_text("#!/bin/sh\necho compiled\n")
    (bp / "bin" / "release").write_text(f"#!/bin/sh\ncat <<'EOF'\n{bomb}EOF\n")
    for script in (bp / "bin").iterdir():
        script.chmod(0o755)
    started = time.monotonic()
    pushed = platform.paas("push", "bomb", "-p", str(app), "-b", str(bp))
    assert pushed.returncode == 1, pushed.stdout + pushed.stderr
    assert "bin/release printed YAML that cannot be used" in pushed.stderr
    assert "aliases (*name) are not allowed" in pushed.stderr
    assert time.monotonic() - started < 120
    assert "bomb" not in platform.paas("apps").stdout  # a first push that failed leaves none


def test_a_good_archive_with_links_and_folders_is_pushed(platform: Sandbox) -> None:
    """The same rules let through what an app folder holds: folders, a relative link."""
    data = archive(folder("./"), file("Procfile", b"web: python3 -m http.server $PORT\n"),
                   file("public/index.html", b"inside\n"), symlink("index.html",
                                                                   "public/index.html"))
    response = push_raw(platform, "linked", data)
    assert response.status_code == 201, response.text
    assert platform.paas("delete", "linked", "-f").returncode == 0
