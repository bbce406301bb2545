"""The paas command: sentences and exit codes, with the API out of reach."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.base import parse_memory
from cli.main import main
from cli.manifest import load as load_manifest
from cli.package import RESOURCE_MIN, collect, pack


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("PAAS_HOME", str(tmp_path / "home"))
    return CliRunner()


def test_push_without_target_says_what_to_do(runner, tmp_path):
    (tmp_path / "requirements.txt").write_text("")
    result = runner.invoke(main, ["push", "myapp", "-p", str(tmp_path)])
    assert result.exit_code == 1
    assert "paas target URL" in result.output


def test_invalid_name_is_refused_before_any_upload(runner, tmp_path):
    result = runner.invoke(main, ["push", "-p", str(tmp_path), "Bad Name"])
    assert result.exit_code == 1
    assert "is not a valid app name" in result.output


def test_unreachable_controller(runner):
    result = runner.invoke(main, ["target", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "could not reach the controller" in result.output


@pytest.mark.parametrize("text, mb", [("256M", 256), ("1G", 1024), ("512", 512), ("2gb", 2048)])
def test_memory_sizes(text: str, mb: int):
    assert parse_memory(text) == mb


def test_pack_follows_gitignore_rules(tmp_path):
    (tmp_path / "app.py").write_text("x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("x")
    (tmp_path / "secret.env").write_text("x")
    (tmp_path / "keep.env").write_text("x")
    (tmp_path / "manifest.yml").write_text("applications: []\n")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "out.o").write_text("x")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "build").write_text("a file, not the folder")
    (tmp_path / ".paasignore").write_text("# comment\n*.env\n!keep.env\nbuild/\n")
    entries = collect(tmp_path)
    assert [e.path for e in entries] == ["app.py", "docs/build", "keep.env"]
    tarball = pack(entries)
    import tarfile

    with tarfile.open(tarball) as tar:
        assert tar.getnames() == ["app.py", "docs/build", "keep.env"]
    tarball.unlink()


def test_node_modules_skipped_for_node_apps(tmp_path):
    (tmp_path / "package.json").write_text("{}")
    (tmp_path / "node_modules" / "x").mkdir(parents=True)
    (tmp_path / "node_modules" / "x" / "index.js").write_text("")
    assert [e.path for e in collect(tmp_path)] == ["package.json"]


def test_large_files_are_fingerprinted_and_can_be_left_out(tmp_path):
    (tmp_path / "big.bin").write_bytes(b"b" * RESOURCE_MIN)
    (tmp_path / "small.txt").write_text("s")
    entries = collect(tmp_path)
    big = next(e for e in entries if e.path == "big.bin")
    assert big.sha1 and next(e for e in entries if e.path == "small.txt").sha1 is None
    tarball = pack(entries, skip={big.sha1})
    import tarfile

    with tarfile.open(tarball) as tar:
        assert tar.getnames() == ["small.txt"]
    tarball.unlink()


def test_manifest_is_read(tmp_path):
    path = tmp_path / "manifest.yml"
    path.write_text("applications:\n- name: web\n  instances: 2\n  memory: 1G\n"
                    "  command: gunicorn app:app\n  env:\n    DEBUG: true\n    N: 3\n"
                    "  buildpacks: [python]\n")
    app = load_manifest(path, None)
    assert (app.name, app.instances, app.memory_mb, app.command) == (
        "web", 2, 1024, "gunicorn app:app")
    assert app.env == {"DEBUG": "true", "N": "3"} and app.buildpacks == ["python"]


@pytest.mark.parametrize("text, words", [
    ("applications:\n- name: web\n  instances: two\n", "manifest.yml line 3: instances"),
    ("applications:\n- name: web\n  instnces: 2\n", "line 3: unknown field 'instnces': "
                                                       "did you mean 'instances'?"),
    ("applications:\n- name: web\n   bad: [\n", "not valid YAML"),
    ("applications:\n- name: web\n  memory: lots\n", "line 3: memory must be a size"),
    ("apps: []\n", "no 'applications:' list"),
])
def test_malformed_manifest_names_the_line(runner, tmp_path, text, words):
    (tmp_path / "manifest.yml").write_text(text)
    (tmp_path / "requirements.txt").write_text("")
    result = runner.invoke(main, ["push", "-p", str(tmp_path)])
    assert result.exit_code == 1
    assert words in result.output
    assert "nothing was uploaded" in result.output


def test_manifest_with_several_apps_needs_a_name(tmp_path):
    path = tmp_path / "manifest.yml"
    path.write_text("applications:\n- name: a\n- name: b\n")
    import click

    with pytest.raises(click.ClickException, match="several apps"):
        load_manifest(path, None)
    assert load_manifest(path, "b").name == "b"


def test_command_modules_import_the_group_not_each_other() -> None:
    """cli.base holds the group; the command modules import it, and only cli.main gathers
    them (no import circle through cli.main)."""
    import ast
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "cli"
    commands = {"accounts", "apps", "logs", "observe", "routes", "run", "runtime"}
    wrong = []
    for path in sorted(folder.glob("*.py")):
        if path.stem == "main":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name == "cli.main" or name.startswith("cli.main.") or (
                        name.startswith("cli.") and name.split(".")[1] in commands
                        and name.split(".")[1] != path.stem):
                    wrong.append(f"{path.name} imports {name}")
    assert not wrong, wrong
