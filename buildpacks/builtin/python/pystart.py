"""The start command the Python buildpack infers: a Django project with gunicorn installed
gets ``gunicorn <project>.wsgi``. Pure apart from reading the app's files; standard library
only (it runs in the staging container).
"""

from __future__ import annotations

import os
import re

_SETTINGS = re.compile(r"""DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([A-Za-z_][\w.]*)['"]""")
_NAME = re.compile(r"^[A-Za-z_]\w*$")


def django_project(build: str) -> str | None:
    """The package holding ``wsgi.py`` of a Django project at the app's root, or None.

    Needs ``manage.py`` at the root; the package is the one its DJANGO_SETTINGS_MODULE names
    (``mysite.settings`` -> ``mysite``), else the only top-level folder with a wsgi.py.
    """
    manage = os.path.join(build, "manage.py")
    if not os.path.isfile(manage):
        return None
    with open(manage, encoding="utf-8", errors="replace") as f:
        match = _SETTINGS.search(f.read())
    if match:
        package = match.group(1).split(".")[0]
        if os.path.isfile(os.path.join(build, package, "wsgi.py")):
            return package
    found = sorted(name for name in os.listdir(build)
                   if _NAME.match(name) and os.path.isfile(os.path.join(build, name, "wsgi.py")))
    return found[0] if len(found) == 1 else None


def django_command(project: str) -> str:
    return f"gunicorn {project}.wsgi --bind 0.0.0.0:$PORT"


def release_yaml(command: str | None) -> str:
    """The bin/release YAML, written by hand (the stack has no YAML library)."""
    if not command:
        return "--- {}\n"
    quoted = command.replace("\\", "\\\\").replace('"', '\\"')
    return f'---\ndefault_process_types:\n  web: "{quoted}"\n'
