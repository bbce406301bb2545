"""``paas-controller``: migrate the database, then serve the API with gunicorn.

The workers are gevent's: each connection is a greenlet, not a thread, so a log follow (which
lasts as long as its client) or a slow client costs a few kilobytes, and a worker serves up to
``api_worker_connections`` of them. gevent patches the standard library's sockets, locks and
sleeps in :func:`main`, before anything else is imported, so that redis-py, kombu (Celery's
publisher) and SQLAlchemy's pool all wait cooperatively. Slow clients are bounded twice: the
request line and headers must come within ``api_header_timeout`` (gunicorn's keep-alive
timeout, which gevent's worker applies to reading every request's head), and every later read
of a body or write of a response within ``api_io_timeout`` (the connection's socket timeout).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contracts import settings as settings_mod
from contracts.settings import Settings

if TYPE_CHECKING:
    import socket

    from flask import Flask
    from gunicorn.app.base import BaseApplication

# prometheus_client's multiprocess mode (see controller.metrics): each worker writes its
# counters to files in this folder, and /metrics sums them. The variable is read once, when
# prometheus_client is imported, so nothing here may import it before main() sets it.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_metrics_dir(settings: Settings) -> Path:
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:  # the operator chose one (and empties it between runs)
        return Path(folder)
    path = Path(settings.data_dir) / "metrics" / f"controller-{settings.api_port}"
    shutil.rmtree(path, ignore_errors=True)  # counters start from zero with the service
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def raise_open_files(settings: Settings) -> int:
    """Let each worker hold its connections: a socket each, and a Redis connection more for a
    log follow. Raises the soft limit of open files towards the hard one (1,024 by default
    on Linux, too few for one worker's ``api_worker_connections``); returns the limit."""
    import resource

    want = settings.api_worker_connections * 2 + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < want:
        logging.getLogger("paas.controller").warning(
            "open files are limited to %d (hard limit): a worker may refuse connections "
            "before api_worker_connections (%d); raise the limit (ulimit -Hn)", new,
            settings.api_worker_connections)
    return new


def worker_exited(pid: int) -> None:
    """gunicorn ``child_exit`` hook: drop a dead worker's live gauges (counters stay)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


def _application(options: dict[str, Any]) -> BaseApplication:
    """The gunicorn application serving the API with ``options`` (imported here, after gevent
    patched the standard library)."""
    from gunicorn.app.base import BaseApplication

    class _Gunicorn(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            # Imported in the worker, after main() chose the metrics folder (see
            # controller.metrics: prometheus_client reads it once, at import).
            from controller.app import create_app

            app = create_app()
            # What is alive now lives as long as the worker: keep it out of the collector's
            # full passes, which a busy log follow triggers every few seconds (a pass over the
            # whole app took 100-300 ms of a loaded worker, a stall every follower saw).
            gc.freeze()
            return app

    return _Gunicorn()


def api_worker(io_timeout: float) -> type:
    """gunicorn's gevent worker, with ``io_timeout`` on every client connection, answering a
    request it cannot parse with a JSON sentence (gunicorn's own answer is an HTML page)."""
    from gunicorn import util
    from gunicorn.http import errors as http_errors
    from gunicorn.workers.base_async import AsyncWorker
    from gunicorn.workers.ggevent import GeventWorker

    class ApiWorker(GeventWorker):
        def handle(self, listener: socket.socket, client: socket.socket,
                   addr: tuple[str, int]) -> None:
            # GeventWorker.handle would make the socket blocking without a timeout; a client
            # that stops reading or sending is dropped after io_timeout instead.
            client.settimeout(io_timeout)
            AsyncWorker.handle(self, listener, client, addr)

        def handle_error(self, req: Any, client: socket.socket, addr: Any,
                         exc: BaseException) -> None:
            if not isinstance(exc, http_errors.ParseException):
                super().handle_error(req, client, addr, exc)
                return
            self.log.warning("invalid request from %s: %s", (addr or ("",))[0], exc)
            status, reason, sentence = parse_error_answer(exc, http_errors)
            try:
                util.write_nonblock(client, json_response(status, reason, sentence))
            except OSError:
                self.log.debug("could not send the error answer")

    return ApiWorker


def parse_error_answer(exc: BaseException, errors: Any) -> tuple[int, str, str]:
    """Status, reason and sentence for a request gunicorn could not parse."""
    if isinstance(exc, errors.LimitRequestLine):
        return (414, "URI Too Long", "the request's URL is longer than the controller accepts "
                "(4094 bytes): send a shorter one.")
    if isinstance(exc, errors.LimitRequestHeaders):
        return (431, "Request Header Fields Too Large", "the request's headers are larger than "
                "the controller accepts: send fewer or shorter ones.")
    return 400, "Bad Request", f"the request is not valid HTTP ({exc}): send it again as HTTP/1.1."


def json_response(status: int, reason: str, sentence: str) -> bytes:
    """A whole HTTP/1.1 response (that closes the connection) carrying ``{"error": sentence}``."""
    body = json.dumps({"error": sentence}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "bind": f"{settings.api_host}:{settings.api_port}",
        "workers": settings.api_workers,
        "worker_class": api_worker(settings.api_io_timeout),
        "worker_connections": settings.api_worker_connections,
        # The gevent worker bounds reading each request's line and headers by this.
        "keepalive": max(1, settings.api_header_timeout),
        "timeout": 120,
        "graceful_timeout": 5,
        "accesslog": None,
        "loglevel": "info",
        "control_socket_disable": True,
        "child_exit": lambda _server, worker: worker_exited(worker.pid),
    }


def main() -> None:
    from gevent import monkey

    monkey.patch_all()  # first: SQLAlchemy, redis-py and kombu must get gevent's locks
    from controller.admin import migrate

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_mod.load()
    migrate(settings)
    prepare_metrics_dir(settings)
    raise_open_files(settings)
    _application(gunicorn_options(settings)).run()


if __name__ == "__main__":
    main()
