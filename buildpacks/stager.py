"""Turn a package into a droplet and an image, in a throw-away container on the build stack.

    package (blobstore) -> unpack, detect -> container: bin/compile -> /app as a tar
    -> droplet (blobstore, named by digest) -> image FROM the run stack, tagged by digest
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import docker
import docker.errors
import redis

from buildpacks import procfile, registry
from buildpacks.errors import CompileFailed, NoStartCommand, StagingError, StagingTimeout
from contracts import keys, stack
from contracts.logstream import StreamWriter
from contracts.messages import (
    LABEL_APP_GUID,
    LABEL_KIND,
    LABEL_PLATFORM,
    StageRequest,
    StageResult,
    dump,
)
from contracts.settings import Settings

log = logging.getLogger("paas.stager")
RUN_UID = 2000
ERROR_PREFIX = "!     "
TAIL_LINES = 20


class Stager:
    def __init__(self, settings: Settings, docker_client: docker.DockerClient,
                 redis_client: redis.Redis) -> None:
        self.settings = settings
        self.docker = docker_client
        self.redis = redis_client
        self.blob_root = settings.blobstore_dir

    # -- the task ------------------------------------------------------------------------
    def stage(self, request: StageRequest) -> StageResult:
        out = StreamWriter(self.redis, keys.build_log(request.build_guid))
        if self.redis.exists(keys.build_result(request.build_guid)):
            return StageResult(**json.loads(self.redis.get(keys.build_result(request.build_guid))))
        started = time.monotonic()
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
        package = self.blob_root / request.package_path
        with tempfile.TemporaryDirectory(prefix="paas-stage-") as tmp:
            app_dir = Path(tmp) / "app"
            app_dir.mkdir()
            with tarfile.open(package, "r:gz") as tar:
                tar.extractall(app_dir, filter="data")
            bp = registry.detect(app_dir, request.buildpack)
            out.line(f"-----> Buildpack: {bp.name}")
            processes = self._process_types(app_dir, request)
            app_tar = _tar_folder(app_dir, "app", uid=RUN_UID)
        droplet_tar = self._compile(request, bp, app_tar, out)
        digest, size, droplet_path = self._store_droplet(droplet_tar)
        out.line(f"-----> Droplet: {size / 1e6:.1f} MB, sha256:{digest[:12]}")
        started = time.monotonic()
        image = self._build_image(request, digest, droplet_path)
        out.line(f"-----> Image {image} built in {time.monotonic() - started:.1f} s")
        return StageResult(ok=True, droplet_digest=digest, droplet_path=str(
            droplet_path.relative_to(self.blob_root)), droplet_size=size, image=image,
            buildpack=bp.name, process_types=processes)

    @staticmethod
    def _process_types(app_dir: Path, request: StageRequest) -> dict[str, str]:
        path = app_dir / "Procfile"
        processes = procfile.parse(path.read_text(errors="replace")) if path.is_file() else {}
        if request.command:
            processes["web"] = request.command
        if "web" not in processes:
            raise NoStartCommand("no start command: add a Procfile with a 'web:' line, "
                                 "or pass one with -c.")
        return processes

    # -- compile in a container ------------------------------------------------------------
    def _compile(self, request: StageRequest, bp: registry.Buildpack, app_tar: bytes,
                 out: StreamWriter) -> io.BytesIO:
        cache = self._cache_volume(request.app_guid)
        container = self.docker.containers.create(
            stack.build_image(self.settings.stack_build_image),
            command=["python3", f"/buildpacks/{bp.name}/bin/compile", "/app", "/cache",
                     "/tmp/env"],
            user=str(RUN_UID),
            working_dir="/app",
            environment={"HOME": "/app", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                         "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"},
            volumes={cache: {"bind": "/cache", "mode": "rw"}},
            mem_limit=f"{self.settings.staging_memory_mb}m",
            labels={LABEL_PLATFORM: self.settings.platform_id, LABEL_KIND: "staging",
                    LABEL_APP_GUID: request.app_guid},
            detach=True,
        )
        try:
            container.put_archive("/", app_tar)
            container.put_archive("/", _buildpack_tar(bp))
            ca = Path(self.settings.staging_ca_bundle)
            if self.settings.staging_ca_bundle and ca.is_file():
                container.put_archive("/", _single_file_tar(
                    "etc/ssl/certs/ca-certificates.crt", ca.read_bytes()))
            container.start()
            tail = self._stream_output(container, out)
            try:
                status = container.wait(timeout=self.settings.staging_timeout)
            except Exception as e:  # requests' ReadTimeout, through docker-py
                container.kill()
                raise StagingTimeout(
                    f"staging ran longer than {self.settings.staging_timeout:.0f} s and was "
                    "stopped: look at the last lines above for what hung.") from e
            code = status.get("StatusCode", 1)
            tail.join(timeout=5)
            if code != 0:
                errors = [line[len(ERROR_PREFIX):] for line in tail.lines
                          if line.startswith(ERROR_PREFIX)]
                message = errors[-1] if errors else (
                    f"the {bp.name} buildpack failed with exit code {code} "
                    "(its last lines are above).")
                raise CompileFailed(message, code, shown=bool(errors))
            stream, _stat = container.get_archive("/app")
            droplet = io.BytesIO()
            for chunk in stream:
                droplet.write(chunk)
            droplet.seek(0)
            return droplet
        finally:
            try:
                container.remove(force=True)
            except docker.errors.APIError as e:
                log.warning("could not remove staging container %s: %s", container.id[:12], e)

    def _stream_output(self, container, out: StreamWriter) -> _Tail:  # noqa: ANN001
        tail = _Tail(container, out)
        tail.start()
        return tail

    def _cache_volume(self, app_guid: str) -> str:
        name = f"paas-cache-{self.settings.platform_id}-{app_guid}"
        try:
            self.docker.volumes.get(name)
        except docker.errors.NotFound:
            self.docker.volumes.create(name, labels={
                LABEL_PLATFORM: self.settings.platform_id, LABEL_KIND: "cache",
                LABEL_APP_GUID: app_guid})
        return name

    # -- droplet and image -------------------------------------------------------------
    def _store_droplet(self, droplet: io.BytesIO) -> tuple[str, int, Path]:
        data = droplet.getbuffer()
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_root / "droplets" / f"{digest}.tar"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return digest, len(data), path

    def _build_image(self, request: StageRequest, digest: str, droplet_path: Path) -> str:
        """The droplet as an image: run stack, then a dependency layer, then the app layer.

        Folders the buildpack lists in ``/app/.paas/layers`` (the Python buildpack: its
        virtualenv) become a layer of their own, named by a digest of their content, so a
        re-push with unchanged dependencies adds only the small app layer.
        """
        tag = f"paas/droplet:{digest[:24]}"
        if self._image_exists(tag):
            return tag
        labels = {LABEL_PLATFORM: self.settings.platform_id, LABEL_APP_GUID: request.app_guid}
        with tarfile.open(droplet_path) as droplet:
            members = droplet.getmembers()
            layer_dirs = _layer_dirs(droplet, members)
            deps = [m for m in members if _in_layer(m.name, layer_dirs)]
            app = [m for m in members if not _in_layer(m.name, layer_dirs)]
            base = stack.run_image(self.settings.stack_run_image)
            if deps:
                base = f"paas/layer:{_members_digest(droplet, deps)[:24]}"
                if not self._image_exists(base):
                    self._docker_build(base, stack.run_image(self.settings.stack_run_image),
                                       droplet, deps, [], {**labels, LABEL_KIND: "layer"})
            self._docker_build(tag, base, droplet, app,
                               ["ENV HOME=/app", "WORKDIR /app", f"USER {RUN_UID}:{RUN_UID}"],
                               {**labels, LABEL_KIND: "droplet"})
        return tag

    def _image_exists(self, tag: str) -> bool:
        try:
            self.docker.images.get(tag)
            return True
        except docker.errors.ImageNotFound:
            return False

    def _docker_build(self, tag: str, base: str, source: tarfile.TarFile,
                      members: list[tarfile.TarInfo], extra: list[str],
                      labels: dict[str, str]) -> None:
        layer = io.BytesIO()
        with tarfile.open(fileobj=layer, mode="w") as out:
            for member in members:
                out.addfile(member, source.extractfile(member) if member.isfile() else None)
        dockerfile = "\n".join([f"FROM {base}", "ADD layer.tar /", *extra, ""]).encode()
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            _add_bytes(tar, "Dockerfile", dockerfile)
            _add_bytes(tar, "layer.tar", layer.getvalue())
        context.seek(0)
        try:
            self.docker.images.build(fileobj=context, custom_context=True, tag=tag, rm=True,
                                     forcerm=True, labels=labels)
        except docker.errors.BuildError as e:
            raise StagingError(f"building the image {tag} failed: {e.msg}") from e


def _layer_dirs(droplet: tarfile.TarFile, members: list[tarfile.TarInfo]) -> list[str]:
    for member in members:
        if member.name == "app/.paas/layers" and member.isfile():
            text = droplet.extractfile(member).read().decode("utf-8", "replace")
            return [f"app/{line.strip().strip('/')}" for line in text.splitlines()
                    if line.strip() and ".." not in line]
    return []


def _in_layer(name: str, layer_dirs: list[str]) -> bool:
    return any(name == d or name.startswith(d + "/") for d in layer_dirs)


def _members_digest(source: tarfile.TarFile, members: list[tarfile.TarInfo]) -> str:
    """A digest of names, modes, owners, link targets and contents: not of tar bytes."""
    digest = hashlib.sha256()
    for m in sorted(members, key=lambda m: m.name):
        digest.update(f"{m.name}\0{m.type!r}\0{m.mode}\0{m.uid}\0{m.gid}\0{m.linkname}"
                      f"\0{m.size}\0".encode())
        if m.isfile():
            f = source.extractfile(m)
            while chunk := f.read(1024 * 1024):
                digest.update(chunk)
    return digest.hexdigest()


class _Tail(threading.Thread):
    """Copies a container's output lines to the build stream; keeps the last few."""

    def __init__(self, container, out: StreamWriter) -> None:  # noqa: ANN001
        super().__init__(daemon=True)
        self.container = container
        self.out = out
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
            if pending:
                self._emit(pending)
        except Exception as e:  # the container went away under us
            log.debug("log stream ended: %s", e)

    def _emit(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self.lines.append(text)
        self.out.line(text)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644,
               uid: int = 0) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, uid, time.time()
    tar.addfile(info, io.BytesIO(data))


def _single_file_tar(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add_bytes(tar, name, data)
    return buf.getvalue()


def _tar_folder(folder: Path, arcname: str, uid: int) -> bytes:
    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = uid
        info.uname = info.gname = ""
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname=arcname, filter=owned)
    return buf.getvalue()


def _buildpack_tar(bp: registry.Buildpack) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add_tree(tar, bp.folder, f"buildpacks/{bp.name}")
    return buf.getvalue()


def _add_tree(tar: tarfile.TarFile, node, arcname: str) -> None:  # noqa: ANN001
    if node.is_dir():
        info = tarfile.TarInfo(arcname)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.name != "__pycache__":
                _add_tree(tar, child, f"{arcname}/{child.name}")
    else:
        _add_bytes(tar, arcname, node.read_bytes(), mode=0o755)
