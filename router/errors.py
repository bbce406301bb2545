"""Errors of the router. Every one is a :class:`RouterError` whose message is a sentence.

RouterError
 ├── NginxNotFoundError   the nginx binary is missing (``.binary``)
 ├── NginxConfigError     ``nginx -t`` rejected a config (``.output``)
 └── NginxStartError      nginx did not come up (``.address``, ``.reason``, ``.log``)
"""

from __future__ import annotations


class RouterError(Exception):
    """Root of the router's errors."""


class NginxNotFoundError(RouterError):
    def __init__(self, binary: str) -> None:
        self.binary = binary
        super().__init__(
            f"nginx not found: {binary!r} is not an executable on PATH or in /usr/sbin; "
            "install nginx (apt-get install nginx) or set PAAS_NGINX_BINARY to its path"
        )


class NginxConfigError(RouterError):
    def __init__(self, path: str, output: str) -> None:
        self.path = path
        self.output = output
        super().__init__(f"nginx rejected the config {path}: {output.strip()}")


class NginxStartError(RouterError):
    def __init__(
        self, message: str, *, address: str | None = None, reason: str = "", log: str = ""
    ) -> None:
        self.address = address
        self.reason = reason
        self.log = log
        super().__init__(message)
