"""Python buildpack: ``bin/compile BUILD CACHE ENV`` and ``bin/release BUILD``.

Runs inside the staging container with the stack's python3 (standard library only).

- The Python version the app asks for (runtime.txt / .python-version) is checked first: a
  major.minor match with the stack's is accepted, anything else fails at once.
- Dependencies go into BUILD/.venv, from the first of: requirements.txt; uv.lock (exported
  with uv); poetry.lock (exported with poetry and its export plugin); Pipfile.lock (read
  directly); the project itself (pyproject.toml / setup.py, installed with pip). uv and
  poetry are installed from PyPI into tool venvs in CACHE/tools, once.
- The venv is a layer keyed by what decides its content (the stack's Python, the install
  method and its files; every file of the app when the app itself or a folder of it is
  installed), and is also kept in CACHE, so a re-push whose dependencies did not change
  installs (and copies) nothing.
- bin/release infers ``gunicorn <project>.wsgi`` for a Django project with gunicorn installed
  and no Procfile ``web:``; otherwise it names no default.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass

import pipfile
import pystart
import pyversion

SKIP_DIRS = (".venv", ".paas", "__pycache__", ".git")
RELEASE_INFO = os.path.join(".paas", "python.json")  # compile -> release, inside BUILD
TOOLS = {"uv": ["uv"], "poetry": ["poetry", "poetry-plugin-export"]}
# A requirement line that installs something from the app's own files.
LOCAL_REQUIREMENT = re.compile(r"^(-e|--editable|\.|/|file:|-r|--requirement|-c|--constraint)"
                               r"|\s@\s*file:")
LOCAL_IN_LOCK = {
    "uv.lock": re.compile(r"""\b(?:editable|directory|path|virtual)\s*=\s*"(?!\.")"""),
    "poetry.lock": re.compile(r"""^type\s*=\s*"(?:directory|file)"$""", re.MULTILINE),
    "Pipfile.lock": re.compile(r'"(?:path|file)"\s*:|"editable"\s*:\s*true'),
}


class BuildFailed(Exception):
    """A sentence for the pusher: what went wrong and what to do."""


def say(text: str) -> None:
    print(f"-----> {text}", flush=True)


def note(text: str) -> None:
    print(f"       {text}", flush=True)


@dataclass(frozen=True)
class Method:
    """How this app's dependencies are installed, and the files that decide them."""

    name: str  # requirements | uv | poetry | pipenv | project
    files: tuple[str, ...]
    describe: str


def install_method(build: str) -> Method:
    def has(name: str) -> bool:
        return os.path.isfile(os.path.join(build, name))

    if has("requirements.txt"):
        return Method("requirements", ("requirements.txt",), "requirements.txt with pip")
    if has("uv.lock"):
        return Method("uv", ("uv.lock", "pyproject.toml"), "uv.lock (exported with uv)")
    if has("poetry.lock"):
        return Method("poetry", ("poetry.lock", "pyproject.toml"),
                      "poetry.lock (exported with poetry)")
    if has("Pipfile.lock"):
        return Method("pipenv", ("Pipfile.lock",), "Pipfile.lock with pip")
    if has("Pipfile"):
        raise BuildFailed("this app has a Pipfile but no Pipfile.lock: run 'pipenv lock' and "
                          "push the Pipfile.lock too.")
    return Method("project", ("pyproject.toml", "setup.py", "setup.cfg"),
                  "the project itself with pip")


def ignored_files(build: str, method: Method) -> list[str]:
    others = ("requirements.txt", "uv.lock", "poetry.lock", "Pipfile.lock")
    return [n for n in others if n not in method.files
            and os.path.isfile(os.path.join(build, n))]


def installs_app_files(build: str, method: Method) -> bool:
    """Whether the venv's content depends on the app's own files, not only its dep files."""
    if method.name == "project":
        return True
    path = os.path.join(build, method.files[0])
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if method.name == "requirements":
        return any(LOCAL_REQUIREMENT.search(line.strip()) for line in text.splitlines())
    return bool(LOCAL_IN_LOCK[method.files[0]].search(text))


def stack_python() -> tuple[str, tuple[int, int, int]]:
    """The stack's Python: this interpreter in the staging container; on the stager host (the
    fast path) the platform names the stack's in PAAS_STACK_PYTHON ("3.11.2 (main, ...)")."""
    given = os.environ.get("PAAS_STACK_PYTHON")
    if not given:
        return sys.version, tuple(sys.version_info[:3])  # type: ignore[return-value]
    numbers = given.split()[0].split(".")
    return given, (int(numbers[0]), int(numbers[1]), int(numbers[2]))


# Bumped whenever this buildpack lays the venv out differently, so old layers are not reused.
LAYOUT = "venv-without-pip-1"


def dependency_key(build: str, method: Method) -> str:
    """A digest of what the virtualenv is made from (see the module's docstring)."""
    digest = hashlib.sha256(f"{LAYOUT}\0{stack_python()[0]}\0{method.name}\0".encode())
    for name in method.files:
        path = os.path.join(build, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                digest.update(name.encode() + b"\0" + f.read() + b"\0")
    if installs_app_files(build, method):
        for root, dirs, files in os.walk(build):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
            for name in sorted(files):
                path = os.path.join(root, name)
                digest.update(os.path.relpath(path, build).encode() + b"\0")
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as f:
                        digest.update(f.read())
    return digest.hexdigest()[:16]


def layers_present() -> set[str]:
    try:
        with open(os.environ.get("PAAS_LAYERS_PRESENT", "/tmp/paas/layers-present")) as f:
            return {line.strip() for line in f if line.strip()}
    except OSError:
        return set()


def run(cmd: list[str], **kwargs) -> int:
    return subprocess.run(cmd, **kwargs).returncode


def pip_command(venv: str, cache: str) -> list[str]:
    return [os.path.join(venv, "bin", "pip"), "install", "--disable-pip-version-check",
            "--no-input", "--progress-bar", "off", "--cache-dir", os.path.join(cache, "pip")]


def tool(cache: str, name: str) -> str:
    """The path of ``name``'s command from its tool venv in CACHE/tools (installed once)."""
    venv = os.path.join(cache, "tools", f"{name}-py{sys.version_info[0]}{sys.version_info[1]}")
    command = os.path.join(venv, "bin", name)
    if os.path.isfile(os.path.join(venv, ".complete")) and os.access(command, os.X_OK):
        return command
    say(f"Installing {name} from PyPI into the build cache")
    shutil.rmtree(venv, ignore_errors=True)
    if run([sys.executable, "-m", "venv", venv]) != 0 or \
            run([*pip_command(venv, cache), "--quiet", *TOOLS[name]]) != 0:
        shutil.rmtree(venv, ignore_errors=True)
        raise BuildFailed(f"could not install {name} from PyPI (pip's error is above): push "
                          "again; if it persists, use a requirements.txt instead.")
    open(os.path.join(venv, ".complete"), "w").close()
    return command


def exported_requirements(build: str, cache: str, method: Method, work: str) -> str:
    """A requirements file for the lock-file methods, written to ``work``."""
    target = os.path.join(work, "requirements.txt")
    hashes = not installs_app_files(build, method)
    if method.name == "pipenv":
        with open(os.path.join(build, "Pipfile.lock"), encoding="utf-8") as f:
            try:
                text = pipfile.pipfile_lock_requirements(f.read())
            except pipfile.LockError as e:
                raise BuildFailed(str(e)) from e
        with open(target, "w") as f:
            f.write(text)
        return target
    if method.name == "uv":
        command = [tool(cache, "uv"), "export", "--frozen", "--no-dev", "--no-emit-project",
                   "--format", "requirements-txt", "--no-header", "--quiet",
                   "--output-file", target]
        if not hashes:
            command.append("--no-hashes")
        fix = "run 'uv lock' and push the updated uv.lock"
    else:
        command = [tool(cache, "poetry"), "export", "--format", "requirements.txt",
                   "--only", "main", "--output", target]
        if not hashes:
            command.append("--without-hashes")
        fix = "run 'poetry lock' and push the updated poetry.lock"
    env = dict(os.environ, UV_CACHE_DIR=os.path.join(cache, "uv"), UV_PYTHON_DOWNLOADS="never",
               UV_NO_PROGRESS="1", POETRY_CACHE_DIR=os.path.join(cache, "poetry"),
               POETRY_NO_INTERACTION="1", POETRY_VIRTUALENVS_CREATE="false")
    say(f"Exporting the locked requirements from {method.files[0]}")
    if run(command, cwd=build, env=env) != 0:
        raise BuildFailed(f"exporting the requirements from {method.files[0]} failed (the "
                          f"error is above): {fix}.")
    return target


def stack_pip() -> str | None:
    """The pip wheel the stack ships for ensurepip; pip runs straight from it."""
    wheels = sorted(glob.glob("/usr/share/python-wheels/pip-*.whl"))
    return os.path.join(wheels[-1], "pip") if wheels else None


def app_pip_command(venv: str, cache: str) -> list[str]:
    """pip installing into ``venv``. The venv itself gets no pip (7 s and 17 MB saved) when
    the stack's pip can install into it from outside (``pip --python``)."""
    outside = stack_pip()
    if outside is None:
        if run([sys.executable, "-m", "venv", venv]) != 0:
            raise BuildFailed("could not create a virtualenv with the stack's Python.")
        return pip_command(venv, cache)
    if run([sys.executable, "-m", "venv", "--without-pip", venv]) != 0:
        raise BuildFailed("could not create a virtualenv with the stack's Python.")
    return [sys.executable, outside, "--python", os.path.join(venv, "bin", "python"),
            *pip_command(venv, cache)[1:]]


def install(build: str, cache: str, venv: str, method: Method) -> None:
    pip = app_pip_command(venv, cache)
    if method.name == "requirements":
        say("Installing requirements with pip")
        target = ["-r", os.path.join(build, "requirements.txt")]
    elif method.name == "project":
        say("Installing the project with pip")
        target = [build]
    else:
        work = os.path.join("/tmp", "python-buildpack")
        os.makedirs(work, exist_ok=True)
        requirements = exported_requirements(build, cache, method, work)
        say(f"Installing the locked requirements from {method.files[0]} with pip")
        target = ["-r", requirements]
    if run(pip + target, cwd=build) != 0:
        raise BuildFailed(f"installing the app's dependencies failed (pip's error is above): "
                          f"fix {method.files[0]} and push again.")


def venv_commands(venv: str) -> list[str]:
    folder = os.path.join(venv, "bin")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def save_to_cache(venv: str, cache: str, key: str, commands: list[str]) -> None:
    """Remember this venv's key and commands for the next build; best effort.

    The venv itself is not copied: the platform keeps it as a layer under the same key
    (and lists the keys it has in layers-present), which is the cache that matters.
    """
    cached = os.path.join(cache, f"venv-{key}")
    try:
        for old in os.listdir(cache):
            path = os.path.join(cache, old)
            if old.startswith("venv-") and ".tmp-" not in old:
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)
        with open(f"{cached}.json", "w") as f:
            json.dump({"commands": commands}, f)
    except OSError as e:
        note(f"(could not save the dependencies to the build cache: {e})")


def cached_commands(cache: str, key: str) -> list[str] | None:
    try:
        with open(os.path.join(cache, f"venv-{key}.json")) as f:
            return list(json.load(f)["commands"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


PROFILE = ('export PATH="$HOME/.venv/bin:$PATH"\n'
           "export PYTHONUNBUFFERED=1\n"
           'export VIRTUAL_ENV="$HOME/.venv"\n')


def _prepare(build: str) -> tuple[Method, str]:
    """Checks and clean-up shared by both paths; the install method and the venv key."""
    say("Python app detected")
    say(pyversion.check(pyversion.requested(build), stack_python()[1]))
    method = install_method(build)
    for name in ignored_files(build, method):
        note(f"({name} is not read: dependencies come from {method.describe})")
    venv = os.path.join(build, ".venv")
    if os.path.lexists(venv):
        note("(.venv in the upload is replaced by one built on the stack)")
        if os.path.isdir(venv) and not os.path.islink(venv):
            shutil.rmtree(venv)
        else:
            os.remove(venv)
    return method, dependency_key(build, method)


def compile_app(build: str, cache: str) -> None:
    method, key = _prepare(build)
    venv = os.path.join(build, ".venv")
    started = time.monotonic()
    commands = cached_commands(cache, key)
    if key in layers_present() and commands is not None:
        say("Dependencies unchanged: reusing them from the build cache")
    else:
        install(build, cache, venv, method)
        commands = venv_commands(venv)
        save_to_cache(venv, cache, key, commands)
    say(f"Dependencies ready in {time.monotonic() - started:.1f} s")
    _finish(build, key, commands)


NEEDS_CONTAINER = 100  # fast-compile's exit code for "run the real compile"


def fast_compile(build: str, layers: dict[str, str]) -> bool:
    """On the stager host, with no container: only when the venv layer for this app's
    dependencies is stored already (``layers``: key -> its tarball). Runs no app code and
    reaches no network; reads the venv's commands from the stored layer."""
    method, key = _prepare(build)
    if key not in layers:
        return False
    try:
        with tarfile.open(layers[key]) as tar:
            commands = sorted({m.name.split("/")[2] for m in tar.getmembers()
                               if m.name.startswith(".venv/bin/") and m.name.count("/") == 2})
    except (OSError, tarfile.TarError, IndexError):
        return False
    say("Dependencies unchanged: reusing them from the build cache")
    _finish(build, key, commands)
    return True


def _finish(build: str, key: str, commands: list[str] | None) -> None:
    # The virtualenv is a layer of its own, stored once per key and reused while the
    # dependencies are unchanged (the platform then need not copy it at all).
    os.makedirs(os.path.join(build, ".paas"), exist_ok=True)
    with open(os.path.join(build, ".paas", "layers"), "w") as f:
        f.write(f".venv {key}\n")
    with open(os.path.join(build, RELEASE_INFO), "w") as f:
        json.dump({"venv_commands": commands}, f)
    profile = os.path.join(build, ".profile.d")
    os.makedirs(profile, exist_ok=True)
    with open(os.path.join(profile, "python.sh"), "w") as f:
        f.write(PROFILE)
    command = default_command(build)
    if command:
        say(f"Django project: the default start command is '{command}'")


def default_command(build: str) -> str | None:
    """``gunicorn <project>.wsgi`` for a Django project with gunicorn in its venv."""
    project = pystart.django_project(build)
    if project is None:
        return None
    try:
        with open(os.path.join(build, RELEASE_INFO)) as f:
            commands = json.load(f).get("venv_commands") or []
    except (OSError, ValueError, AttributeError):
        commands = []
    return pystart.django_command(project) if "gunicorn" in commands else None


def fail(message: str) -> None:
    print(f"!     {message}", flush=True)
    sys.exit(1)


def compile_main(argv: list[str]) -> None:
    if len(argv) < 2:
        fail("usage: bin/compile BUILD_DIR CACHE_DIR [ENV_DIR]")
    try:
        compile_app(argv[0], argv[1])
    except (BuildFailed, pyversion.VersionError) as e:
        fail(str(e))


def fast_compile_main(argv: list[str]) -> None:
    """bin/fast-compile BUILD_DIR [KEY=LAYER_TARBALL ...]; exit 100: run bin/compile."""
    layers = dict(arg.split("=", 1) for arg in argv[1:] if "=" in arg)
    try:
        done = fast_compile(argv[0], layers)
    except (BuildFailed, pyversion.VersionError) as e:
        fail(str(e))
    release_to = os.environ.get("PAAS_RELEASE_FILE")
    if done and release_to:  # what bin/release would say, without a second interpreter
        with open(release_to, "w") as f:
            f.write(pystart.release_yaml(default_command(argv[0])))
    sys.exit(0 if done else NEEDS_CONTAINER)


def release_main(argv: list[str]) -> None:
    build = argv[0] if argv else "/app"
    sys.stdout.write(pystart.release_yaml(default_command(build)))
