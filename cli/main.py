"""``paas``: push apps and look after them. The command group is :data:`cli.base.main`;
each module below adds its commands to it."""

from __future__ import annotations

from cli import accounts, apps, logs, observe, routes, runtime  # noqa: F401  (commands)
from cli.base import main
from cli.run import run

main.add_command(run)

__all__ = ["main"]

if __name__ == "__main__":
    main()
