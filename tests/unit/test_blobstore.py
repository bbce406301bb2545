"""The blobstore's layout and its path check (contracts.blobstore), as the controller's store
and the stager use them: a key never reaches outside the store, however it is written."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from buildpacks.stager.staging import Droplet, Layer, Stager
from contracts import blobstore, keys
from contracts.blobstore import BlobKeyError, BlobRoot
from contracts.messages import StageRequest
from contracts.settings import Settings
from controller.blobstore import Blobstore
from tests.unit.test_applog import StreamRedis

ESCAPES = [
    "..",
    "../outside",
    "../../etc/passwd",
    "packages/../../outside",
    "packages/../packages/p1.tar.gz",  # back inside, but no key needs ``..``: refused too
    "/etc/passwd",
    "//etc/passwd",
    "",
    ".",
    "./",
    "packages/p1\0.tar.gz",
]


class BuildRedis(StreamRedis):
    """StreamRedis whose pipeline also sets expiries, as a build's output stream ends."""

    class _Pipe(StreamRedis._Pipe):
        def expire(self, key: str, seconds: int) -> None:
            self.calls.append(lambda: self.owner.expire(key, seconds))


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A store's root and a folder beside it that must stay out of reach."""
    root, outside = tmp_path / "blobs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("not a blob")
    return root, outside


def test_the_layout_gives_keys_inside_the_store(layout: tuple[Path, Path]):
    root, _ = layout
    store = BlobRoot(root)
    made = [blobstore.package("p1"), blobstore.upload("p1"), blobstore.buildpack("ab12"),
            blobstore.incoming_buildpack("u1"), blobstore.droplet_part("d1"),
            blobstore.droplet_manifest("m1"), blobstore.layer("stack-app-k1"),
            blobstore.resource(3, "ab" * 20), blobstore.team_resources(3)]
    assert made == ["packages/p1.tar.gz", "uploads/p1.tar.gz", "buildpacks/ab12.tar.gz",
                    "buildpacks/.incoming-u1", "droplets/d1.tar", "droplets/m1.json",
                    "layers/stack-app-k1.tar", f"resources/3/ab/{'ab' * 20}", "resources/3"]
    for key in made:
        assert store.path(key) == root.resolve() / key
    assert blobstore.layer_key(blobstore.layer("stack-app-k1")) == "stack-app-k1"


@pytest.mark.parametrize("key", ESCAPES)
def test_a_key_that_is_no_relative_path_inside_is_refused(layout: tuple[Path, Path], key: str):
    root, _ = layout
    with pytest.raises(BlobKeyError) as refused:
        BlobRoot(root).path(key)
    assert repr(key) in str(refused.value)
    assert isinstance(refused.value, ValueError)  # what callers caught before


def test_a_symbolic_link_out_of_the_store_is_refused(layout: tuple[Path, Path]):
    root, outside = layout
    (root / "packages").symlink_to(outside, target_is_directory=True)
    (root / "secret-link").symlink_to(outside / "secret")
    store = BlobRoot(root)
    for key in ("packages/secret", "packages/new.tar.gz", "secret-link"):
        with pytest.raises(BlobKeyError, match="symbolic link"):
            store.path(key)


def test_links_that_stay_inside_are_followed(tmp_path: Path, layout: tuple[Path, Path]):
    root, _ = layout
    (root / "droplets").mkdir()
    (root / "alias").symlink_to(root / "droplets", target_is_directory=True)
    assert BlobRoot(root).path("alias/d1.tar") == root.resolve() / "droplets" / "d1.tar"
    linked_root = tmp_path / "linked-root"  # the store's root may itself be a link
    linked_root.symlink_to(root, target_is_directory=True)
    assert BlobRoot(linked_root).path("droplets/d1.tar") == root.resolve() / "droplets/d1.tar"


def test_the_controllers_store_writes_nothing_outside(layout: tuple[Path, Path]):
    root, outside = layout
    store = Blobstore(root)
    for key in ("../outside/written", "/tmp/written", "packages/../../outside/written"):
        with pytest.raises(BlobKeyError):
            store.put_stream(key, io.BytesIO(b"x"))
        with pytest.raises(BlobKeyError):
            store.delete(key)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert not any(root.rglob("*"))
    digest, size = store.put_stream(blobstore.package("p1"), io.BytesIO(b"pkg"))
    assert size == 3 and store.exists(blobstore.package("p1"))


def test_a_droplet_is_stored_where_the_layout_says(layout: tuple[Path, Path]):
    root, _ = layout
    store = BlobRoot(root)
    (root / "droplets").mkdir()
    part = root / "droplets" / ".app-1"
    part.write_bytes(b"app part")
    layer = Layer(folder=".venv", key="stack-app-k1")
    (root / "layers").mkdir()
    store.path(layer.blob_path).write_bytes(b"layer")
    droplet = Droplet(store, part, [layer])
    digest, manifest_key = droplet.store()
    assert manifest_key == blobstore.droplet_manifest(digest)
    manifest = json.loads(store.path(manifest_key).read_text())
    assert manifest == {"app": blobstore.droplet_part(droplet.app_digest),
                        "layers": [{"folder": ".venv", "blob": "layers/stack-app-k1.tar"}]}
    assert store.path(manifest["app"]).read_bytes() == b"app part" and not part.exists()


def test_the_stager_refuses_a_package_key_outside_the_store(tmp_path: Path,
                                                           layout: tuple[Path, Path]):
    _root, outside = layout
    settings = Settings(data_dir=str(tmp_path))  # the store: <data_dir>/blobs, as ``layout``
    client = BuildRedis()
    stager = Stager(settings, None, client)  # type: ignore[arg-type]  (no container runs)
    escape = os.path.relpath(outside / "secret", settings.blobstore_dir)
    result = stager.stage(StageRequest(build_guid="b1", app_guid="a1", app_name="web",
                                       package_path=escape))
    assert not result.ok
    assert "escapes the blobstore" in result.error and "BlobKeyError" in result.error
    assert json.loads(client.get(keys.build_result("b1")))["ok"] is False
