"""``paas-controller``: migrate the database, then serve the API with gunicorn."""

from __future__ import annotations

import gc
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from contracts import settings as settings_mod
from contracts.settings import Settings
from controller.admin import migrate

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


def worker_exited(pid: int) -> None:
    """gunicorn ``child_exit`` hook: drop a dead worker's live gauges (counters stay)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


class _Gunicorn(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):  # noqa: ANN201
        # Imported in the worker, after main() chose the metrics folder (see
        # controller.metrics: prometheus_client reads it once, at import).
        from controller.app import create_app

        app = create_app()
        # What is alive now lives as long as the worker: keep it out of the collector's full
        # passes, which a busy log follow triggers every few seconds (a pass over the whole
        # app took 100-300 ms of a loaded worker, a stall every follower saw).
        gc.freeze()
        return app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_mod.load()
    migrate(settings)
    prepare_metrics_dir(settings)
    _Gunicorn({
        "bind": f"{settings.api_host}:{settings.api_port}",
        "workers": settings.api_workers,
        "worker_class": "gthread",
        "threads": 8,
        "timeout": 120,
        "graceful_timeout": 5,
        "accesslog": None,
        "loglevel": "info",
        "control_socket_disable": True,
        "child_exit": lambda _server, worker: worker_exited(worker.pid),
    }).run()


if __name__ == "__main__":
    main()
