"""The integration harness: one real platform (Docker, Redis, nginx, Celery) per session."""

from __future__ import annotations

import shutil

import docker
import pytest

from launcher.sandbox import Sandbox


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.nodeid:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def platform():
    if shutil.which("nginx") is None and not shutil.which("/usr/sbin/nginx"):
        pytest.fail("nginx is missing: run 'make test' (it installs what the tests need).")
    try:
        docker.from_env().ping()
    except Exception as e:
        pytest.fail(f"the Docker engine is not reachable ({e}): run 'make test'.")
    # Disk is sampled every 5 s (30 s by default) so the disk-quota test is short; the app
    # iso-gvisor runs under gVisor (test_isolation).
    sandbox = Sandbox(start_timeout=12.0, stats_disk_interval=5.0,
                      container_runtime_apps="iso-gvisor=runsc,iso-gvisor-build=runsc")
    try:
        sandbox.start()
    except BaseException:
        print(sandbox.logs())
        sandbox.close()
        raise
    yield sandbox
    sandbox.close()


@pytest.fixture
def dump_logs_on_failure(platform, request):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(platform.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
