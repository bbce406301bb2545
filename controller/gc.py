"""Garbage collection of droplets, layers, images, packages and buildpack uploads.

Every push leaves a package, a droplet (its manifest, the app part and layer tarballs) and a
Docker image behind; nothing ever removed them. :func:`plan` decides, as a pure function of
what exists and what is in use, what may go; :func:`collect` reads the database, the
blobstore and the Docker engine, and removes what the plan names. ``paas-admin gc`` runs it.

Kept, whatever their age:

- the droplets of each app's last ``gc_keep_releases`` releases, of its current release and
  of any release still deploying (so ``paas rollback`` works within that window), with their
  app parts, layers, and the images tagged for them and their layers;
- each app's last package and the buildpack uploaded with its last build (``paas restage``
  stages them again), and the registered buildpacks;
- for an app with a build in progress, every layer and image of that app (the build may be
  reusing them), and anything younger than ``gc_min_age_seconds`` (longer than a build):
  a build's blobs and image exist before its droplet's row does;
- images any container of the platform was made from (running instances included): the
  Docker engine refuses to remove those too.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from contracts.blobstore import BUILDPACKS, DROPLETS, LAYERS, PACKAGES, UPLOADS, layer_key
from contracts.labels import LABEL_APP_GUID, LABEL_PLATFORM
from contracts.settings import Settings
from controller.blobstore import Blobstore
from controller.models import (
    App,
    Build,
    BuildState,
    Droplet,
    Package,
    RegisteredBuildpack,
    Release,
    ReleaseStatus,
)

if TYPE_CHECKING:
    import docker

log = logging.getLogger("paas.gc")

# Blobstore folders the collector looks in (resources/, the per-team file cache, is not one).
COLLECTED = tuple(f"{folder}/" for folder in (DROPLETS, LAYERS, PACKAGES, BUILDPACKS, UPLOADS))
DROPLET_IMAGE, LAYER_IMAGE = "paas/droplet:", "paas/layer:"


@dataclass(frozen=True)
class DropletUse:
    id: int
    blobs: tuple[str, ...]  # its manifest, app part and layer tarballs
    image: str  # the image tag made for it


@dataclass(frozen=True)
class AppUse:
    guid: str
    # (version, droplet id, status) of every release of the app
    releases: tuple[tuple[int, int, str], ...]
    current_droplet: int | None
    building: bool
    last_package: str | None  # blob key
    last_buildpack: str | None  # blob key uploaded with the last build


@dataclass(frozen=True)
class Image:
    tag: str
    id: str
    app_guid: str  # from its label ("" when none)
    age: float  # seconds since it was made


@dataclass
class Plan:
    blobs: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # droplet images first, then layers
    droplets: list[int] = field(default_factory=list)  # ids of droplets losing blobs or image

    def __bool__(self) -> bool:
        return bool(self.blobs or self.images)


def plan(*, blobs: dict[str, float], images: Iterable[Image], in_use_images: set[str],
         droplets: Iterable[DropletUse], apps: Iterable[AppUse], keep_buildpacks: set[str],
         keep_releases: int, grace: float, buildpacks_known: bool = True) -> Plan:
    """What to remove. ``blobs``: blob key -> age in seconds; ``in_use_images``: the ids of
    images containers were made from; ``buildpacks_known`` False when the builds' uploaded
    buildpacks could not be read (then none is removed). The rest is described in the
    module's docstring."""
    apps = list(apps)
    by_id = {d.id: d for d in droplets}
    kept_droplets: set[int] = set()
    kept_blobs = set(keep_buildpacks)
    building = {a.guid for a in apps if a.building}
    for app in apps:
        newest = sorted(app.releases, reverse=True)
        kept_droplets |= {droplet for _v, droplet, _s in newest[:max(1, keep_releases)]}
        kept_droplets |= {d for _v, d, status in newest if status == ReleaseStatus.DEPLOYING}
        if app.current_droplet is not None:
            kept_droplets.add(app.current_droplet)
        kept_blobs |= {k for k in (app.last_package, app.last_buildpack) if k}
    kept_images: set[str] = set()
    for droplet_id in kept_droplets:
        droplet = by_id.get(droplet_id)
        if droplet is None:
            continue
        kept_blobs.update(droplet.blobs)
        kept_images.add(droplet.image)
        kept_images |= {LAYER_IMAGE + layer_key(b) for b in droplet.blobs
                        if b.startswith(f"{LAYERS}/")}

    def building_layer(key: str) -> bool:
        return any(f"-{guid}-" in key for guid in building)

    gone_blobs = sorted(
        key for key, age in blobs.items()
        if key.startswith(COLLECTED) and key not in kept_blobs and age > grace
        and (buildpacks_known or not key.startswith(f"{BUILDPACKS}/"))
        and not (key.startswith(f"{LAYERS}/") and building_layer(layer_key(key))))
    gone_images = [
        image.tag for image in images
        if image.tag.startswith((DROPLET_IMAGE, LAYER_IMAGE)) and image.tag not in kept_images
        and image.id not in in_use_images and image.age > grace
        and image.app_guid not in building
        and not (image.tag.startswith(LAYER_IMAGE) and building_layer(image.tag))]
    # Droplet images stand on layer images: remove them first.
    gone_images.sort(key=lambda tag: (not tag.startswith(DROPLET_IMAGE), tag))
    gone = {*gone_blobs, *gone_images}
    broken = sorted(d.id for d in by_id.values()
                    if d.image and (d.image in gone or gone.intersection(d.blobs)))
    return Plan(gone_blobs, gone_images, broken)


# -- the edge: what exists, what is in use, removing ------------------------------------------
def _blob_ages(store: Blobstore, now: float) -> dict[str, float]:
    ages: dict[str, float] = {}
    for folder in COLLECTED:
        root = store.root / folder
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            if path.is_file() and not path.name.startswith("."):  # temp files in writing
                ages[str(path.relative_to(store.root))] = now - path.stat().st_mtime
    return ages


def _droplet_blobs(store: Blobstore, droplet: Droplet) -> tuple[str, ...]:
    """The manifest's own key, its app part and its layers (only the manifest if it cannot be
    read: then the rest is unknown and, unreferenced, collected once old)."""
    keys = [droplet.blob_path] if droplet.blob_path else []
    try:
        manifest = json.loads(store.path(droplet.blob_path).read_text())
        keys.append(manifest["app"])
        keys.extend(layer["blob"] for layer in manifest.get("layers", []))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return tuple(keys)


def _uses(session: Session, store: Blobstore,
          ) -> tuple[list[DropletUse], list[AppUse], set[str], bool]:
    droplets = [DropletUse(d.id, _droplet_blobs(store, d), d.image)
                for d in session.scalars(select(Droplet).where(Droplet.image != ""))]
    releases: dict[int, list[tuple[int, int, str]]] = {}
    # Columns, not rows: a release's env is sealed, and the collector needs none of it.
    for app_id, version, droplet_id, status in session.execute(select(
            Release.app_id, Release.version, Release.droplet_id, Release.status)):
        releases.setdefault(app_id, []).append((version, droplet_id, status))
    apps, buildpacks_known = [], True
    for app in session.execute(select(App.id, App.guid, App.release_id)):
        current = session.scalar(select(Release.droplet_id).where(Release.id == app.release_id))
        package = session.scalar(select(Package).where(Package.app_id == app.id)
                                 .order_by(Package.id.desc()))
        building = session.scalar(select(Build.id).where(
            Build.app_id == app.id, Build.state == BuildState.STAGING)) is not None
        try:
            last = session.scalar(select(Build.requested).where(Build.app_id == app.id)
                                  .order_by(Build.id.desc()))
            uploaded = (last or {}).get("buildpack_blob")
        except Exception as e:
            log.warning("gc: the builds' buildpack uploads cannot be read (%s): none is "
                        "collected", e)
            uploaded, buildpacks_known = None, False
        apps.append(AppUse(
            guid=app.guid, releases=tuple(releases.get(app.id, ())),
            current_droplet=current, building=building,
            last_package=package.blob_path if package else None, last_buildpack=uploaded))
    registered = {b.blob_path for b in session.scalars(select(RegisteredBuildpack))}
    return droplets, apps, registered, buildpacks_known


def _images(docker_client: docker.DockerClient, platform_id: str, now: float,
            ) -> tuple[list[Image], set[str]]:
    label = {"label": f"{LABEL_PLATFORM}={platform_id}"}
    images = []
    for image in docker_client.images.list(filters=label):
        made = image.attrs.get("Created", "")
        age = now - _epoch(made) if made else 0.0
        guid = (image.labels or {}).get(LABEL_APP_GUID, "")
        images.extend(Image(tag, image.id, guid, age) for tag in image.tags)
    in_use = {c.attrs.get("Image", "") for c in
              docker_client.containers.list(all=True, ignore_removed=True)}
    return images, in_use


def _epoch(text: str) -> float:
    """Docker's RFC 3339 time (nanoseconds, Z) as epoch seconds."""
    import datetime as dt

    head, _, rest = text.partition(".")
    stamp = dt.datetime.strptime(head.rstrip("Z"), "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=dt.UTC)
    fraction = float("0." + "".join(ch for ch in rest if ch.isdigit()) or 0)
    return stamp.timestamp() + fraction


@dataclass
class Collected:
    blobs: list[str]
    bytes: int
    images: list[str]
    kept_images: list[str]  # the engine refused (in use by a container, or a child image)


def collect(settings: Settings, session: Session, store: Blobstore,
            docker_client: docker.DockerClient, keep_releases: int | None = None,
            dry_run: bool = False) -> Collected:
    """Remove what :func:`plan` names; with ``dry_run`` only say what."""
    import docker.errors

    now = time.time()
    droplets, apps, registered, buildpacks_known = _uses(session, store)
    images, in_use = _images(docker_client, settings.platform_id, now)
    chosen = plan(blobs=_blob_ages(store, now), images=images, in_use_images=in_use,
                  droplets=droplets, apps=apps, keep_buildpacks=registered,
                  keep_releases=settings.gc_keep_releases if keep_releases is None
                  else keep_releases,
                  grace=settings.gc_min_age_seconds, buildpacks_known=buildpacks_known)
    done = Collected([], 0, [], [])
    for key in chosen.blobs:
        path = store.path(key)
        try:
            size = path.stat().st_size
            if not dry_run:
                path.unlink()
        except FileNotFoundError:
            continue
        done.blobs.append(key)
        done.bytes += size
    for tag in chosen.images:
        try:
            if not dry_run:
                docker_client.images.remove(tag, noprune=False)
            done.images.append(tag)
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError as e:  # in use, or a child stands on it
            log.info("gc: kept image %s: %s", tag, e.explanation or e)
            done.kept_images.append(tag)
    if chosen.droplets and not dry_run:
        # What they stood on is gone: no rollback may go back to them (controller.api).
        session.execute(update(Droplet).where(Droplet.id.in_(chosen.droplets)).values(image=""))
        session.commit()
    log.info("gc: removed %d blobs (%d bytes) and %d images", len(done.blobs), done.bytes,
             len(done.images))
    return done


def run_every(settings: Settings, sessions: sessionmaker, stop: threading.Event,
              active: Callable[[], bool]) -> None:
    """Collect every ``gc_interval_seconds`` while ``active()`` (the health manager holding
    its lock), until ``stop``; in a thread of its own, so a slow engine delays no tick."""
    import docker

    store = Blobstore(settings.blobstore_dir)
    while not stop.wait(settings.gc_interval_seconds):
        try:
            if not active():
                continue
            client = docker.from_env(timeout=120)
            try:
                with sessions() as session:
                    collect(settings, session, store, client)
            finally:
                client.close()
        except Exception:
            log.exception("gc failed; trying again in %g s", settings.gc_interval_seconds)
