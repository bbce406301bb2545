"""The built-in buildpacks, detected in order. Each knows how to recognise one kind of app.

Detection runs on the stager host against the unpacked package (a pure look at files);
compilation runs inside a throw-away container on the build stack, through the
Heroku/Cloud Foundry v2 contract: ``bin/compile BUILD_DIR CACHE_DIR ENV_DIR``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from buildpacks.errors import NoBuildpack


@dataclass(frozen=True)
class Buildpack:
    name: str
    # Files at the app's root, any one of which means "mine".
    markers: tuple[str, ...]
    describe: str

    def detect(self, app_dir: Path) -> bool:
        return any((app_dir / marker).is_file() for marker in self.markers)

    @property
    def folder(self) -> Traversable:
        return resources.files("buildpacks") / "builtin" / self.name


PYTHON = Buildpack(
    name="python",
    markers=("requirements.txt", "pyproject.toml", "setup.py", "Pipfile", "Pipfile.lock"),
    describe="a Python app needs requirements.txt, pyproject.toml, setup.py or a Pipfile "
             "at its root",
)
NODE = Buildpack(
    name="node",
    markers=("package.json",),
    describe="a Node.js app needs package.json",
)
STATIC = Buildpack(
    name="static",
    markers=("index.html", "Staticfile"),
    describe="a static site needs index.html or a Staticfile",
)
PROCFILE = Buildpack(
    name="procfile",
    markers=("Procfile",),
    describe="any other app needs a Procfile saying how to start it",
)

# Detection order: the first whose marker is at the app's root wins, so a Procfile alone
# means "procfile" while a Python or Node.js app with a Procfile stays Python or Node.js.
BUILTIN: tuple[Buildpack, ...] = (PYTHON, NODE, STATIC, PROCFILE)


def by_name(name: str) -> Buildpack:
    for bp in BUILTIN:
        if bp.name == name:
            return bp
    known = ", ".join(bp.name for bp in BUILTIN)
    raise NoBuildpack(f"there is no buildpack named {name!r}: the built-in ones are {known}.")


def detect(app_dir: Path, requested: str | None = None) -> Buildpack:
    if requested:
        return by_name(requested)
    for bp in BUILTIN:
        if bp.detect(app_dir):
            return bp
    hints = "; ".join(bp.describe for bp in BUILTIN)
    raise NoBuildpack(f"no buildpack recognises this app ({hints}): add one of those files, "
                      "or push the right folder with -p PATH.")
