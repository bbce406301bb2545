"""Packing an app folder: which files go (ignore rules), their fingerprints, the tarball.

Ignore rules are gitignore syntax from ``.paasignore`` (and ``.cfignore`` when present), on
top of the defaults. Files of ``RESOURCE_MIN`` bytes or more are fingerprinted so the
controller's resource cache can spare uploading the ones it already has.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pathspec

from contracts.messages import RESOURCE_MIN_BYTES

DEFAULT_IGNORES = [".git/", ".hg/", ".svn/", "/.paasignore", "/.cfignore", "/manifest.yml",
                   "__pycache__/", "/.venv/", "/.paas-data/", ".DS_Store"]
RESOURCE_MIN = RESOURCE_MIN_BYTES


@dataclass(frozen=True)
class Entry:
    path: str  # relative, with forward slashes
    source: Path
    size: int
    mode: int
    link: str | None = None  # the target, for symlinks
    sha1: str | None = None  # for regular files of RESOURCE_MIN bytes or more


def ignore_spec(root: Path) -> pathspec.PathSpec:
    lines = list(DEFAULT_IGNORES)
    if (root / "package.json").is_file():
        lines.append("/node_modules/")
    for name in (".paasignore", ".cfignore"):
        path = root / name
        if path.is_file():
            lines += path.read_text(errors="replace").splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines)


def collect(root: Path) -> list[Entry]:
    """Every file and symlink that goes into the package, sorted by path."""
    spec = ignore_spec(root)
    entries: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        keep = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if spec.match_file(rel + "/"):
                continue
            full = Path(dirpath, d)
            if full.is_symlink():  # not followed: kept as a link (the controller checks it)
                entries.append(_entry(rel, full))
            else:
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if not spec.match_file(rel):
                entries.append(_entry(rel, Path(dirpath, name)))
    entries.sort(key=lambda e: e.path)
    return entries


def _entry(rel: str, full: Path) -> Entry:
    st = full.lstat()
    if stat.S_ISLNK(st.st_mode):
        return Entry(rel, full, 0, 0o777, link=os.readlink(full))
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"{rel} is not a regular file, folder or symlink: remove it or add it "
                      "to .paasignore")
    sha1 = _sha1(full) if st.st_size >= RESOURCE_MIN else None
    return Entry(rel, full, st.st_size, stat.S_IMODE(st.st_mode), sha1=sha1)


def _sha1(path: Path) -> str:
    digest = hashlib.sha1(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def pack(entries: list[Entry], skip: set[str] = frozenset()) -> Path:
    """A .tar.gz of ``entries`` less the files whose sha1 is in ``skip``."""
    fd, name = tempfile.mkstemp(prefix="paas-push-", suffix=".tar.gz")
    os.close(fd)
    try:
        with tarfile.open(name, "w:gz", compresslevel=3) as tar:
            for entry in entries:
                if entry.sha1 is not None and entry.sha1 in skip:
                    continue
                info = tar.gettarinfo(str(entry.source), arcname=entry.path)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isfile():
                    with entry.source.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)
