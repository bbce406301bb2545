"""Buildpack detection, Procfile parsing, and the pure parts of the built-in buildpacks
(their modules run in the staging container; here they are loaded from their folders)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

from buildpacks import procfile, registry
from buildpacks.errors import NoBuildpack


@pytest.mark.parametrize("marker", ["requirements.txt", "pyproject.toml", "setup.py"])
def test_python_apps_are_detected(tmp_path: Path, marker: str):
    (tmp_path / marker).write_text("")
    assert registry.detect(tmp_path).name == "python"


def test_a_folder_without_markers_gets_a_sentence(tmp_path: Path):
    (tmp_path / "index.txt").write_text("hi")
    with pytest.raises(NoBuildpack, match="no buildpack recognises this app.*requirements.txt"):
        registry.detect(tmp_path)


def test_marker_in_a_subfolder_does_not_count(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "requirements.txt").write_text("")
    with pytest.raises(NoBuildpack):
        registry.detect(tmp_path)


def test_named_buildpack_skips_detection(tmp_path: Path):
    assert registry.detect(tmp_path, "python").name == "python"
    with pytest.raises(NoBuildpack, match="no buildpack named 'cobol'"):
        registry.detect(tmp_path, "cobol")


def test_builtin_buildpacks_ship_their_compile_step():
    for bp in registry.BUILTIN:
        assert (bp.folder / "bin" / "compile").is_file()


def test_procfile_with_comments_and_blank_lines():
    text = "# processes\n\nweb: gunicorn app:app --bind 0.0.0.0:$PORT\nworker:  celery -A t\n" \
           "   \nnot a line\n"
    assert procfile.parse(text) == {"web": "gunicorn app:app --bind 0.0.0.0:$PORT",
                                    "worker": "celery -A t"}


def test_empty_procfile():
    assert procfile.parse("") == {}


# -- detection order ------------------------------------------------------------------------------
@pytest.mark.parametrize(("files", "expected"), [
    (["package.json"], "node"),
    (["index.html"], "static"),
    (["Staticfile"], "static"),
    (["Procfile"], "procfile"),
    (["Pipfile"], "python"),
    (["Pipfile.lock"], "python"),
    (["requirements.txt", "package.json", "index.html", "Procfile"], "python"),
    (["package.json", "index.html", "Procfile"], "node"),
    (["index.html", "Procfile"], "static"),
])
def test_detection_takes_the_first_buildpack_in_order(tmp_path: Path, files, expected):
    for name in files:
        (tmp_path / name).write_text("")
    assert registry.detect(tmp_path).name == expected


def test_registry_order_is_python_node_static_procfile():
    assert [bp.name for bp in registry.BUILTIN] == ["python", "node", "static", "procfile"]


def test_a_folder_without_markers_names_every_kind(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(NoBuildpack) as caught:
        registry.detect(tmp_path)
    for word in ("requirements.txt", "package.json", "index.html", "Procfile"):
        assert word in caught.value.message


def test_builtin_buildpacks_ship_executable_steps():
    for bp in registry.BUILTIN:
        for step in ("compile", "release"):
            path = Path(str(bp.folder / "bin" / step))
            assert path.is_file() and os.access(path, os.X_OK), f"{bp.name} bin/{step}"


@cache
def load(buildpack: str, module: str) -> ModuleType:
    """A module of a built-in buildpack, imported from its folder as the container does."""
    folder = str(registry.by_name(buildpack).folder)
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(folder)
        for name, mod in list(sys.modules.items()):  # leave no generic names behind
            if (getattr(mod, "__file__", None) or "").startswith(folder + os.sep):
                del sys.modules[name]


# -- node: semver ranges ------------------------------------------------------------------------
@pytest.mark.parametrize(("range_text", "version", "expected"), [
    ("20.11.1", "20.11.1", True),
    ("=20.11.1", "20.11.2", False),
    ("v20.11.1", "20.11.1", True),
    ("^20.10.0", "20.20.2", True),
    ("^20.10.0", "20.9.0", False),
    ("^20.10.0", "21.0.0", False),
    ("^0.2.3", "0.2.9", True),
    ("^0.2.3", "0.3.0", False),
    ("^0.0.3", "0.0.4", False),
    ("~20.11.1", "20.11.9", True),
    ("~20.11", "20.12.0", False),
    ("~20", "20.99.0", True),
    (">=18", "26.1.0", True),
    (">= 18.17.0", "18.16.0", False),
    (">18", "18.9.9", False),
    (">18", "19.0.0", True),
    ("<20", "19.99.0", True),
    ("<=20.1", "20.1.9", True),
    ("<=20.1", "20.2.0", False),
    (">=18 <21", "21.0.0", False),
    (">=18 <21", "20.5.0", True),
    ("20", "20.0.0", True),
    ("20.x", "20.20.2", True),
    ("20.x", "21.0.0", False),
    ("20.11.*", "20.11.7", True),
    ("*", "1.2.3", True),
    ("", "1.2.3", True),
    ("18 - 20", "20.99.1", True),
    ("18.1.0 - 20.1.0", "20.1.1", False),
    ("16 || 18 || >=22", "20.1.0", False),
    ("16 || 18 || >=22", "18.1.0", True),
    ("^20", "21.0.0-rc.1", False),
    (">=20.0.0-rc.1", "20.0.0-rc.2", True),
])
def test_semver_ranges(range_text: str, version: str, expected: bool):
    assert load("node", "semver").satisfies(version, range_text) is expected


def test_semver_picks_the_highest_match():
    semver = load("node", "semver")
    versions = ["18.20.4", "20.9.0", "20.11.1", "20.10.0", "21.7.3", "22.0.0-rc.1", "junk"]
    assert semver.max_satisfying(versions, "^20") == "20.11.1"
    assert semver.max_satisfying(versions, ">=18 <20 || 21.x") == "21.7.3"
    assert semver.max_satisfying(versions, "*") == "21.7.3"  # no pre-releases
    assert semver.max_satisfying(versions, ">=23") is None


@pytest.mark.parametrize("junk", ["lts/*", "latest", "20.x.1.2", "^^20", ">=banana"])
def test_semver_rejects_what_it_cannot_read(junk: str):
    semver = load("node", "semver")
    with pytest.raises(semver.InvalidRange):
        semver.parse_range(junk)


# -- node: versions, start command, layers ------------------------------------------------------
NODE_META = {"versions": {v: {"dist": {}} for v in ("18.20.4", "20.9.0", "20.18.1", "22.3.0")}}
NPM_META = {"versions": {
    "9.9.3": {"engines": {"node": "^14.17.0 || ^16.13.0 || >=18.0.0"}},
    "10.9.2": {"engines": {"node": "^18.17.0 || >=20.5.0"}},
    "11.6.0": {"engines": {"node": "^20.17.0 || >=22.9.0"}},
    "12.0.0-pre.1": {"engines": {"node": ">=22"}},
}}


def test_node_version_from_engines_or_the_default():
    nodepack = load("node", "nodepack")
    assert nodepack.resolve_node(nodepack.DEFAULT_NODE_RANGE, NODE_META) == "20.18.1"
    assert nodepack.resolve_node("^18 || ^20.0.0 <20.10", NODE_META) == "20.9.0"
    with pytest.raises(nodepack.BuildFailed, match="asks for Node.js '>=30'.*newest is 22.3.0"):
        nodepack.resolve_node(">=30", NODE_META)
    with pytest.raises(nodepack.BuildFailed, match="not a version range"):
        nodepack.resolve_node("lts/iron", NODE_META)


def test_npm_is_the_newest_that_supports_the_node_version():
    nodepack = load("node", "nodepack")
    assert nodepack.resolve_npm("20.18.1", None, NPM_META) == "11.6.0"
    assert nodepack.resolve_npm("20.9.0", None, NPM_META) == "10.9.2"
    assert nodepack.resolve_npm("16.20.0", None, NPM_META) == "9.9.3"
    assert nodepack.resolve_npm("20.18.1", "^10", NPM_META) == "10.9.2"


def test_node_start_command(tmp_path: Path):
    nodepack = load("node", "nodepack")
    assert nodepack.start_command({"scripts": {"start": "node app.js"}}, str(tmp_path)) \
        == "npm start"
    assert nodepack.start_command({}, str(tmp_path)) is None
    (tmp_path / "server.js").write_text("")
    assert nodepack.start_command({"scripts": {"test": "x"}}, str(tmp_path)) == "node server.js"


def test_node_release_prints_yaml_by_hand():
    import yaml

    nodepack = load("node", "nodepack")
    assert yaml.safe_load(nodepack.release_yaml('npm start -- --name "a\\b"')) == {
        "default_process_types": {"web": 'npm start -- --name "a\\b"'}}
    assert yaml.safe_load(nodepack.release_yaml(None)) == {}


def test_node_modules_key_follows_what_decides_them(tmp_path: Path):
    nodepack = load("node", "nodepack")
    (tmp_path / "package.json").write_text('{"dependencies": {"ms": "^2"}}')
    package = {"dependencies": {"ms": "^2"}}
    key = nodepack.modules_key(str(tmp_path), package, "20.1.0", "10.1.0")
    (tmp_path / "app.js").write_text("code changes do not matter")
    assert nodepack.modules_key(str(tmp_path), package, "20.1.0", "10.1.0") == key
    assert nodepack.modules_key(str(tmp_path), package, "20.2.0", "10.1.0") != key
    (tmp_path / "package-lock.json").write_text("{}")
    assert nodepack.modules_key(str(tmp_path), package, "20.1.0", "10.1.0") != key
    assert nodepack.local_references({"dependencies": {"lib": "file:lib"}})
    assert not nodepack.local_references(package)


# -- python: runtime.txt, install method, Django ------------------------------------------------
@pytest.mark.parametrize(("source", "text", "expected"), [
    ("runtime.txt", "python-3.11.6\n", (3, 11, 6)),
    ("runtime.txt", "python-3.11", (3, 11, None)),
    ("runtime.txt", "  3.12.1  ", (3, 12, 1)),
    (".python-version", "# pyenv\n\n3.11\n3.10\n", (3, 11, None)),
    (".python-version", "cpython-3.11.4", (3, 11, 4)),
])
def test_python_version_files_parse(source: str, text: str, expected: tuple):
    found = load("python", "pyversion").parse(text, source)
    assert (found.major, found.minor, found.patch) == expected


def test_python_version_files_that_do_not_parse():
    pyversion = load("python", "pyversion")
    assert pyversion.parse("\n# nothing\n", "runtime.txt") is None
    with pytest.raises(pyversion.VersionError, match="runtime.txt says 'python-3.eleven'"):
        pyversion.parse("python-3.eleven", "runtime.txt")
    with pytest.raises(pyversion.VersionError, match="'pypy3.10'"):
        pyversion.parse("pypy3.10", ".python-version")


def test_python_version_match_is_major_minor(tmp_path: Path):
    pyversion = load("python", "pyversion")
    (tmp_path / "runtime.txt").write_text("python-3.11.6\n")
    (tmp_path / ".python-version").write_text("3.8\n")  # runtime.txt comes first
    assert "accepted" in pyversion.check(pyversion.requested(str(tmp_path)), (3, 11, 2))
    assert "the stack's" in pyversion.check(None, (3, 11, 2))
    (tmp_path / "runtime.txt").unlink()
    with pytest.raises(pyversion.VersionError) as caught:
        pyversion.check(pyversion.requested(str(tmp_path)), (3, 11, 2))
    assert str(caught.value) == (
        "this app asks for Python 3.8 (.python-version) but the stack provides only Python "
        "3.11.2: change .python-version to 3.11 (or remove it) and push again.")


@pytest.mark.parametrize(("files", "method"), [
    (["requirements.txt", "uv.lock", "pyproject.toml"], "requirements"),
    (["uv.lock", "poetry.lock", "pyproject.toml"], "uv"),
    (["poetry.lock", "pyproject.toml"], "poetry"),
    (["Pipfile", "Pipfile.lock"], "pipenv"),
    (["pyproject.toml"], "project"),
    (["setup.py"], "project"),
])
def test_python_install_method(tmp_path: Path, files: list[str], method: str):
    for name in files:
        (tmp_path / name).write_text("")
    assert load("python", "pythonpack").install_method(str(tmp_path)).name == method


def test_python_venv_key(tmp_path: Path):
    pythonpack = load("python", "pythonpack")
    (tmp_path / "requirements.txt").write_text("flask\n")
    method = pythonpack.install_method(str(tmp_path))
    key = pythonpack.dependency_key(str(tmp_path), method)
    (tmp_path / "app.py").write_text("print('changed')")
    assert pythonpack.dependency_key(str(tmp_path), method) == key
    (tmp_path / "requirements.txt").write_text("flask\n-e ./lib\n")  # installs app files
    key = pythonpack.dependency_key(str(tmp_path), method)
    (tmp_path / "app.py").write_text("print('changed again')")
    assert pythonpack.dependency_key(str(tmp_path), method) != key
    (tmp_path / "uv.lock").write_text('source = { editable = "." }\n')
    assert not pythonpack.installs_app_files(str(tmp_path), pythonpack.Method(
        "uv", ("uv.lock", "pyproject.toml"), ""))


def test_a_pipfile_without_its_lock_is_refused(tmp_path: Path):
    pythonpack = load("python", "pythonpack")
    (tmp_path / "Pipfile").write_text("[packages]\n")
    with pytest.raises(pythonpack.BuildFailed, match="run 'pipenv lock'"):
        pythonpack.install_method(str(tmp_path))


def test_pipfile_lock_becomes_requirements():
    lock = {"default": {
        "flask": {"version": "==3.0.3", "hashes": ["sha256:aa", "sha256:bb"],
                  "markers": "python_version >= '3.8'"},
        "requests": {"version": "==2.32.3", "extras": ["socks"]},
        "lib": {"git": "https://example.invalid/lib.git", "ref": "abc123"},
        "local": {"path": ".", "editable": True},
    }, "develop": {"pytest": {"version": "==8.0.0"}}}
    assert load("python", "pipfile").pipfile_lock_requirements(json.dumps(lock)) == (
        "flask==3.0.3 ; python_version >= '3.8' --hash=sha256:aa --hash=sha256:bb\n"
        "git+https://example.invalid/lib.git@abc123#egg=lib\n"
        "-e .\n"
        "requests[socks]==2.32.3\n")


def test_django_project_is_found(tmp_path: Path):
    pystart = load("python", "pystart")
    assert pystart.django_project(str(tmp_path)) is None
    (tmp_path / "manage.py").write_text(
        'os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings.production")\n')
    assert pystart.django_project(str(tmp_path)) is None  # no mysite/wsgi.py yet
    (tmp_path / "mysite").mkdir()
    (tmp_path / "mysite" / "wsgi.py").write_text("")
    assert pystart.django_project(str(tmp_path)) == "mysite"
    assert pystart.django_command("mysite") == "gunicorn mysite.wsgi --bind 0.0.0.0:$PORT"


def test_django_release_needs_gunicorn_in_the_venv(fixtures: Path, tmp_path: Path):
    app = tmp_path / "app"
    app.mkdir()
    for path in (fixtures / "django-hello").rglob("*"):
        if path.is_file():
            (app / path.relative_to(fixtures / "django-hello")).parent.mkdir(exist_ok=True)
            (app / path.relative_to(fixtures / "django-hello")).write_bytes(path.read_bytes())
    release = str(registry.by_name("python").folder / "bin" / "release")

    def run_release() -> str:
        return subprocess.run([sys.executable, release, str(app)], capture_output=True,
                              text=True, check=True).stdout

    assert run_release() == "--- {}\n"  # gunicorn not known to be installed
    (app / ".paas").mkdir()
    (app / ".paas" / "python.json").write_text('{"venv_commands": ["gunicorn", "pip"]}')
    assert run_release() == ('---\ndefault_process_types:\n'
                             '  web: "gunicorn mysite.wsgi --bind 0.0.0.0:$PORT"\n')


# -- static -------------------------------------------------------------------------------------
def test_staticfile_parses():
    staticpack = load("static", "staticpack")
    assert staticpack.parse_staticfile("# site\n\nroot: public/ # served\nPushState: enabled\n") \
        == {"root": "public/", "pushstate": "enabled"}
    with pytest.raises(staticpack.BuildFailed, match="Staticfile line 1"):
        staticpack.parse_staticfile("public\n")


def test_static_root_stays_inside_the_app(tmp_path: Path):
    staticpack = load("static", "staticpack")
    (tmp_path / "public").mkdir()
    assert staticpack.web_root(str(tmp_path), {"root": "public/"}) == "public"
    assert staticpack.web_root(str(tmp_path), {}) == ""
    with pytest.raises(staticpack.BuildFailed, match="not a folder inside the app"):
        staticpack.web_root(str(tmp_path), {"root": "../etc"})
    with pytest.raises(staticpack.BuildFailed, match="has no folder dist/"):
        staticpack.web_root(str(tmp_path), {"root": "dist"})


def test_static_nginx_conf():
    staticpack = load("static", "staticpack")
    conf = staticpack.nginx_conf("/app/public", pushstate=True, port="8080")
    assert "listen 8080;" in conf and 'root "/app/public";' in conf
    assert "try_files $uri $uri/ /index.html;" in conf
    assert "pid /tmp/nginx.pid;" in conf and "daemon off;" in conf
    assert "Staticfile" not in conf  # only hidden when the app folder itself is served
    assert "location = /Staticfile" in staticpack.nginx_conf("/app")


def _run_fast_compile(app: Path, layers: dict[str, Path], stack: str,
                      release_file: Path | None = None) -> subprocess.CompletedProcess:
    script = Path(str(registry.by_name("python").folder / "bin" / "fast-compile"))
    env = {**os.environ, "PAAS_STACK_PYTHON": stack}
    if release_file is not None:
        env["PAAS_RELEASE_FILE"] = str(release_file)
    return subprocess.run(
        [sys.executable, str(script), str(app), *(f"{k}={v}" for k, v in layers.items())],
        capture_output=True, text=True, env=env)


def _django_app(root: Path) -> Path:
    (root / "mysite").mkdir(parents=True)
    (root / "manage.py").write_text("")
    (root / "mysite" / "wsgi.py").write_text("")
    (root / "requirements.txt").write_text("django\ngunicorn\n")
    return root


def test_fast_compile_uses_a_stored_layer_without_a_container(tmp_path):
    import tarfile

    stack = "3.11.2 (main, Mar 13 2023, 12:18:29) [GCC 12.2.0]"
    app = _django_app(tmp_path / "app")
    released = tmp_path / "release.yml"
    declined = _run_fast_compile(app, {}, stack, released)
    assert declined.returncode == 100  # nothing stored: the container must compile
    assert not (app / ".paas").exists() and not released.exists()  # and nothing was written

    pack = load("python", "pythonpack")
    os.environ["PAAS_STACK_PYTHON"] = stack
    try:
        key = pack.dependency_key(str(app), pack.install_method(str(app)))
    finally:
        del os.environ["PAAS_STACK_PYTHON"]
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as tar:
        for name in (".venv", ".venv/bin", ".venv/bin/gunicorn", ".venv/bin/django-admin"):
            info = tarfile.TarInfo(name)
            if name.count("/") < 2:
                info.type = tarfile.DIRTYPE
            tar.addfile(info)
    done = _run_fast_compile(app, {key: layer}, stack, released)
    assert done.returncode == 0, done.stdout + done.stderr
    # What bin/release says, written by the same interpreter.
    release = Path(str(registry.by_name("python").folder / "bin" / "release"))
    said = subprocess.run([sys.executable, str(release), str(app)], capture_output=True,
                          text=True, check=True).stdout
    assert released.read_text() == said and "mysite.wsgi" in said
    assert "reusing them from the build cache" in done.stdout
    assert (app / ".paas" / "layers").read_text() == f".venv {key}\n"
    assert "gunicorn mysite.wsgi" in done.stdout  # Django inferred from the stored venv

    wrong = _run_fast_compile(app, {key: layer}, "3.12.1 (main) [GCC]")
    assert wrong.returncode == 100  # another stack Python: another key


@pytest.mark.parametrize("text, words", [
    ("../etc k1\n", "not inside the app"),
    (". k1\n", "not inside the app"),
    (".venv BAD KEY\n", "the key 'BAD KEY'"),
    (".venv " + "k" * 65 + "\n", "keys are 1 to 64"),
])
def test_layer_lines_a_buildpack_writes_are_checked(text, words):
    from buildpacks.errors import StagingError
    from buildpacks.stager.staging import parse_layers

    with pytest.raises(StagingError, match=words):
        parse_layers(text)


def test_layer_lines_are_normalised():
    from buildpacks.stager.staging import parse_layers

    assert parse_layers("/.venv/ abc\nnode_modules\n\n") == [(".venv", "abc"),
                                                             ("node_modules", "")]
