"""The controller's blobstore: writes (atomic: a temp file, then a rename) and deletes.

Where each kind of blob lives, and the check that a key stays inside the store, are
:mod:`contracts.blobstore`'s, shared with the stager.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import BinaryIO

from contracts.blobstore import BlobRoot

CHUNK = 1024 * 1024


class Blobstore(BlobRoot):
    def put_stream(self, key: str, stream: BinaryIO, limit: int | None = None) -> tuple[str, int]:
        """Store ``stream`` under ``key``; return its sha256 and size."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if limit is not None and size > limit:
                        raise OverflowError(size)
                    digest.update(chunk)
                    out.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
        return digest.hexdigest(), size

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
