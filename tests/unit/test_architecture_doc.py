"""docs/architecture.md and the README's Processes table name only things that exist.

Every name the map writes in backquotes is checked against the tree: module paths (a file or
a folder), dotted names (a module, then a name defined at its top level), Redis key names
(``keys.X`` defined in contracts/keys.py; ``paas:...`` literals equal to a key the module
builds), Celery task names and container labels (``paas.x``, a string some module defines)
and settings (``PAAS_X``, a field of Settings). A rename that forgets the map fails here.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from functools import cache
from pathlib import Path

import pytest

from contracts import keys
from contracts.settings import Settings
from launcher.up import SERVICES

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
README = ROOT / "README.md"

PACKAGES = ("controller", "contracts", "buildpacks", "dea_agent", "router", "cli", "launcher",
            "uploads", "confinement", "logpipe")
TOP = (*PACKAGES, "tests", "docs", "bench", "scripts")
PATH = re.compile(rf"^(?:{'|'.join(TOP)})/[\w./-]*$")
DOTTED = re.compile(rf"^(?:{'|'.join(PACKAGES)})(?:\.\w+)+$")
KEY_NAME = re.compile(r"^keys\.(\w+)(?:\(\w*\))?$")
KEY_LITERAL = re.compile(r"^paas:[\w:<> -]+$")
PAAS_NAME = re.compile(r"^paas\.\w+$")
SETTING = re.compile(r"^PAAS_[A-Z0-9_]+$")
EVENT = re.compile(r"^(?:app|build|release|instance|route)\.[a-z_]+$")


def spans(text: str) -> list[str]:
    """What the text writes in single backquotes, outside fenced and indented blocks."""
    prose = "\n".join(line for line in text.splitlines() if not line.startswith("    "))
    return re.findall(r"`([^`\n]+)`", prose)


@cache
def doc_spans() -> tuple[str, ...]:
    return tuple(dict.fromkeys(spans(DOC.read_text())))


def processes_section() -> str:
    text = README.read_text()
    start = text.index("\n## Processes\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


@cache
def top_level_names(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


def module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def dotted_exists(name: str) -> bool:
    """``a.b`` is a module, or ``a.b.C`` a name defined at the top of module ``a.b``."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        found = module_file(parts[:cut])
        if found is not None:
            return cut == len(parts) or parts[cut] in top_level_names(found)
    return False


def key_templates() -> set[str]:
    """Every key contracts/keys.py names, with each argument shown as ``<>``."""
    found = set()
    for name in dir(keys):
        value = getattr(keys, name)
        if isinstance(value, str) and value.startswith(keys.PREFIX + ":"):
            found.add(value)
        elif callable(value) and getattr(value, "__module__", "") == keys.__name__:
            argc = value.__code__.co_argcount
            found.add(value(*["<>"] * argc))
    return found


@cache
def platform_sources() -> str:
    return "\n".join(p.read_text() for pkg in PACKAGES if (ROOT / pkg).is_dir()
                     for p in sorted((ROOT / pkg).rglob("*.py")))


def stale(name: str) -> str | None:
    """Why ``name`` does not exist in the tree (None if it does, or is no checked kind)."""
    if PATH.match(name):
        return None if (ROOT / name).exists() else "no such file or folder"
    if DOTTED.match(name):
        return None if dotted_exists(name) else "no such module or top-level name"
    if m := KEY_NAME.match(name):
        return None if m[1] in top_level_names(ROOT / "contracts" / "keys.py") \
            else "not defined in contracts/keys.py"
    if KEY_LITERAL.match(name):
        if re.sub(r"<[^>]*>", "<>", name) in key_templates():
            return None
        # A key built outside contracts/keys.py: its fixed part must be in a module.
        fixed = name[len(keys.PREFIX):].split("<")[0]
        return None if fixed in platform_sources() else "no module builds this key"
    if PAAS_NAME.match(name) or EVENT.match(name):
        return None if re.search(rf"[\"']{re.escape(name)}[\"']", platform_sources()) \
            else "no module defines this name"
    if SETTING.match(name):
        fields = {f.name for f in dataclasses.fields(Settings)}
        return None if name[len("PAAS_"):].lower() in fields else "not a field of Settings"
    return None


def checked(names: list[str] | tuple[str, ...]) -> list[str]:
    return [n for n in names if stale(n) is not None]


def test_every_name_the_map_cites_exists() -> None:
    missing = {n: stale(n) for n in checked(doc_spans())}
    assert not missing, f"docs/architecture.md cites names the code no longer has: {missing}"


def test_the_readme_processes_table_cites_only_what_exists() -> None:
    missing = {n: stale(n) for n in checked(spans(processes_section()))}
    assert not missing, f"README's Processes section cites names that do not exist: {missing}"


def _cites_module(names: list[str] | tuple[str, ...], module: str) -> bool:
    path = module.replace(".", "/")
    forms = {module, f"{path}.py", f"{path}/", f"{path}/__init__.py", f"{path}/__main__.py"}
    return bool(forms & set(names))


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_process_make_up_starts_is_on_the_map_and_in_the_readme(service: str) -> None:
    module = SERVICES[service]
    assert _cites_module(doc_spans(), module), \
        f"docs/architecture.md does not name {module}, the entry module of {service}"
    assert _cites_module(spans(processes_section()), module), \
        f"README's Processes section does not name {module}, the entry module of {service}"


def test_the_tables_table_names_every_table_and_only_tables() -> None:
    from controller.models import Base

    text = DOC.read_text()
    start = text.index("### Database tables")
    section = text[start:text.index("\n### ", start + 1)]
    cited = {name for row in section.splitlines() if row.startswith("| `")
             for name in spans(row.split("|")[1])}
    assert cited == set(Base.metadata.tables), (
        f"not in the map: {sorted(set(Base.metadata.tables) - cited)}; "
        f"not a table: {sorted(cited - set(Base.metadata.tables))}")


@pytest.mark.parametrize("name, why", [
    ("controller/nowhere.py", "no such file or folder"),
    ("controller.health.no_such_thing", "no such module or top-level name"),
    ("keys.NO_SUCH_KEY", "not defined in contracts/keys.py"),
    ("paas:no-such-key:<guid>", "no module builds this key"),
    ("paas.no_such_label", "no module defines this name"),
    ("instance.exploded", "no module defines this name"),
    ("PAAS_NO_SUCH_SETTING", "not a field of Settings"),
])
def test_a_stale_name_of_each_kind_is_caught(name: str, why: str) -> None:
    assert stale(name) == why


@pytest.mark.parametrize("name", [
    "controller/health/manager.py", "controller/api/", "contracts.settings.Settings",
    "controller.convergence.plan", "keys.CONVERGE", "keys.build_log(guid)",
    "paas:agent:<id>", "paas:api-follows:<caller>", "paas.stage", "paas.kind", "app.pushed",
    "PAAS_HEARTBEAT_TTL",
])
def test_a_live_name_of_each_kind_passes(name: str) -> None:
    assert stale(name) is None
