"""The stack images' names: tagged by a digest of the recipe so a recipe change rebuilds them."""

from __future__ import annotations

import hashlib
from importlib import resources

RUN_REPO = "paas/stack-run"
BUILD_REPO = "paas/stack-build"


def recipe_digest() -> str:
    digest = hashlib.sha256()
    folder = resources.files("contracts") / "stack_recipe"
    for name in sorted(p.name for p in folder.iterdir() if p.is_file()):
        digest.update(name.encode() + b"\0" + (folder / name).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def run_image(configured: str = "") -> str:
    return configured or f"{RUN_REPO}:{recipe_digest()}"


def build_image(configured: str = "") -> str:
    return configured or f"{BUILD_REPO}:{recipe_digest()}"
