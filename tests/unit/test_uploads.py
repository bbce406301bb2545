"""Hostile uploads: every archive here is built in the test, refused by the check with a
sentence naming the entry, and refused by the extractor with nothing written outside its
target (a sentinel folder beside it stays as it was)."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import uploads
from buildpacks import custom
from buildpacks.errors import NoBuildpack, StagingError
from buildpacks.stager.staging import (
    MAX_RELEASE_BYTES,
    _bounded_lines,
    _copy_single_file,
    _default_process_types,
    _read_single_file,
    run_isolated,
)
from tests.hostile_archives import E, archive, cve_2025_4517, file, folder, hardlink, symlink
from uploads import Limits, UploadRefused

SMALL = Limits(max_entries=1000, max_bytes=1024**2)
Place = tuple[Path, Path]  # an empty target, and a sentinel folder beside it


@pytest.fixture
def place(tmp_path: Path) -> tuple[Path, Path]:
    """An empty target and, beside it, a sentinel folder with one file."""
    target, sentinel = tmp_path / "target", tmp_path / "sentinel"
    target.mkdir()
    sentinel.mkdir()
    (sentinel / "keep.txt").write_text("untouched")
    return target, sentinel


def everything(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` (links not followed) with its mode, size and mtime."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            st_ = full.lstat()
            found[str(full.relative_to(root))] = (st_.st_mode, st_.st_size, st_.st_mtime_ns)
    return found


def outside(tmp_path: Path, target: Path) -> dict[str, tuple[int, int, int]]:
    return {k: v for k, v in everything(tmp_path).items()
            if not (k == target.name or k.startswith(target.name + "/"))}


def refused_both(data: bytes, place: Place, words: str, limits: Limits = SMALL,
                 what: str = "package") -> str:
    """Both the check and the extractor refuse ``data`` with ``words``; nothing outside."""
    target, sentinel = place
    before = outside(target.parent, target)
    with pytest.raises(UploadRefused) as checked:
        uploads.check(io.BytesIO(data), limits, what)
    assert words in checked.value.message, checked.value.message
    with pytest.raises(UploadRefused) as extracted:
        uploads.extract(io.BytesIO(data), target, limits, what)
    assert extracted.value.message == checked.value.message
    assert outside(target.parent, target) == before
    assert (sentinel / "keep.txt").read_text() == "untouched"
    return checked.value.message


WHATS = ["package", "buildpack"]


# -- what is refused -----------------------------------------------------------------------
@pytest.mark.parametrize("what", WHATS)
def test_the_path_max_symlink_chain_is_refused(place: Place, what: str) -> None:
    data = cve_2025_4517("sentinel")
    if sys.version_info[:3] <= (3, 11, 12):  # the attack is real here: tarfile writes out
        victim = place[0].parent / "victim"
        (victim / "target").mkdir(parents=True)
        (victim / "sentinel").mkdir()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(victim / "target", filter="data")
        assert (victim / "sentinel" / "owned.txt").read_bytes() == b"written outside"
        shutil.rmtree(victim)
    message = refused_both(data, place, "longer than 1024 bytes", what=what)
    assert f"the {what} entry 'd" in message and "longer than 1024 bytes" in message
    # With names long enough for the shape, the link chain is what is refused.
    roomy = Limits(max_name_bytes=8192, max_entries=1000, max_bytes=1024**2)
    message = refused_both(data, place, "which is a symlink", roomy, what)
    assert f"the {what} entry 'a/b/c" in message


def test_a_link_through_a_path_longer_than_the_cap_is_refused(place: Place) -> None:
    parts = ["D" * 200 + str(i) for i in range(5)]
    data = archive(folder("/".join(parts)), symlink("k", "/".join(parts)),
                   symlink("s", "k/" + "x" * 200 + "/../../../../../../../sentinel"))
    message = refused_both(data, place, "symlink 's' points outside the app folder")
    assert "through a path longer than 1024 bytes" in message


def test_extraction_never_relies_on_tarfiles_filters(place: Place,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tarfile, "data_filter", lambda member, path: member)
    monkeypatch.setattr(tarfile, "fully_trusted_filter", lambda member, path: member)
    roomy = Limits(max_name_bytes=8192)
    refused_both(cve_2025_4517("sentinel"), place, "which is a symlink", roomy)


@pytest.mark.parametrize("what", WHATS)
@pytest.mark.parametrize("entries, words", [
    ([file("../escape.txt")], "entry '../escape.txt' points outside"),
    ([file("a/../../escape.txt")], "entry 'a/../../escape.txt' points outside"),
    ([file("/etc/passwd-x")], "entry '/etc/passwd-x' points outside"),
    ([symlink("up", "..")], "symlink 'up' points outside"),
    ([symlink("abs", "/etc")], "symlink 'abs' points outside"),
    ([folder("d"), symlink("d/l", ".."), symlink("x", "d/l/..")], "symlink 'x' points outside"),
    # Judged against every link, whatever their order: the kernel sees them all at the end.
    ([symlink("x", "d/l/.."), folder("d"), symlink("d/l", "..")], "symlink 'x' points outside"),
    ([symlink("l", "sub"), folder("sub"), file("l/x.txt")],
     "entry 'l/x.txt' lies under 'l', which is a symlink"),
    ([symlink("l", "."), symlink("l/m", ".."), file("l/m/x")], "lies under 'l'"),
    ([file("a"), file("a/b")], "entry 'a/b' lies under 'a', which is a file"),
    ([file("a/b"), symlink("a", "c")], "entry 'a' appears twice (as a folder and as a symlink)"),
    ([file("a"), file("./a")], "entry './a' appears twice"),
    ([hardlink("h", "../sentinel/keep.txt")], "entry 'h' is a hard link"),
    ([hardlink("h", "/etc/passwd")], "entry 'h' is a hard link"),
    ([hardlink("h", "later"), file("later")], "entry 'h' is a hard link"),
    ([symlink("s", "f"), file("f"), hardlink("h", "s")], "entry 'h' is a hard link"),
    ([E("dev", tarfile.CHRTYPE)], "entry 'dev' is a character device"),
    ([E("disk", tarfile.BLKTYPE)], "entry 'disk' is a block device"),
    ([E("pipe", tarfile.FIFOTYPE)], "entry 'pipe' is a FIFO"),
    ([file("suid", mode=0o4755)], "entry 'suid' has the setuid, setgid or sticky bit"),
    ([file("sgid", mode=0o2755)], "entry 'sgid' has the setuid"),
    ([folder("tmp", mode=0o1777)], "entry 'tmp' has the setuid"),
    ([file("x" * 256)], "has a part longer than 255 bytes"),
    ([file("/".join(["d"] * 65))], "is more than 64 folders deep"),
    ([file("/".join(["d" * 200] * 6))], "has a name longer than 1024 bytes"),
    ([symlink("l", "l")], "symlink 'l' points outside the"),
    ([symlink("a", "b"), symlink("b", "a")], "through more than 40 links"),
])
def test_hostile_entries_are_refused(place: Place, entries: list[E], words: str,
                                     what: str) -> None:
    refused_both(archive(*entries), place, words, what=what)


@pytest.mark.parametrize("what", WHATS)
def test_names_that_are_not_utf8_are_refused(place: Place, what: str) -> None:
    for fmt in (tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        data = archive(file("caf\udce9.txt"), fmt=fmt)
        message = refused_both(data, place, "is not valid UTF-8", what=what)
        assert "caf" in message
    refused_both(archive(symlink("l", "caf\udce9")), place, "link target that is not valid UTF-8")


@pytest.mark.parametrize("what", WHATS)
def test_a_gzip_bomb_stops_at_the_limit(place: Place, what: str) -> None:
    bomb = archive(file("zeros.bin", bytes(8 * 1024**2)))
    assert len(bomb) < 64 * 1024  # 8 MB of zeros in a few KB
    message = refused_both(bomb, place, "unpacks to more than 1 MiB (at 'zeros.bin')", what=what)
    assert message.endswith(".")


def test_a_bomb_of_many_entries_is_counted_as_decompressed(place: Place) -> None:
    # Sizes in the headers stay small; the bytes read are what is counted.
    entries = [file(f"f{i:04}", bytes(2000)) for i in range(900)]
    refused_both(archive(*entries), place, "unpacks to more than 1 MiB")


def test_a_bomb_at_the_real_limit_is_refused_before_decompressing(place: Place) -> None:
    info = tarfile.TarInfo("huge.bin")
    info.size = uploads.MAX_UNPACKED_BYTES + 1
    head = info.tobuf(tarfile.GNU_FORMAT)
    data = gzip.compress(head + bytes(4 * 1024**2))  # truncated: the header claims 4 GiB
    started = time.monotonic()
    refused_both(data, place, "unpacks to more than 4 GiB (at 'huge.bin')", Limits())
    assert time.monotonic() - started < 2


def test_a_huge_single_file_is_refused_by_its_header(place: Place) -> None:
    refused_both(archive(file("big.bin", bytes(2 * 1024**2))), place,
                 "the package unpacks to more than 1 MiB (at 'big.bin')")


def test_too_many_files_are_refused(place: Place) -> None:
    entries = [file(f"f/{i}", b"") for i in range(1001)]
    message = refused_both(archive(*entries), place, "has more than 1000 files (at 'f/1000')")
    assert ".paasignore" in message


def test_a_huge_extended_header_is_refused_before_it_is_read(place: Place) -> None:
    data = archive(file("x" * 100 + "/" + "y" * 100), fmt=tarfile.GNU_FORMAT)
    tiny = Limits(max_header_bytes=100)
    refused_both(data, place, "extended tar header of", tiny)


def test_garbage_is_refused_as_unreadable(place: Place) -> None:
    refused_both(b"not a gzip at all", place, "is not a readable .tar.gz")
    refused_both(archive(file("a", bytes(5000)))[:-40], place, "is not a readable .tar.gz")


# -- what is accepted, and how it is written ------------------------------------------------
def test_a_good_archive_unpacks_with_safe_modes_and_its_links(place: Place) -> None:
    target, _sentinel = place
    data = archive(folder("./"), file("bin/run", b"#!/bin/sh\n", 0o777), file("a.txt", mode=0o666),
                   folder("empty", 0o700), symlink("bin/again", "run"), hardlink("b.txt", "a.txt"),
                   symlink("up/top", ".."), file("up/x"),
                   file("node_modules/.bin/tool", b"t"), symlink("node_modules/t", ".bin/tool"))
    summary = uploads.check(io.BytesIO(data), SMALL)
    assert summary.entries == 10
    uploads.extract(io.BytesIO(data), target, SMALL)
    assert stat.S_IMODE((target / "bin" / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE((target / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((target / "empty").stat().st_mode) == 0o755
    assert os.readlink(target / "bin" / "again") == "run"
    assert (target / "b.txt").stat().st_ino == (target / "a.txt").stat().st_ino
    assert (target / "node_modules" / "t").read_bytes() == b"t"
    assert (target / "a.txt").stat().st_mtime == 1700000000


def test_the_extractor_never_writes_through_a_link_it_finds(place: Place) -> None:
    """The second wall: links already in the target (which the rules cannot see) are
    never followed."""
    target, sentinel = place
    os.symlink("../sentinel", target / "pre")
    for entries in ([file("pre/keep.txt", b"overwritten")], [file("pre", b"over")],
                    [folder("pre/sub")]):
        with pytest.raises(UploadRefused, match="entry 'pre"):
            uploads.extract(io.BytesIO(archive(*entries)), target)
    assert (sentinel / "keep.txt").read_text() == "untouched"
    assert sorted(p.name for p in sentinel.iterdir()) == ["keep.txt"]


def test_resource_cache_files_join_the_same_check() -> None:
    data = archive(file("app.py"))
    assert uploads.check(io.BytesIO(data), SMALL, extra=[("big.bin", 0o644, 10)]).entries == 2
    for extra, words in ([("app.py", 0o644, 1)], "appears twice"), \
            ([("s", 0o4755, 1)], "setuid"), ([("../x", 0o644, 1)], "points outside"), \
            ([("big", 0o644, 2 * 1024**2)], "unpacks to more than"):
        with pytest.raises(UploadRefused, match=words):
            uploads.check(io.BytesIO(data), SMALL, extra=extra)


# -- buildpacks ------------------------------------------------------------------------------
def test_a_buildpack_is_found_at_the_top_or_under_one_folder(tmp_path: Path) -> None:
    for i, entries in enumerate(([file("bin/compile", mode=0o755)],
                                 [file("bp-1.0/bin/compile", mode=0o755), file("bp-1.0/x")])):
        blob = tmp_path / f"bp{i}.tar.gz"
        blob.write_bytes(archive(*entries))
        bp = custom.unpack(blob, f"bp{i}", tmp_path / "work")
        assert (bp.folder / "bin" / "compile").is_file()
    blob = tmp_path / "none.tar.gz"
    blob.write_bytes(archive(file("a/bin/compile"), file("b/x")))
    with pytest.raises(NoBuildpack, match="has no bin/compile"):
        custom.unpack(blob, "none", tmp_path / "work")


def test_a_hostile_buildpack_is_refused_when_unpacked(tmp_path: Path) -> None:
    (tmp_path / "sentinel").mkdir()
    blob = tmp_path / "evil.tar.gz"
    blob.write_bytes(archive(file("bin/compile"), symlink("bin/out", "../../../sentinel"),
                             file("bin/out/x")))
    with pytest.raises(NoBuildpack, match="could not be unpacked: the buildpack entry 'bin/out/x'"):
        custom.unpack(blob, "evil", tmp_path / "work")
    assert list((tmp_path / "sentinel").iterdir()) == []


# -- the fast path runs nothing of the upload --------------------------------------------------
def _base_python() -> str:
    """An interpreter that reads user site-packages (a venv's does not)."""
    base = getattr(sys, "_base_executable", sys.executable)
    out = subprocess.run([base, "-c", "import site; print(site.ENABLE_USER_SITE)"],
                         capture_output=True, text=True)
    if out.stdout.strip() != "True":
        pytest.skip(f"{base} reads no user site-packages, so a .pth there proves nothing")
    return base


def test_a_pth_under_the_apps_home_does_not_run_on_the_host(tmp_path: Path) -> None:
    python = _base_python()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    app, marker = tmp_path / "app", tmp_path / "marker"
    site = app / ".local" / "lib" / version / "site-packages"
    site.mkdir(parents=True)
    (site / "evil.pth").write_text(f"import pathlib; pathlib.Path({str(marker)!r}).touch()\n")
    script = tmp_path / "script.py"
    script.write_text("import sys; print('ran', sys.argv[1])\n")
    # The attack works where HOME is the app folder and the interpreter is not isolated...
    subprocess.run([python, str(script), "x"], env={"HOME": str(app), "PATH": "/usr/bin"},
                   check=True, capture_output=True)
    assert marker.exists()
    marker.unlink()
    # ...and not the way the stager runs built-in buildpacks.
    ran = run_isolated(python, script, [str(app)], {"PYTHONPATH": str(site),
                                                    "PYTHONSTARTUP": str(site / "evil.pth")},
                       timeout=30, budget=1000)
    assert ran is not None and ran.code == 0 and ran.lines == [f"ran {app}"]
    assert not marker.exists()


def test_fast_path_output_is_bounded(tmp_path: Path) -> None:
    stream = io.BytesIO(b"".join(f"line {i}\n".encode() for i in range(10_000)))
    lines = _bounded_lines(stream, 1000)
    assert lines[0] == "line 0" and lines[-1] == "line 9999"
    assert len(lines) < 200 and "of output not shown" in lines[-21]
    script = tmp_path / "loud.py"
    script.write_text("import sys\nfor i in range(200000): print('x' * 100)\nsys.exit(3)\n")
    ran = run_isolated(sys.executable, script, [], {}, timeout=30, budget=10_000)
    assert ran.code == 3 and len(ran.lines) < 200
    slow = tmp_path / "slow.py"
    slow.write_text("import time; time.sleep(30)\n")
    started = time.monotonic()
    assert run_isolated(sys.executable, slow, [], {}, timeout=0.5, budget=100) is None
    assert time.monotonic() - started < 5


# -- what the staging container hands back -----------------------------------------------------
class _Container:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def get_archive(self, path: str) -> tuple[Iterator[bytes], dict]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(path.rsplit("/", 1)[1])
            info.size = len(self.files[path])
            tar.addfile(info, io.BytesIO(self.files[path]))
        data = buf.getvalue()
        return (data[i:i + 7000] for i in range(0, len(data), 7000)), {}


def test_container_files_are_streamed_with_a_cap(tmp_path: Path) -> None:
    container = _Container({"/tmp/paas/app.tar": bytes(300_000), "/tmp/paas/buildpack": b"py\n",
                            "/tmp/paas/release.yml": b"x" * 200_000})
    assert _read_single_file(container, "/tmp/paas/buildpack") == b"py\n"
    assert len(_read_single_file(container, "/tmp/paas/release.yml")) == 64 * 1024
    into = tmp_path / "app.tar"
    _copy_single_file(container, "/tmp/paas/app.tar", into, 1024**2, "the app part")
    assert into.read_bytes() == bytes(300_000)
    with pytest.raises(StagingError, match="the app part is larger than 0 MiB"):
        _copy_single_file(container, "/tmp/paas/app.tar", into, 1000, "the app part")


# -- release YAML ------------------------------------------------------------------------------
def test_a_yaml_alias_bomb_in_release_fails_quickly() -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb = ("\n".join(lines) + "\ndefault_process_types:\n  web: *a9\n").encode()
    started = time.monotonic()
    with pytest.raises(StagingError, match="aliases .* are not allowed"):
        _default_process_types(bomb, "evil")
    assert time.monotonic() - started < 1
    with pytest.raises(StagingError, match="printed more than 64 KiB"):
        _default_process_types(b"# " + b"x" * MAX_RELEASE_BYTES, "evil")
    with pytest.raises(StagingError, match="cannot be used"):
        _default_process_types(b"!!python/object:os.system {}", "evil")
    good = yaml.safe_dump({"default_process_types": {"web": "python3 app.py"}}).encode()
    assert _default_process_types(good, "python") == {"web": "python3 app.py"}


# -- property: whatever the archive, refused or written only inside ---------------------------
SAFE = st.sampled_from(["a", "b", "c" * 120])
HOSTILE = st.sampled_from(["..", ".", "", "/", "d\udcff"])
NAMES = st.lists(st.one_of(SAFE, SAFE, SAFE, SAFE, HOSTILE), min_size=1, max_size=4).map("/".join)
TARGETS = st.one_of(NAMES, NAMES, st.sampled_from(["../sentinel", "/tmp", "a/../..", "../../x",
                                                   "..", "../a", "a/..", "b/../a"]))
ENTRY = st.one_of(
    st.builds(file, NAMES, st.binary(max_size=20), st.sampled_from([0o644, 0o755, 0o4755])),
    st.builds(folder, NAMES),
    st.builds(symlink, NAMES, TARGETS),
    st.builds(hardlink, NAMES, TARGETS),
)
# Plain names, links whose targets climb: whether they stay inside depends on the others.
PLAIN = st.lists(SAFE, min_size=1, max_size=3).map("/".join)
CLIMB = st.lists(st.one_of(SAFE, st.just(".."), st.just("..")), min_size=1,
                 max_size=5).map("/".join)
LINKY = st.one_of(st.builds(file, PLAIN), st.builds(folder, PLAIN),
                  st.builds(symlink, PLAIN, CLIMB), st.builds(symlink, PLAIN, CLIMB),
                  st.builds(hardlink, PLAIN, PLAIN))
PROPERTY = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _refused_or_inside(root: Path, entries: list[E]) -> bool:
    """The property: check and extractor agree; refused, or everything written is inside
    the target and every path in it resolves inside. True when accepted."""
    target, sentinel = root / "target", root / "sentinel"
    target.mkdir()
    sentinel.mkdir()
    (sentinel / "keep.txt").write_text("untouched")
    data = archive(*entries, fmt=tarfile.GNU_FORMAT)
    before = outside(root, target)
    try:
        uploads.check(io.BytesIO(data), SMALL)
        checked = None
    except UploadRefused as e:
        checked = e.message
    try:
        uploads.extract(io.BytesIO(data), target, SMALL)
        extracted = None
    except UploadRefused as e:
        extracted = e.message
    assert checked == extracted  # one set of rules
    assert outside(root, target) == before
    assert (sentinel / "keep.txt").read_text() == "untouched"
    if checked is not None:
        return False
    real = os.path.realpath(target)
    for dirpath, dirnames, filenames in os.walk(target):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            resolved = os.path.realpath(full)
            assert resolved == real or resolved.startswith(real + os.sep), full
    return True


@PROPERTY
@given(entries=st.lists(ENTRY, max_size=12))
def test_any_archive_is_refused_or_stays_inside(tmp_path_factory: pytest.TempPathFactory,
                                                entries: list[E]) -> None:
    _refused_or_inside(tmp_path_factory.mktemp("prop"), entries)


@PROPERTY
@given(entries=st.lists(LINKY, max_size=10))
def test_archives_of_climbing_links_are_refused_or_stay_inside(
        tmp_path_factory: pytest.TempPathFactory, entries: list[E]) -> None:
    _refused_or_inside(tmp_path_factory.mktemp("links"), entries)
