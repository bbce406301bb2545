"""Build the stack images when they are missing or their recipe changed.

``python -m launcher.stack`` prints nothing when both images exist.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import resources

import docker
import docker.errors

from contracts import stack


def missing_images(client: docker.DockerClient) -> list[str]:
    missing = []
    for tag in (stack.run_image(), stack.build_image()):
        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound:
            missing.append(tag)
    return missing


def ensure(client: docker.DockerClient) -> None:
    if not missing_images(client):
        return
    script = resources.files("contracts") / "stack_recipe" / "build.sh"
    with resources.as_file(script) as path:
        result = subprocess.run(["bash", str(path), stack.run_image(), stack.build_image()])
    if result.returncode != 0:
        raise SystemExit("setup: building the stack images failed (see the lines above).")


def prune_old(client: docker.DockerClient) -> None:
    """Untag stack images of earlier recipes that nothing stands on any more."""
    current = {stack.run_image(), stack.build_image()}
    for repo in (stack.RUN_REPO, stack.BUILD_REPO):
        for image in client.images.list(name=repo):
            for tag in image.tags:
                if tag in current:
                    continue
                try:
                    client.images.remove(tag)  # refused while droplets or containers use it
                except docker.errors.APIError:
                    pass


def main() -> None:
    client = docker.from_env()
    try:
        ensure(client)
        prune_old(client)
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
