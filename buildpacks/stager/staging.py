"""Turn a package into a droplet and an image, in a throw-away container on the build stack.

    package (blobstore) -> unpack, detect -> container: bin/compile, then /app as a tar
    less its layer folders -> droplet (app part + layers, named by digest, in the blobstore)
    -> image: run stack, a layer image per layer key (shared), the app part on top
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

import docker
import docker.errors
import redis
import requests
import yaml
from docker.models.containers import Container

import uploads
from buildpacks import custom as custom_mod
from buildpacks import procfile, registry
from buildpacks.errors import (
    CompileFailed,
    NoBuildpack,
    NoStartCommand,
    StagingError,
    StagingTimeout,
)
from confinement.networks import NetworkError, Networks
from contracts import blobstore, keys, stack
from contracts.labels import (
    KIND_CACHE,
    KIND_DROPLET,
    KIND_STAGING,
    LABEL_APP_GUID,
    LABEL_KIND,
    LABEL_PLATFORM,
)
from contracts.messages import StageRequest, StageResult, dump
from contracts.settings import Settings
from logpipe import StagingWriter, StreamWriter

log = logging.getLogger("paas.stager")
RUN_UID = 2000
ERROR_PREFIX = "!     "
FAST_PATH_DECLINED = 100  # bin/fast-compile's "run the real compile in a container"
CONTEXT_IN_MEMORY = 64 * 1024 * 1024  # an image's build context, past which it is a file
TAIL_LINES = 20
TAIL_DRAIN_SECONDS = 60  # how long a finished build may take to hand over its remaining output
MAX_RELEASE_BYTES = 64 * 1024  # a buildpack's bin/release answer (YAML)
MAX_SMALL_FILE_BYTES = 64 * 1024  # the other small files the staging container hands back


class Stager:
    def __init__(self, settings: Settings, docker_client: docker.DockerClient,
                 redis_client: redis.Redis) -> None:
        self.settings = settings
        self.docker = docker_client
        self.redis = redis_client
        self.blobs = blobstore.BlobRoot(settings.blobstore_dir)
        self._stack_pythons: dict[str, str] = {}
        self.networks = Networks(settings, docker_client)  # staging's own, package ports only

    # -- the task ------------------------------------------------------------------------
    def stage(self, request: StageRequest) -> StageResult:
        out = StagingWriter(self.redis, keys.build_log(request.build_guid), self.settings,
                            request.app_guid)  # also into the app's log stream, as STG
        done = self.redis.get(keys.build_result(request.build_guid))
        if done is not None:  # a redelivered task: the build already ended
            return StageResult(**json.loads(done))
        started = time.monotonic()
        out.line("-----> Staging")  # also tells the health manager a stager has this build
        try:
            result = self._stage(request, out)
            out.line(f"-----> Staged in {time.monotonic() - started:.1f} s")
        except StagingError as e:
            if not e.shown:
                out.line(f"{ERROR_PREFIX}{e.message}")
            result = StageResult(ok=False, error=e.message)
        except Exception as e:  # a platform fault: still end the build with a sentence
            log.exception("staging %s failed", request.build_guid)
            message = f"staging failed inside the platform ({type(e).__name__}: {e}); " \
                      "the stager's log has the details. Push again; if it persists, " \
                      "tell the platform operators."
            out.line(f"{ERROR_PREFIX}{message}")
            result = StageResult(ok=False, error=message)
        self.redis.set(keys.build_result(request.build_guid), json.dumps(dump(result)),
                       ex=7 * 24 * 3600)
        out.end()
        self.redis.publish(keys.CONVERGE, "1")
        return result

    def _stage(self, request: StageRequest, out: StreamWriter) -> StageResult:
        package = self.blobs.path(request.package_path)
        with tempfile.TemporaryDirectory(prefix="paas-stage-") as tmp:
            app_dir = Path(tmp) / "app"
            app_dir.mkdir()
            try:  # never through a link, whatever tarfile's filters do on this Python
                uploads.extract(package, app_dir)
            except uploads.UploadRefused as e:
                raise StagingError(e.message) from e
            candidates, detect = self._candidates(request, app_dir, Path(tmp) / "buildpacks")
            if not detect:
                out.line(f"-----> Buildpack: {candidates[0].name}")
            declared = _procfile(app_dir)
            if request.command:
                declared["web"] = request.command
            app_part = self._droplet_file()
            try:
                fast = self._fast_compile(request, candidates, detect, app_dir, app_part, out)
                if fast is not None:
                    layers, defaults, name = fast
                else:
                    app_tar = Path(tmp) / "app.tar"
                    with app_tar.open("wb") as f:
                        _tar_folder(app_dir, "app", RUN_UID, f)
                    layers, defaults, name = self._compile(request, candidates, detect,
                                                           app_tar, app_part, out)
                processes = process_types(defaults, declared)
                droplet = Droplet(self.blobs, app_part, layers)
                digest, path = droplet.store()
            finally:
                app_part.unlink(missing_ok=True)
        size = sum(self.blobs.path(p).stat().st_size for p in droplet.blob_paths())
        out.line(f"-----> Droplet: {size / 1e6:.1f} MB, sha256:{digest[:12]}")
        started = time.monotonic()
        image = self._build_image(request, digest, droplet)
        out.line(f"-----> Image {image} ready in {time.monotonic() - started:.1f} s")
        return StageResult(ok=True, droplet_digest=digest, droplet_path=path,
                           droplet_size=size, image=image, buildpack=name,
                           process_types=processes)

    def _droplet_file(self) -> Path:
        """An empty file beside the droplets, for an app part being made."""
        folder = self.blobs.path(blobstore.DROPLETS)
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix=".app-")
        os.close(fd)
        return Path(name)

    def _candidates(self, request: StageRequest, app_dir: Path,
                    work: Path) -> tuple[list, bool]:
        """The buildpacks to try, and whether their bin/detect must choose among them.

        A buildpack given with the push is used as it is; a name picks a built-in or a
        registered one; otherwise built-ins detect on this host, then the registered ones
        run their bin/detect in the staging container, in order.
        """
        custom = {c["name"]: c["blob"] for c in request.custom_buildpacks}
        if request.buildpack_blob:
            name = request.buildpack or "uploaded"
            return [custom_mod.unpack(self.blobs.path(request.buildpack_blob), name, work)], False
        if request.buildpack:
            if request.buildpack in custom:
                return [custom_mod.unpack(self.blobs.path(custom[request.buildpack]),
                                          request.buildpack, work)], False
            try:
                return [registry.by_name(request.buildpack)], False
            except NoBuildpack as e:
                if custom:
                    raise NoBuildpack(f"{e.message.rstrip('.')}; the registered ones are "
                                      f"{', '.join(custom)}.") from e
                raise
        try:
            return [registry.detect(app_dir)], False
        except NoBuildpack:
            if not custom:
                raise
        return [custom_mod.unpack(self.blobs.path(blob), name, work)
                for name, blob in custom.items()], True

    # -- the fast path: no container when a built-in buildpack has nothing to install ----
    def _fast_compile(self, request: StageRequest, candidates: list, detect: bool,
                      app_dir: Path, app_part: Path, out: StreamWriter,
                      ) -> tuple[list[Layer], dict[str, str], str] | None:
        """A built-in buildpack's ``bin/fast-compile`` on this host, or None to use a container.

        Only built-in buildpacks (trusted code that runs no app code and reaches no
        network) have one, and it succeeds only when every dependency layer is stored.
        The app part of the droplet is written to ``app_part``. The interpreter runs
        isolated (``-I``: no user site, no PYTHON* variables) with an empty HOME, so nothing
        from the upload (a ``.local/.../*.pth``) runs here.
        """
        bp = candidates[0]
        if detect or request.no_cache or not self.settings.staging_fast_path \
                or not isinstance(bp, registry.Buildpack):
            return None
        with resources.as_file(bp.folder) as folder:
            script = folder / "bin" / "fast-compile"
            if not script.is_file():
                return None
            prefix = _layer_prefix(self.settings, request.app_guid)
            stored = self._stored_layers(request.app_guid)
            release_file = app_dir.parent / "release.yml"
            env = {"LANG": "C.UTF-8", "PAAS_STACK_PYTHON": self._stack_python(),
                   "PAAS_RELEASE_FILE": str(release_file)}
            python = self.settings.staging_fast_path_python or sys.executable
            ran = run_isolated(python, script, [str(app_dir), *(
                f"{key}={path}" for key, path in stored.items())], env, timeout=120,
                budget=self.settings.staging_output_bytes)
            if ran is None or ran.code == FAST_PATH_DECLINED:
                return None
            lines = ran.lines
            if ran.code != 0:
                for line in lines:
                    out.line(line)
                raise _compile_failed(lines, ran.code, f"the {bp.name} buildpack")
            layers = []
            for folder_name, key in parse_layers(_read_text(app_dir / ".paas" / "layers")):
                layer = Layer(folder=folder_name, key=prefix + key)
                if not key or not self.blobs.path(layer.blob_path).exists():
                    return None  # a layer would have to be built: use the container
                layers.append(layer)
            try:  # fast-compile wrote bin/release's answer, or it is asked
                with release_file.open("rb") as f:
                    released = f.read(MAX_RELEASE_BYTES + 1)
            except FileNotFoundError:
                asked = run_isolated(python, folder / "bin" / "release", [str(app_dir)], env,
                                     timeout=60, budget=MAX_RELEASE_BYTES + 1, raw=True)
                if asked is None:
                    return None
                released = asked.output
        for line in lines:
            out.line(line)
        excluded = {f"app/{layer.folder}" for layer in layers}
        with app_part.open("wb") as f:
            _tar_folder(app_dir, "app", RUN_UID, f, exclude=excluded)
        return layers, _default_process_types(released, bp.name), bp.name

    def _stack_python(self) -> str:
        """``sys.version`` of the build stack's python3 (asked once per image)."""
        image = stack.build_image(self.settings.stack_build_image)
        if image not in self._stack_pythons:
            output = self.docker.containers.run(
                image, ["python3", "-c", "import sys; print(sys.version)"], remove=True,
                network_mode="none", labels={LABEL_PLATFORM: self.settings.platform_id,
                                             LABEL_KIND: KIND_STAGING})
            self._stack_pythons[image] = output.decode().strip()
        return self._stack_pythons[image]

    # -- compile in a container ------------------------------------------------------------
    def _compile(self, request: StageRequest, candidates: list, detect: bool, app_tar: Path,
                 app_part: Path, out: StreamWriter) -> tuple[list[Layer], dict[str, str], str]:
        """Run the buildpack; write the app part of /app to ``app_part``; return its layers,
        default processes and the buildpack's name (chosen by bin/detect when ``detect``).

        Folders the buildpack lists in ``/app/.paas/layers`` (``DIR KEY`` lines) are layers
        of their own, stored once per key. Keys the blobstore already holds are given to
        the buildpack in ``/tmp/paas/layers-present`` so it need not even materialise them.
        """
        if request.no_cache:
            self._drop_cache(request.app_guid, out)
        cache = self._cache_volume(request.app_guid)
        prefix = _layer_prefix(self.settings, request.app_guid)
        present = [] if request.no_cache else sorted(self._stored_layers(request.app_guid))
        try:
            network = self.networks.for_staging()
        except NetworkError as e:
            raise StagingError(f"the stager could not isolate the staging container's "
                               f"network: {e} Tell the platform operators.") from e
        container = self.docker.containers.create(
            stack.build_image(self.settings.stack_build_image),
            network=network,
            command=["/bin/sh", "-c", DRIVER, "driver", "detect" if detect else "given",
                     *(bp.name for bp in candidates)],
            user=str(RUN_UID),
            working_dir="/app",
            environment={"HOME": "/app", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                         "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"},
            volumes={cache: {"bind": "/cache", "mode": "rw"}},
            mem_limit=f"{self.settings.staging_memory_mb}m",
            # As the app's instances: its team's or its own runtime (gVisor for untrusted
            # code: a buildpack or setup.py is the app's code too), CPU weighed by memory.
            **({"runtime": request.runtime} if request.runtime else {}),
            cpu_shares=max(2, self.settings.staging_memory_mb
                           * self.settings.cpu_shares_per_gb // 1024),
            pids_limit=2048,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            labels={LABEL_PLATFORM: self.settings.platform_id, LABEL_KIND: KIND_STAGING,
                    LABEL_APP_GUID: request.app_guid},
            detach=True,
        )
        try:
            inputs = io.BytesIO()
            with tarfile.open(fileobj=inputs, mode="w") as tar:
                for bp in candidates:
                    _add_tree(tar, bp.folder, f"buildpacks/{bp.name}")
                work = tarfile.TarInfo("tmp/paas")
                work.type, work.mode, work.uid, work.gid = tarfile.DIRTYPE, 0o755, RUN_UID, RUN_UID
                tar.addfile(work)
                _add_bytes(tar, "tmp/paas/layers-present", "".join(
                    f"{k}\n" for k in present).encode(), uid=RUN_UID)
                ca = Path(self.settings.staging_ca_bundle)
                if self.settings.staging_ca_bundle and ca.is_file():
                    _add_bytes(tar, "etc/ssl/certs/ca-certificates.crt", ca.read_bytes())
            with app_tar.open("rb") as f:
                container.put_archive("/", f)
            container.put_archive("/", inputs.getvalue())
            container.start()
            tail = _Tail(container, out, self.settings.staging_output_bytes)
            tail.start()
            try:
                status = container.wait(timeout=self.settings.staging_timeout)
            except (requests.exceptions.ConnectionError,
                    requests.exceptions.ReadTimeout) as e:  # docker-py's wait timing out
                try:
                    container.kill()
                except docker.errors.APIError:
                    pass
                raise StagingTimeout(
                    f"staging ran longer than {self.settings.staging_timeout:.0f} s and was "
                    "stopped: look at the last lines above for what hung.") from e
            code = status.get("StatusCode", 1)
            # The container has exited, so the log stream ends once Docker has sent what it
            # holds; megabytes of output can take seconds on a busy host.
            tail.join(timeout=TAIL_DRAIN_SECONDS)
            if tail.is_alive():
                log.warning("build output of %s still draining after %d s", container.id[:12],
                            TAIL_DRAIN_SECONDS)
            if code != 0:
                which = "the buildpack" if detect else f"the {candidates[0].name} buildpack"
                raise _compile_failed(list(tail.lines), code, which)
            name = _read_single_file(container, "/tmp/paas/buildpack").decode().strip()
            _copy_single_file(container, "/tmp/paas/app.tar", app_part,
                              self.settings.staging_max_droplet_bytes, "the app part of /app")
            layers = []
            listed = _read_single_file(container, "/tmp/paas/layers").decode("utf-8", "replace")
            for folder, key in parse_layers(listed):
                layer = Layer(folder=folder, key=prefix + key)
                if not key or not self.blobs.path(layer.blob_path).exists():
                    layer = self._fetch_layer(container, layer)
                layers.append(layer)
            release = _read_single_file(container, "/tmp/paas/release.yml",
                                        MAX_RELEASE_BYTES + 1)
            return layers, _default_process_types(release, name), name
        finally:
            try:
                container.remove(force=True)
            except docker.errors.APIError as e:
                log.warning("could not remove staging container %s: %s", container.id[:12], e)

    def _fetch_layer(self, container, layer: Layer) -> Layer:
        """Copy a layer folder out of the staging container into the blobstore."""
        stream, _stat = container.get_archive(f"/app/{layer.folder}")
        digest = hashlib.sha256()
        folder = self.blobs.path(blobstore.LAYERS)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".layer-")
        limit, size = self.settings.staging_max_droplet_bytes, 0
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in stream:
                    size += len(chunk)
                    if size > limit:
                        raise StagingError(
                            f"the layer folder {layer.folder!r} is larger than "
                            f"{limit // 1024**2} MiB: install less into it.")
                    digest.update(chunk)
                    f.write(chunk)
        except BaseException:
            os.unlink(tmp)
            raise
        if layer.key.endswith("-"):  # the buildpack gave no key: name it by content
            layer = Layer(folder=layer.folder, key=layer.key + digest.hexdigest()[:32])
        os.replace(tmp, self.blobs.path(layer.blob_path))
        return layer

    def _drop_cache(self, app_guid: str, out: StreamWriter) -> None:
        out.line("-----> Throwing the build cache away")
        try:
            self.docker.volumes.get(self._cache_name(app_guid)).remove(force=True)
        except docker.errors.NotFound:
            pass
        for layer in self._stored_layers(app_guid).values():
            layer.unlink(missing_ok=True)
        # Layer images under these keys are rebuilt too (see _build_image).

    def _stored_layers(self, app_guid: str) -> dict[str, Path]:
        """The app's layers in the blobstore: key (without the prefix) -> tarball."""
        prefix = _layer_prefix(self.settings, app_guid)
        return {p.name[len(prefix):-len(".tar")]: p
                for p in self.blobs.path(blobstore.LAYERS).glob(f"{prefix}*.tar")}

    def _cache_name(self, app_guid: str) -> str:
        return blobstore.build_cache_volume(self.settings.platform_id, app_guid)

    def _cache_volume(self, app_guid: str) -> str:
        name = self._cache_name(app_guid)
        try:
            self.docker.volumes.get(name)
        except docker.errors.NotFound:
            self.docker.volumes.create(name, labels={
                LABEL_PLATFORM: self.settings.platform_id, LABEL_KIND: KIND_CACHE,
                LABEL_APP_GUID: app_guid})
        return name

    # -- the image -----------------------------------------------------------------------
    def _build_image(self, request: StageRequest, digest: str, droplet: Droplet) -> str:
        """Run stack, then one image layer per droplet layer (reused by key), then the app.

        The first image above the stack carries the run config and the labels, which the
        ones above inherit, so a re-push with unchanged layers is a two-step build.
        """
        tag = f"paas/droplet:{digest[:24]}"
        if self._image_exists(tag):
            return tag
        labels = {LABEL_PLATFORM: self.settings.platform_id, LABEL_APP_GUID: request.app_guid,
                  LABEL_KIND: KIND_DROPLET}
        config = ["ENV HOME=/app", "WORKDIR /app", f"USER {RUN_UID}:{RUN_UID}"]
        base = stack.run_image(self.settings.stack_run_image)
        for layer in droplet.layers:
            layer_tag = f"paas/layer:{layer.key}"
            if request.no_cache or not self._image_exists(layer_tag):
                parent = str(Path("/app", layer.folder).parent)
                self._docker_build(layer_tag, base, self.blobs.path(layer.blob_path),
                                   f"ADD layer.tar {parent}/", config, labels)
            base, config, labels = layer_tag, [], {}
        self._docker_build(tag, base, self.blobs.path(droplet.app_path), "ADD layer.tar /",
                           config, labels)
        return tag

    def _image_exists(self, tag: str) -> bool:
        try:
            self.docker.images.get(tag)
            return True
        except docker.errors.ImageNotFound:
            return False

    def _docker_build(self, tag: str, base: str, layer: Path, add: str, extra: list[str],
                      labels: dict[str, str]) -> None:
        dockerfile = "\n".join([f"FROM {base}", add, *extra, ""]).encode()
        # In memory while small (a warm re-push's app part), on disk past that: a droplet
        # may be gigabytes (staging_max_droplet_bytes), which must not be the stager's memory.
        small = layer.stat().st_size < CONTEXT_IN_MEMORY
        with (io.BytesIO() if small else tempfile.TemporaryFile()) as context:
            with tarfile.open(fileobj=context, mode="w") as tar:
                _add_bytes(tar, "Dockerfile", dockerfile)
                tar.add(layer, arcname="layer.tar")
            context.seek(0)
            try:
                self.docker.images.build(fileobj=context, custom_context=True, tag=tag,
                                         rm=True, forcerm=True, labels=labels or None)
            except docker.errors.BuildError as e:
                raise StagingError(f"building the image {tag} failed: {e.msg}") from e


# Runs in the staging container: the buildpack's compile step, then the app part of /app as
# a tar without the layer folders the buildpack listed in /app/.paas/layers.
DRIVER = r"""
set -e
mode=$1; shift
bp=$1
if [ "$mode" = detect ]; then
  bp=
  for candidate in "$@"; do
    if [ -x "/buildpacks/$candidate/bin/detect" ] \
        && out=$("/buildpacks/$candidate/bin/detect" /app 2>&1); then
      bp=$candidate
      echo "-----> Buildpack: $candidate${out:+ ($out)}"
      break
    fi
  done
  if [ -z "$bp" ]; then
    printf '!     no buildpack recognises this app (tried the built-in ones and: %s): %s\n' \
      "$*" "add the files your buildpack looks for, or name one with -b."
    exit 1
  fi
fi
echo "$bp" > /tmp/paas/buildpack
mkdir -p /tmp/env
"/buildpacks/$bp/bin/compile" /app /cache /tmp/env
if [ -x "/buildpacks/$bp/bin/release" ]; then
  "/buildpacks/$bp/bin/release" /app > /tmp/paas/release.yml
else
  : > /tmp/paas/release.yml
fi
: > /tmp/paas/exclude
: > /tmp/paas/layers
if [ -f /app/.paas/layers ]; then
  while read -r dir key; do
    [ -n "$dir" ] || continue
    echo "app/${dir#/}" >> /tmp/paas/exclude
    echo "$dir $key" >> /tmp/paas/layers
  done < /app/.paas/layers
fi
tar -C / -cf /tmp/paas/app.tar --exclude-from=/tmp/paas/exclude app
"""


@dataclass(frozen=True)
class Layer:
    """A folder of the droplet stored on its own (``layers/<key>.tar``), shared by key."""

    folder: str  # relative to /app
    key: str

    @property
    def blob_path(self) -> str:
        return blobstore.layer(self.key)


class Droplet:
    """The app part (``droplets/<digest>.tar``) plus its layers, described by a manifest.

    The digest names the whole: the app part's bytes and the layers' keys. The app part is
    a file beside the droplets, moved into place by :meth:`store`.
    """

    def __init__(self, blobs: blobstore.BlobRoot, app_part: Path, layers: list[Layer]) -> None:
        self.blobs = blobs
        self.app_part = app_part
        self.layers = layers
        digest = hashlib.sha256()
        with app_part.open("rb") as f:
            while chunk := f.read(1024 * 1024):
                digest.update(chunk)
        self.app_digest = digest.hexdigest()
        self.app_path = blobstore.droplet_part(self.app_digest)

    def manifest(self) -> dict[str, object]:
        return {"app": self.app_path,
                "layers": [{"folder": lay.folder, "blob": lay.blob_path} for lay in self.layers]}

    def store(self) -> tuple[str, str]:
        manifest = json.dumps(self.manifest(), sort_keys=True).encode()
        digest = hashlib.sha256(manifest).hexdigest()
        app = self.blobs.path(self.app_path)
        app.parent.mkdir(parents=True, exist_ok=True)
        if not app.exists():
            os.replace(self.app_part, app)
        else:  # reused: young again, so garbage collection (by age) leaves it to this build
            _touch(app)
        path = self.blobs.path(blobstore.droplet_manifest(digest))
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            with os.fdopen(fd, "wb") as f:
                f.write(manifest)
            os.replace(tmp, path)
        else:
            _touch(path)
        for layer in self.layers:
            _touch(self.blobs.path(layer.blob_path))
        return digest, blobstore.droplet_manifest(digest)

    def blob_paths(self) -> list[str]:
        return [self.app_path, *(lay.blob_path for lay in self.layers)]


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except FileNotFoundError:  # collected meanwhile: the image build says so
        pass


@dataclass(frozen=True)
class Ran:
    code: int
    lines: list[str]  # stdout and stderr, as shown (past the budget: a note and the last ones)
    output: bytes = b""  # stdout, for ``raw`` runs


def run_isolated(python: str, script: Path, args: list[str], env: dict[str, str],
                 timeout: float, budget: int, raw: bool = False) -> Ran | None:
    """Run a built-in buildpack's script on this host, where nothing of the upload may run:
    ``python -I`` (no user site-packages, no PYTHON* variables, no script folder on the
    path) with HOME an empty folder of its own. Output is read up to ``budget`` bytes
    (``raw``: stdout as bytes; else lines); None if it ran longer than ``timeout``."""
    with tempfile.TemporaryDirectory(prefix="paas-home-") as home:
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env, "HOME": home}
        proc = subprocess.Popen(
            [python, "-I", str(script), *args], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if raw else subprocess.STDOUT, env=full_env)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            output, lines = b"", []
            if raw:
                output = proc.stdout.read(budget)
            else:
                lines = _bounded_lines(proc.stdout, budget)
            while proc.stdout.read(64 * 1024):
                pass  # past the budget: drained, not kept
            code = proc.wait()
        finally:
            timer.cancel()
            proc.stdout.close()
    return None if killed.is_set() else Ran(code, lines, output)


def _bounded_lines(stream: BinaryIO, budget: int) -> list[str]:
    """Lines of ``stream`` up to ``budget`` bytes; past it a note and the last few."""
    shown: list[str] = []
    last: deque[str] = deque(maxlen=TAIL_LINES)
    sent = dropped = dropped_bytes = 0
    while raw := stream.readline(_Tail.MAX_PENDING):
        text = raw.rstrip(b"\n").decode("utf-8", "replace").rstrip("\r")
        if sent + len(raw) > budget:
            dropped += 1
            dropped_bytes += len(raw)
            last.append(text)
            continue
        sent += len(raw)
        shown.append(text)
    if dropped:
        shown.append(f"-----> [{dropped} lines ({dropped_bytes / 1e6:.1f} MB) of output not "
                     f"shown: build output is limited to {budget / 1e6:.1f} MB; the last "
                     "lines follow]")
        shown.extend(list(last)[-min(dropped, TAIL_LINES):])
    return shown


def _compile_failed(lines: list[str], code: int, which: str) -> CompileFailed:
    """The buildpack's own last error sentence ("!     ...") if it printed one."""
    errors = [line[len(ERROR_PREFIX):] for line in lines if line.startswith(ERROR_PREFIX)]
    message = errors[-1] if errors else (
        f"{which} failed with exit code {code} (its last lines are above).")
    return CompileFailed(message, code, shown=bool(errors))


LAYER_KEY = re.compile(r"^[a-z0-9_.-]{1,64}$")


def parse_layers(text: str) -> list[tuple[str, str]]:
    """``DIR KEY`` lines of ``/app/.paas/layers``: folders inside /app, keys fit for a tag."""
    layers = []
    for line in text.splitlines():
        folder, _, key = line.strip().partition(" ")
        if not folder:
            continue
        key = key.strip()
        normal = posixpath.normpath(folder.strip("/"))
        if normal in ("", ".") or normal == ".." or normal.startswith("../"):
            raise StagingError(f"the buildpack listed the layer folder {folder!r}, which is not "
                               "inside the app: fix the buildpack's .paas/layers.")
        if key and not LAYER_KEY.match(key):
            raise StagingError(f"the buildpack gave the layer {folder!r} the key {key!r}: keys "
                               "are 1 to 64 lower-case letters, digits, '.', '_' or '-'.")
        layers.append((normal, key))
    return layers


def _procfile(app_dir: Path) -> dict[str, str]:
    path = app_dir / "Procfile"
    return procfile.parse(path.read_text(errors="replace")) if path.is_file() else {}


class _NoAliases(yaml.SafeLoader):
    """Safe YAML without aliases: an alias bomb (a billion laughs) fails at its first ``*``."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed",
                                              mark)
        return super().compose_node(parent, index)


def _default_process_types(release: bytes, buildpack: str) -> dict[str, str]:
    """``default_process_types`` from the YAML a buildpack's ``bin/release`` printed
    (at most MAX_RELEASE_BYTES, without aliases)."""
    if not release.strip():
        return {}
    if len(release) > MAX_RELEASE_BYTES:
        raise StagingError(f"the {buildpack} buildpack's bin/release printed more than "
                           f"{MAX_RELEASE_BYTES // 1024} KiB: it should print only "
                           "default_process_types and the like.")
    try:
        data = yaml.load(release, Loader=_NoAliases)
    except yaml.YAMLError as e:
        raise StagingError(f"the {buildpack} buildpack's bin/release printed YAML that "
                           f"cannot be used: {e}") from e
    types = (data or {}).get("default_process_types") if isinstance(data, dict) else None
    if not isinstance(types, dict):
        return {}
    return {str(k): str(v) for k, v in types.items() if v}


def process_types(defaults: dict[str, str], declared: dict[str, str]) -> dict[str, str]:
    """The buildpack's defaults, overridden by the Procfile and -c; there must be a web one."""
    processes = {**defaults, **declared}
    if "web" not in processes:
        raise NoStartCommand("no start command: add a Procfile with a 'web:' line, "
                             "or pass one with -c.")
    return processes


def _layer_prefix(settings: Settings, app_guid: str) -> str:
    """Layers are per stack and per app: a layer is only as trusted as the app that built it."""
    return f"{stack.run_image(settings.stack_run_image).rpartition(':')[2][:12]}-{app_guid}-"


class _Chunks(io.RawIOBase):
    """docker-py's chunk iterator as a file, for tarfile's stream mode."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = iter(chunks)
        self.rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        while not self.rest:
            chunk = next(self.chunks, None)
            if chunk is None:
                return 0
            self.rest = memoryview(chunk)
        n = min(len(buffer), len(self.rest))
        buffer[:n], self.rest = self.rest[:n], self.rest[n:]
        return n


def _single_member(container: Container,
                   path: str) -> tuple[tarfile.TarFile, tarfile.TarInfo | None]:
    """A file of the staging container, as a tar stream read as it arrives."""
    stream, _stat = container.get_archive(path)
    tar = tarfile.open(fileobj=_Chunks(stream), mode="r|")
    member = tar.next()
    return tar, member if member is not None and member.isfile() else None


def _read_single_file(container: Container, path: str,
                      limit: int = MAX_SMALL_FILE_BYTES) -> bytes:
    """The first ``limit`` bytes of a small file of the staging container."""
    tar, member = _single_member(container, path)
    with tar:
        return tar.extractfile(member).read(limit) if member is not None else b""


def _copy_single_file(container: Container, path: str, into: Path, limit: int,
                      what: str) -> None:
    """Stream a file of the staging container into ``into``, refusing it past ``limit``."""
    tar, member = _single_member(container, path)
    with tar, into.open("wb") as f:
        if member is None:
            return
        if member.size > limit:
            raise StagingError(f"{what} is larger than {limit // 1024**2} MiB: add what need "
                               "not be deployed to .paasignore.")
        data = tar.extractfile(member)
        while chunk := data.read(1024 * 1024):
            f.write(chunk)


class _Tail(threading.Thread):
    """Copies a container's output lines to the build stream; keeps the last few.

    Past ``budget`` bytes it stops copying (a buildpack may print megabytes) and, at the
    end, says how much it left out and shows the last lines.
    """

    MAX_PENDING = 64 * 1024  # a "line" this long without a newline is cut

    def __init__(self, container, out: StreamWriter, budget: int) -> None:
        super().__init__(daemon=True)
        self.container = container
        self.out = out
        self.budget = budget
        self.sent = 0
        self.dropped = 0
        self.dropped_bytes = 0
        self.lines: deque[str] = deque(maxlen=TAIL_LINES)

    def run(self) -> None:
        pending = b""
        try:
            for chunk in self.container.logs(stream=True, follow=True, stdout=True,
                                             stderr=True):
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    self._emit(raw)
                if len(pending) > self.MAX_PENDING:
                    self._emit(pending)
                    pending = b""
            if pending:
                self._emit(pending)
        except Exception as e:  # the container went away under us
            log.debug("log stream ended: %s", e)
        if self.dropped:
            self.out.line(f"-----> [{self.dropped} lines ({self.dropped_bytes / 1e6:.1f} MB) "
                          f"of output not shown: build output is limited to "
                          f"{self.budget / 1e6:.1f} MB; the last lines follow]")
            for line in list(self.lines)[-min(self.dropped, TAIL_LINES):]:
                self.out.line(line)

    def _emit(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self.lines.append(text)
        if self.sent + len(raw) > self.budget:
            self.dropped += 1
            self.dropped_bytes += len(raw)
            return
        self.sent += len(raw)
        self.out.line(text)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644,
               uid: int = 0) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, uid, time.time()
    tar.addfile(info, io.BytesIO(data))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace") if path.is_file() else ""
    except OSError:
        return ""


def _tar_folder(folder: Path, arcname: str, uid: int, out: BinaryIO,
                exclude: set[str] = frozenset()) -> None:
    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if any(info.name == e or info.name.startswith(e + "/") for e in exclude):
            return None
        info.uid = info.gid = uid
        info.uname = info.gname = ""
        return info

    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.add(folder, arcname=arcname, filter=owned)


def _add_tree(tar: tarfile.TarFile, node, arcname: str) -> None:
    if isinstance(node, Path) and node.is_symlink():  # kept as a link, never followed
        info = tarfile.TarInfo(arcname)
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(node)
        tar.addfile(info)
        return
    if node.is_dir():
        info = tarfile.TarInfo(arcname)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.name != "__pycache__":
                _add_tree(tar, child, f"{arcname}/{child.name}")
    else:
        _add_bytes(tar, arcname, node.read_bytes(), mode=0o755)
