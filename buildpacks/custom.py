"""Buildpacks from outside: uploaded with a push (-b PATH) or registered by an admin.

They follow the Heroku/Cloud Foundry v2 contract: ``bin/detect BUILD_DIR`` (exit 0 means
"mine"), ``bin/compile BUILD_DIR CACHE_DIR ENV_DIR``, ``bin/release BUILD_DIR`` printing YAML
with ``default_process_types``. They come as .tar.gz files in the blobstore, unpacked for
the staging container; a tarball whose files sit under one top folder is unpacked from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import uploads
from buildpacks.errors import NoBuildpack


@dataclass(frozen=True)
class CustomBuildpack:
    name: str
    folder: Path  # holds bin/compile

    @property
    def custom(self) -> bool:
        return True


def unpack(blob: Path, name: str, into: Path) -> CustomBuildpack:
    """Unpack with the upload rules (never through a link) into ``into/name``."""
    target = into / name
    target.mkdir(parents=True)
    try:
        summary = uploads.extract(blob, target, what="buildpack")
    except uploads.UploadRefused as e:
        raise NoBuildpack(f"the buildpack {name!r} could not be unpacked: {e.message}") from e
    except OSError as e:
        raise NoBuildpack(f"the buildpack {name!r} could not be unpacked ({e}): push it "
                          "again.") from e
    top = uploads.buildpack_root(summary.kinds)
    if top is None:
        raise NoBuildpack(f"the buildpack {name!r} has no bin/compile: it must follow the "
                          "Heroku/Cloud Foundry contract (bin/detect, bin/compile, bin/release).")
    return CustomBuildpack(name=name, folder=target / top if top else target)
