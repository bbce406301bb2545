"""The collector's decision: what exists and what is in use in, what to remove out."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy.orm import sessionmaker

from contracts.settings import load
from controller.gc import AppUse, DropletUse, Image, Plan, plan

OLD, GRACE = 10_000.0, 960.0
GUID = "6f1c2a9e-0000-4000-8000-000000000001"
LAYER = f"layers/abc123-{GUID}-deps.tar"


def droplet(n: int, layers: tuple[str, ...] = ()) -> DropletUse:
    return DropletUse(n, (f"droplets/m{n}.json", f"droplets/a{n}.tar", *layers),
                      f"paas/droplet:d{n}")


def app(versions: int, current: int | None = None, building: bool = False,
        statuses: dict[int, str] | None = None) -> AppUse:
    """An app whose release v uses droplet v."""
    statuses = statuses or {}
    return AppUse(GUID, tuple((v, v, statuses.get(v, "SUPERSEDED"))
                              for v in range(1, versions + 1)),
                  current_droplet=versions if current is None else current, building=building,
                  last_package="packages/p-last.tar.gz", last_buildpack=None)


def everything(droplets: list[DropletUse]) -> tuple[dict[str, float], list[Image]]:
    blobs = {b: OLD for d in droplets for b in d.blobs}
    blobs.update({"packages/p-old.tar.gz": OLD, "packages/p-last.tar.gz": OLD,
                  "buildpacks/reg.tar.gz": OLD, "buildpacks/gone.tar.gz": OLD,
                  "resources/1/abc": OLD})
    images = [Image(d.image, f"sha256:{d.id}", GUID, OLD) for d in droplets]
    images.append(Image(f"paas/layer:abc123-{GUID}-deps", "sha256:layer", GUID, OLD))
    return blobs, images


def decide(apps: list[AppUse], droplets: list[DropletUse], keep: int = 2,
           in_use: set[str] | None = None, **changes: object) -> Plan:
    blobs, images = everything(droplets)
    args = dict(blobs=blobs, images=images, in_use_images=in_use or set(), droplets=droplets,
                apps=apps, keep_buildpacks={"buildpacks/reg.tar.gz"}, keep_releases=keep,
                grace=GRACE)
    args.update(changes)
    return plan(**args)  # type: ignore[arg-type]


def droplet_images(chosen: Plan) -> list[str]:
    return [tag for tag in chosen.images if tag.startswith("paas/droplet:")]


def test_releases_past_the_window_lose_their_droplets_blobs_and_images() -> None:
    droplets = [droplet(n, (LAYER,)) for n in (1, 2, 3)]
    chosen = decide([app(3)], droplets)
    assert chosen.blobs == ["buildpacks/gone.tar.gz", "droplets/a1.tar", "droplets/m1.json",
                            "packages/p-old.tar.gz"]
    assert chosen.images == ["paas/droplet:d1"]  # the layer is still used by 2 and 3
    assert chosen.droplets == [1]  # marked: no rollback goes back to it


def test_the_current_release_is_kept_even_past_the_window() -> None:
    droplets = [droplet(n) for n in (1, 2, 3, 4)]
    chosen = decide([app(4, current=1)], droplets, keep=1)  # rolled back to release 1
    assert "paas/droplet:d1" not in chosen.images and "droplets/a1.tar" not in chosen.blobs
    assert droplet_images(chosen) == ["paas/droplet:d2", "paas/droplet:d3"]


def test_a_deploying_release_is_kept() -> None:
    droplets = [droplet(n) for n in (1, 2, 3)]
    chosen = decide([app(3, current=1, statuses={2: "DEPLOYING"})], droplets, keep=1)
    assert droplet_images(chosen) == []


def test_an_image_a_container_uses_is_kept() -> None:
    droplets = [droplet(n) for n in (1, 2, 3)]
    chosen = decide([app(3)], droplets, keep=1, in_use={"sha256:1"})
    assert droplet_images(chosen) == ["paas/droplet:d2"]


def test_a_build_in_progress_keeps_the_apps_layers_and_images_and_young_blobs() -> None:
    droplets = [droplet(1, (LAYER,)), droplet(2)]
    blobs, images = everything(droplets)
    blobs["droplets/being-written.tar"] = 5.0  # younger than the grace: a build's
    chosen = decide([app(2, building=True)], droplets, keep=1, blobs=blobs, images=images)
    assert LAYER not in chosen.blobs and "droplets/being-written.tar" not in chosen.blobs
    assert chosen.images == []  # the app's images all stay while it builds
    assert "droplets/a1.tar" in chosen.blobs  # its old droplet's app part does go


def test_unused_layers_go_after_the_droplet_images_standing_on_them() -> None:
    droplets = [droplet(1, (LAYER,)), droplet(2)]
    chosen = decide([app(2)], droplets, keep=1)
    assert LAYER in chosen.blobs
    assert chosen.images == ["paas/droplet:d1", f"paas/layer:abc123-{GUID}-deps"]


def test_a_deleted_apps_droplets_go_and_shared_droplets_stay() -> None:
    shared = droplet(7)
    other = AppUse("other", ((1, 7, "DEPLOYED"),), 7, False, None, None)
    chosen = decide([other], [droplet(1), shared], keep=1)  # app GUID was deleted
    assert "droplets/a1.tar" in chosen.blobs and "paas/droplet:d1" in chosen.images
    assert "droplets/a7.tar" not in chosen.blobs and "paas/droplet:d7" not in chosen.images
    assert chosen.droplets == [1]
    assert "packages/p-last.tar.gz" in chosen.blobs  # no app keeps it any more


def test_the_last_package_registered_and_last_uploaded_buildpacks_stay() -> None:
    uploading = AppUse(GUID, ((1, 1, "DEPLOYED"),), 1, False, "packages/p-last.tar.gz",
                       "buildpacks/gone.tar.gz")
    chosen = decide([uploading], [droplet(1)])
    assert chosen.blobs == ["packages/p-old.tar.gz"]
    unknown = decide([app(1)], [droplet(1)], buildpacks_known=False)
    assert chosen.blobs == unknown.blobs  # unreadable: no upload is removed


def test_nothing_outside_the_collected_folders_and_nothing_young_goes() -> None:
    droplets = [droplet(1), droplet(2)]
    blobs, images = everything(droplets)
    young = {k: 5.0 for k in blobs}
    chosen = decide([app(2)], droplets, keep=1, blobs=young,
                    images=[Image(i.tag, i.id, i.app_guid, 5.0) for i in images])
    assert not chosen
    assert all(not b.startswith("resources/") for b in decide([app(2)], droplets).blobs)


def test_the_health_manager_collects_every_interval_only_while_active(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import docker

    from controller import gc

    class Engine:
        def close(self) -> None:
            pass

    rounds: list[bool] = []
    stop = threading.Event()
    active = iter([False, True, True])

    def collect(*_: object) -> None:
        rounds.append(True)
        if len(rounds) == 2:
            stop.set()

    monkeypatch.setattr(gc, "collect", collect)
    monkeypatch.setattr(docker, "from_env", lambda **_: Engine())
    settings = load(env={}, data_dir=str(tmp_path), gc_interval_seconds=0.01)
    gc.run_every(settings, sessionmaker(), stop, lambda: next(active))
    assert rounds == [True, True]  # the first round was skipped: another manager's turn
