"""Packing an app folder into the .tar.gz the controller stages."""

from __future__ import annotations

import fnmatch
import os
import tarfile
import tempfile
from pathlib import Path

ALWAYS_IGNORED = (".git", ".hg", ".svn", ".paasignore", ".cfignore", "__pycache__", ".venv",
                  ".paas-data")


def ignore_patterns(root: Path) -> list[str]:
    patterns = list(ALWAYS_IGNORED)
    for name in (".paasignore", ".cfignore"):
        path = root / name
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    patterns.append(line.rstrip("/").lstrip("/"))
    return patterns


def ignored(relative: str, patterns: list[str]) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(name, p) for p in patterns)


def pack(root: Path) -> tuple[Path, int]:
    """Write the folder (less ignored files) to a temporary .tar.gz; return it and a count."""
    patterns = ignore_patterns(root)
    fd, name = tempfile.mkstemp(prefix="paas-push-", suffix=".tar.gz")
    os.close(fd)
    count = 0
    with tarfile.open(name, "w:gz", compresslevel=3) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root)
            rel_dir = "" if rel_dir == "." else rel_dir
            dirnames[:] = sorted(d for d in dirnames
                                 if not ignored(os.path.join(rel_dir, d), patterns))
            for filename in sorted(filenames):
                rel = os.path.join(rel_dir, filename)
                if ignored(rel, patterns):
                    continue
                tar.add(os.path.join(dirpath, filename), arcname=rel, recursive=False)
                count += 1
    return Path(name), count
