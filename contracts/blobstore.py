"""The blobstore's layout, shared by the controller and the stager: where each kind of blob
lives, and the check that a key stays inside the store.

A blob's key is a relative path under the store's root folder (``settings.blobstore_dir``,
which both processes see); the database and the messages between processes hold keys.

=====================================  =========================================  ==========
key                                    what                                       written by
=====================================  =========================================  ==========
``packages/<package guid>.tar.gz``     an app's package, as staged                controller
``uploads/<package guid>.tar.gz``      an upload, before cached files join it     controller
``buildpacks/<sha256>.tar.gz``         a buildpack registered, or pushed with -b  controller
``droplets/<sha256>.tar``              a droplet's app part                       stager
``droplets/<sha256>.json``             a droplet's manifest: app part and layers  stager
``layers/<key>.tar``                   a droplet layer, shared by its key         stager
``resources/<team>/<ab>/<sha1>``       a team's cache of pushed files             controller
=====================================  =========================================  ==========

A blob being written is a dot file beside its place (``.upload-...``, ``.app-...``), renamed
into it once whole. Layers are an app's build cache as far as the store holds it (their keys
start with the stack and the app's guid); the rest of it, what a buildpack keeps in
``/cache``, is a Docker volume per app (:func:`build_cache_volume`).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

PACKAGES = "packages"
UPLOADS = "uploads"
BUILDPACKS = "buildpacks"
DROPLETS = "droplets"
LAYERS = "layers"
RESOURCES = "resources"


class BlobKeyError(ValueError):
    """A key that would reach outside the blobstore, or is no path at all."""


def package(package_guid: str) -> str:
    return f"{PACKAGES}/{package_guid}.tar.gz"


def upload(package_guid: str) -> str:
    return f"{UPLOADS}/{package_guid}.tar.gz"


def buildpack(digest: str) -> str:
    return f"{BUILDPACKS}/{digest}.tar.gz"


def incoming_buildpack(token: str) -> str:
    """Where an uploaded buildpack waits while it is received and checked."""
    return f"{BUILDPACKS}/.incoming-{token}"


def droplet_part(digest: str) -> str:
    """A droplet's app part, named by the sha256 of its bytes."""
    return f"{DROPLETS}/{digest}.tar"


def droplet_manifest(digest: str) -> str:
    """A droplet's manifest, named by the sha256 of the manifest (the droplet's digest)."""
    return f"{DROPLETS}/{digest}.json"


def layer(key: str) -> str:
    return f"{LAYERS}/{key}.tar"


def layer_key(blob: str) -> str:
    """``layers/<key>.tar`` -> ``<key>``."""
    return blob[len(LAYERS) + 1:-len(".tar")]


def team_resources(team_id: int) -> str:
    return f"{RESOURCES}/{team_id}"


def resource(team_id: int, sha1: str) -> str:
    return f"{RESOURCES}/{team_id}/{sha1[:2]}/{sha1}"


def build_cache_volume(platform_id: str, app_guid: str) -> str:
    """The Docker volume that is an app's ``/cache`` while it stages (not in the store)."""
    return f"paas-cache-{platform_id}-{app_guid}"


def check_key(key: str) -> str:
    """``key`` if it names something inside a store: a relative path, no ``..`` in it, not
    empty; else :class:`BlobKeyError`. (Links are followed by :meth:`BlobRoot.path`.)"""
    if not isinstance(key, str) or "\0" in key:
        raise BlobKeyError(f"blob key {key!r} is not a path: keys are relative paths "
                           "such as 'packages/<guid>.tar.gz'.")
    parts = PurePosixPath(key).parts
    if key.startswith("/") or ".." in parts or not [p for p in parts if p != "."]:
        raise BlobKeyError(f"blob key {key!r} escapes the blobstore: keys are relative "
                           "paths inside it, such as 'packages/<guid>.tar.gz'.")
    return key


class BlobRoot:
    """A blobstore's root folder: the paths of its keys, each checked to stay inside."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """The file of ``key``, symbolic links resolved: a key that is not a relative path
        inside the store, or that a link takes outside it, is a :class:`BlobKeyError`."""
        target = (self.root / check_key(key)).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise BlobKeyError(f"blob key {key!r} escapes the blobstore through a "
                               "symbolic link: only the store's own files may be read or "
                               "written.")
        return target
