"""Checks on uploaded app packages: a gzip'd tar whose every entry stays inside the app."""

from __future__ import annotations

import posixpath
import tarfile
from pathlib import Path

from controller.errors import InvalidInput

MAX_FILES = 100_000
MAX_UNPACKED_BYTES = 4 * 1024**3


def check_archive(path: Path, max_files: int = MAX_FILES,
                  max_bytes: int = MAX_UNPACKED_BYTES) -> int:
    """Return the number of entries, or raise InvalidInput naming the offending file."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            count = total = 0
            for member in tar:
                count += 1
                total += member.size
                if total > max_bytes:
                    raise InvalidInput(
                        f"the package unpacks to more than {max_bytes // 1024**3} GiB (at "
                        f"{member.name!r}): add what need not be deployed to .paasignore.")
                if count > max_files:
                    raise InvalidInput(
                        f"the package has more than {max_files} files: add what need not be "
                        "deployed to .paasignore."
                    )
                _check_member(member)
            return count
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InvalidInput(
            f"the uploaded package is not a readable .tar.gz ({e}): push again with the paas CLI."
        ) from e


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    normal = posixpath.normpath(name)
    if name.startswith("/") or normal == ".." or normal.startswith("../"):
        raise InvalidInput(f"the package entry {name!r} points outside the app folder.")
    if member.issym() or member.islnk():
        target = member.linkname
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(normal), target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise InvalidInput(
                f"the symlink {name!r} points outside the app folder (to {target!r}): "
                "replace it with the file itself."
            )
    elif not (member.isfile() or member.isdir()):
        raise InvalidInput(
            f"the package entry {name!r} is not a regular file, folder or symlink: remove it."
        )


def check_buildpack(path: Path) -> None:
    """A buildpack tarball: safe entries and a bin/compile (possibly under one top folder)."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            names = []
            for member in tar:
                _check_member(member)
                names.append(posixpath.normpath(member.name))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InvalidInput(f"the buildpack is not a readable .tar.gz ({e}).") from e
    tops = {n.split("/", 1)[0] for n in names}
    compile_at = {"bin/compile"} | {f"{top}/bin/compile" for top in tops}
    if not compile_at & set(names):
        raise InvalidInput("the buildpack has no bin/compile: a buildpack follows the "
                           "Heroku/Cloud Foundry contract (bin/detect, bin/compile, bin/release).")
