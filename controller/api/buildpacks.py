"""Buildpacks: the registered ones (admins add and remove them) and the built-in ones."""

from __future__ import annotations

import os
import re
import uuid

from flask import current_app, g, jsonify, request
from sqlalchemy import func, select

from contracts import blobstore
from controller import events, packages
from controller.api import v1
from controller.auth import Permission, current_identity, requires
from controller.errors import Conflict, InvalidInput, NotFound, TooLarge
from controller.models import RegisteredBuildpack

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
# The stager's built-in buildpacks, in detection order (they are tried first).
BUILTIN = ("python", "node", "static", "procfile")


MAX_BUILDPACK_BYTES = 512 * 1024 * 1024


def store_buildpack(upload) -> tuple[str, str]:
    """Keep an uploaded buildpack tarball (checked) in the blobstore; path and digest."""
    blobs = current_app.extensions["paas.blobstore"]
    incoming = blobstore.incoming_buildpack(str(uuid.uuid4()))
    try:
        digest, _size = blobs.put_stream(incoming, upload.stream, limit=MAX_BUILDPACK_BYTES)
        packages.check_buildpack(blobs.path(incoming))
        path = blobstore.buildpack(digest)
        os.replace(blobs.path(incoming), blobs.path(path))
    except OverflowError as e:
        raise TooLarge(f"the buildpack is larger than {MAX_BUILDPACK_BYTES // 2**20} MiB.") from e
    finally:
        blobs.delete(incoming)
    return path, digest


@v1.get("/buildpacks")
@requires(Permission.SELF)
def list_buildpacks():
    registered = g.db.scalars(select(RegisteredBuildpack).order_by(
        RegisteredBuildpack.position, RegisteredBuildpack.name))
    return jsonify({"buildpacks": [
        *({"name": n, "position": i + 1, "kind": "built-in"} for i, n in enumerate(BUILTIN)),
        *({"name": b.name, "position": len(BUILTIN) + b.position, "kind": "registered",
           "digest": b.digest} for b in registered),
    ]})


@v1.post("/buildpacks")
@requires(Permission.PLATFORM_ADMIN)
def create_buildpack():
    ident = current_identity()
    name = request.form.get("name", "")
    if not NAME.match(name):
        raise InvalidInput(f"{name!r} is not a buildpack name: use lower-case letters, digits, "
                           "'.', '_' and '-'.")
    if name in BUILTIN or g.db.scalar(select(RegisteredBuildpack).where(
            RegisteredBuildpack.name == name)):
        raise Conflict(f"there is already a buildpack named {name!r}: delete it first or "
                       "choose another name.")
    upload = request.files.get("buildpack")
    if upload is None:
        raise InvalidInput("no buildpack tarball was sent.")
    path, digest = store_buildpack(upload)
    last = g.db.scalar(select(func.max(RegisteredBuildpack.position))) or 0
    bp = RegisteredBuildpack(name=name, position=last + 1, blob_path=path, digest=digest,
                             created_by=ident.name)
    g.db.add(bp)
    events.record(g.db, "buildpack.created", ident.name, name=name, digest=digest)
    g.db.commit()
    return jsonify({"name": name, "position": len(BUILTIN) + bp.position,
                    "digest": digest}), 201


@v1.delete("/buildpacks/<name>")
@requires(Permission.PLATFORM_ADMIN)
def delete_buildpack(name: str):
    ident = current_identity()
    bp = g.db.scalar(select(RegisteredBuildpack).where(RegisteredBuildpack.name == name))
    if bp is None:
        raise NotFound(f"there is no registered buildpack named {name!r}: "
                       "'paas buildpacks' lists them.")
    g.db.delete(bp)
    events.record(g.db, "buildpack.deleted", ident.name, name=name)
    g.db.commit()
    return jsonify({"deleted": name})
