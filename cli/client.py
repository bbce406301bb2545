"""The controller API, as the CLI sees it: every failure becomes a sentence."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import click
import requests

from cli.config import Config


class ApiError(click.ClickException):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Client:
    def __init__(self, config: Config, timeout: float = 30.0) -> None:
        if not config.target:
            raise ApiError("no API target set: run 'paas target URL' first "
                           "(make up prints the URL).")
        self.base = config.target.rstrip("/")
        self.token = config.token
        self.timeout = timeout
        self.http = requests.Session()
        if self.token:
            self.http.headers["Authorization"] = f"Bearer {self.token}"
            warn_plain_http(config, self.base)
        if config.team:
            self.http.headers["X-Paas-Team"] = config.team

    def request(self, method: str, path: str, *, stream: bool = False,
                timeout: float | None = None, **kwargs: Any) -> requests.Response:
        url = f"{self.base}/v1{path}"
        try:
            response = self.http.request(method, url, stream=stream,
                                         timeout=timeout or self.timeout, **kwargs)
        except requests.ConnectionError as e:
            raise ApiError(f"could not reach the controller at {self.base}: is the platform "
                           "running? Start it with 'make up', or point at another with "
                           "'paas target URL'.") from e
        except requests.Timeout as e:
            raise ApiError(f"the controller at {self.base} did not answer in time; "
                           "try again.") from e
        if response.status_code >= 400:
            raise ApiError(_error_message(response), response.status_code)
        return response

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs).json()

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self.request("PATCH", path, **kwargs).json()

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.request("PUT", path, **kwargs).json()

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs).json()

    def lines(self, path: str) -> Iterator[dict[str, Any]]:
        """A stream of JSON lines (the connection stays open until the server ends it)."""
        response = self.request("GET", path, stream=True, timeout=(10, 120))
        try:
            for raw in response.iter_lines():
                if raw:
                    yield json.loads(raw)
        except requests.RequestException as e:
            raise ApiError(f"the connection to the controller broke while following "
                           f"the output ({e}); 'paas app NAME' shows where things stand.") from e
        finally:
            response.close()


def sent_in_the_clear(target: str) -> bool:
    """True if a token sent to ``target`` crosses a network unencrypted: plain http to an
    address that is not this machine's loopback."""
    parts = urlsplit(target)
    if parts.scheme != "http":
        return False
    host = (parts.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a DNS name: it may lead anywhere


def warn_plain_http(config: Config, target: str) -> None:
    """Warn once per target (remembered in the config file) before the token goes out over
    plain http to another machine."""
    if not sent_in_the_clear(target) or target in config.warned_plain_http:
        return
    click.echo(f"Warning: paas sends your API token to {target} over plain http: anyone on the "
               "network between here and there can read it and act as you. Point at an "
               "https:// address of the controller (behind a TLS proxy) with 'paas target'. "
               "(Shown once for this target.)", err=True)
    config.warned_plain_http.append(target)
    stored = Config.load()  # not ``config``: its token may not be checked yet (paas login)
    if target not in stored.warned_plain_http:
        stored.warned_plain_http.append(target)
        stored.save()


def _error_message(response: requests.Response) -> str:
    try:
        body = response.json()
        message = body.get("error") or response.reason
    except ValueError:
        message = f"{response.status_code} {response.reason}"
    if response.status_code == 401:
        return f"not logged in: {message}"
    if response.status_code == 429 and "try again" not in message:
        wait = response.headers.get("Retry-After") or "a few"
        return f"{message}: the controller asks to slow down; try again in {wait} s."
    return message
