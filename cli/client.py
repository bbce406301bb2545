"""The controller API, as the CLI sees it: every failure becomes a sentence."""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import click
import requests
import urllib3

from cli.config import Config


class ApiError(click.ClickException):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# Following an event stream: the server sends ": ping" every 10 s of quiet, so a connection
# silent for longer has died; a dropped one is taken up again from the last event received.
STREAM_READ_TIMEOUT = 35.0
STREAM_LONG_ENOUGH = 30.0  # seconds: a stream open that long which ends was no failure
STREAM_TRIES = 4  # reconnections in a row before giving up
STREAM_BACKOFF_MAX = 5.0
COMMENT = ":"  # the type of the events that stand for comment lines (``events(comments=True)``)


@dataclass(frozen=True)
class StreamEvent:
    """One server-sent event: its id (the stream position), type and JSON data."""

    id: str | None
    type: str
    data: dict[str, Any] = field(default_factory=dict)


class SseParser:
    """Server-sent events, fed one line at a time (the WHATWG event-stream rules): ``id``,
    ``event``, ``data`` (several lines are joined by newlines), ``retry`` (milliseconds) and
    comment lines; a blank line ends an event."""

    def __init__(self) -> None:
        # The id of the last event dispatched: what a reconnection resumes after. An id line
        # waits in _id until its event is complete, so a connection cut in the middle of an
        # event resumes before it and the event is sent again whole.
        self.last_id: str | None = None
        self.retry_ms: int | None = None
        self._id: str | None = None
        self._type = ""
        self._data: list[str] = []

    def reset(self) -> None:
        """A new connection: a half-received event is forgotten, its id too (the last
        dispatched id and the retry stay)."""
        self._type, self._data, self._id = "", [], self.last_id

    def feed(self, line: str) -> StreamEvent | None:
        """The event this line completes, a comment as an event of type ``COMMENT``, or
        None."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return StreamEvent(self.last_id, COMMENT, {"text": line[1:].strip()})
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None  # unknown fields are ignored

    def _dispatch(self) -> StreamEvent | None:
        self.last_id = self._id
        type_, data = self._type or "message", self._data
        self.reset()
        if not data:
            return None
        text = "\n".join(data)
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        return StreamEvent(self.last_id, type_,
                           parsed if isinstance(parsed, dict) else {"text": text})


_EOL = re.compile(rb"\r\n|\r|\n")


def split_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """The lines of a byte stream cut anywhere (CRLF, LF or CR ends a line; a CR at the end of
    a chunk waits for the next, which may start with its LF)."""
    pending = b""
    first = True
    for chunk in chunks:
        pending += chunk
        start = 0
        for end in _EOL.finditer(pending):
            if end.group() == b"\r" and end.end() == len(pending):
                break
            line = pending[start:end.start()].decode("utf-8", "replace")
            if first:
                line, first = line.removeprefix("\ufeff"), False
            yield line
            start = end.end()
        pending = pending[start:]


def _chunks(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives (chunked or not): never waits for more than is there."""
    while True:
        chunk = response.raw.read1(65536)
        if not chunk:
            return
        yield chunk


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

    def events(self, path: str, last_event_id: str | None = None, *,
               deadline: float | None = None, comments: bool = False,
               ) -> Iterator[StreamEvent]:
        """The server-sent events at ``path``, after ``last_event_id`` (None: from now on).

        A dropped connection is opened again with ``Last-Event-ID`` (the last event received),
        after the server's ``retry`` time, doubling, a few times in a row at most; then an
        ApiError says so. The stream ends only when ``deadline`` (``time.monotonic()``) has
        passed while it waited; a caller that has what it waited for stops iterating.
        ``comments``: also yield comment lines (the server's pings), as events of type
        ``COMMENT``, so a caller may look at the clock or the state between events.
        """
        parser = SseParser()
        parser.last_id = last_event_id
        failures = 0
        while True:
            read_timeout = STREAM_READ_TIMEOUT
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                read_timeout = min(read_timeout, left + 0.05)
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if parser.last_id:
                headers["Last-Event-ID"] = parser.last_id
            try:
                response = self.request("GET", path, stream=True, headers=headers,
                                        timeout=(10, read_timeout))
            except ApiError as e:
                if e.status is not None and e.status < 500 and e.status != 429:
                    raise  # not found, forbidden...: asking again will not help
                reason = e.message
            else:
                parser.reset()
                opened = time.monotonic()
                try:
                    for line in split_lines(_chunks(response)):
                        event = parser.feed(line)
                        if event is not None and (event.type != COMMENT or comments):
                            failures = 0
                            yield event
                        if deadline is not None and time.monotonic() >= deadline:
                            return
                    reason = "the controller ended the stream"
                    if time.monotonic() - opened > STREAM_LONG_ENOUGH:
                        failures = 0  # it ends a long follow now and then: resume it
                except (requests.RequestException, urllib3.exceptions.HTTPError,
                        OSError) as e:
                    reason = f"the connection to the controller broke ({type(e).__name__})"
                finally:
                    response.close()
            if deadline is not None and time.monotonic() >= deadline:
                return
            failures += 1
            if failures > STREAM_TRIES:
                app = re.fullmatch(r"/apps/([^/?]+)/stream", path)
                look = f"'paas app {app.group(1)}'" if app else "'paas apps'"
                raise ApiError(f"lost the controller's event stream ({reason}) and could not "
                               f"get it back in {STREAM_TRIES} tries; what you started goes on "
                               f"without you watching: {look} shows where it stands.")
            wait = min((parser.retry_ms or 1000) / 1000 * 2 ** (failures - 1),
                       STREAM_BACKOFF_MAX)
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            time.sleep(wait)


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
