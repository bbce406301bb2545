"""The platform's secret key and the envelope secrets travel and rest in.

One key per platform (``Settings.secret_key_file``, default ``<data_dir>/secret.key``, or
the key itself in ``PAAS_SECRET_KEY``): 32 random bytes as a Fernet key (AES-128-CBC with an
HMAC-SHA256, from ``cryptography``). Every process that handles a secret loads it: the
controller and the health manager (env values and TLS keys in the database, start messages),
the agents (env values of start and task messages) and the router (TLS keys).

An envelope is text: ``paas-sealed:v1:`` then the Fernet token. The prefix names the format,
so a later one can be told apart, and a value that is not sealed is never mistaken for one.

Errors, all :class:`SecretBoxError` with a sentence for the operator:

- :class:`SecretKeyError`: the key is missing or is not a key.
- :class:`SealedValueError`: an envelope is damaged or was sealed with another key.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

PREFIX = "paas-sealed:v1:"
KEY_ENV = "PAAS_SECRET_KEY"


class SecretBoxError(Exception):
    pass


class SecretKeyError(SecretBoxError):
    pass


class SealedValueError(SecretBoxError):
    pass


def is_sealed(value: object) -> bool:
    """True if ``value`` is an envelope (of any version this module knows)."""
    return isinstance(value, str) and value.startswith(PREFIX)


class SecretBox:
    """Seals and opens text and JSON values with the platform key."""

    def __init__(self, key: str | bytes, source: str = "the platform secret key") -> None:
        self.source = source
        try:
            self._fernet = Fernet(key.strip() if isinstance(key, bytes) else key.strip().encode())
        except (ValueError, TypeError) as e:
            raise SecretKeyError(
                f"{source} is not a secret key (32 random bytes in URL-safe base64, as "
                "'paas-admin migrate' writes it): restore the platform's key there, or remove "
                "it on a platform that holds no secrets yet to have a new one made.") from e

    @classmethod
    def generate(cls) -> SecretBox:
        return cls(Fernet.generate_key(), "a new key")

    def seal(self, text: str) -> str:
        return PREFIX + self._fernet.encrypt(text.encode()).decode("ascii")

    def open(self, envelope: str) -> str:
        if not is_sealed(envelope):
            raise SealedValueError(
                "a value the platform expected sealed is not (it does not start with "
                f"{PREFIX!r}): it was written by something other than the platform.")
        try:
            return self._fernet.decrypt(envelope[len(PREFIX):].encode("ascii")).decode()
        except (InvalidToken, UnicodeError) as e:
            raise SealedValueError(
                f"a sealed value cannot be opened with {self.source}: it was sealed with "
                "another key or is damaged. Give every platform process the same key "
                "(PAAS_SECRET_KEY_FILE or PAAS_SECRET_KEY).") from e

    def seal_json(self, value: Any) -> str:
        return self.seal(json.dumps(value, sort_keys=True, separators=(",", ":")))

    def open_json(self, envelope: str) -> Any:
        return json.loads(self.open(envelope))


def key_path(settings: Any) -> Path:
    """Where the key file of ``settings`` is (``secret_key_file`` or ``<data_dir>/secret.key``)."""
    return Path(settings.secret_key_file or Path(settings.data_dir) / "secret.key")


def ensure_key(settings: Any) -> Path:
    """Make the key file (0600, its folder 0700 if new) unless there is one or the key comes
    from ``PAAS_SECRET_KEY``. Returns the file's path."""
    path = key_path(settings)
    if settings.secret_key or path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path  # another process made it meanwhile
    with os.fdopen(fd, "wb") as f:
        f.write(Fernet.generate_key() + b"\n")
    return path


def load_box(settings: Any) -> SecretBox:
    """The platform's box, from ``PAAS_SECRET_KEY`` (``settings.secret_key``) or the file."""
    if settings.secret_key:
        return SecretBox(settings.secret_key, KEY_ENV)
    path = key_path(settings)
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        raise SecretKeyError(
            f"the platform secret key {path} is missing: run 'paas-admin migrate' (or make up), "
            "which makes it, on the controller's host, and give every process the same file "
            "(PAAS_SECRET_KEY_FILE) or key (PAAS_SECRET_KEY).") from None
    except OSError as e:
        raise SecretKeyError(f"the platform secret key {path} cannot be read ({e.strerror}): "
                             "run the process as the user that owns it.") from e
    return SecretBox(key, f"the platform secret key {path}")


def hide_arguments(command: str) -> str:
    """What events and logs keep of a command line: its program, and "(arguments hidden)"
    if it has more (arguments and leading ``NAME=value`` words may hold secrets)."""
    try:
        words = shlex.split(command)
    except ValueError:  # unbalanced quotes: the shell will say so; words are enough here
        words = command.split()
    program = next((w for w in words if "=" not in w), "")
    if not program or len(program) > 128:
        return "(command hidden)"
    return program if words == [program] else f"{program} (arguments hidden)"
