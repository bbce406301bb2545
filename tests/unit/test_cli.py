"""The paas command: sentences and exit codes, with the API out of reach."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.main import main, parse_memory
from cli.package import ignored, pack


@pytest.fixture
def runner(tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    monkeypatch.setenv("PAAS_HOME", str(tmp_path / "home"))
    return CliRunner()


def test_push_without_target_says_what_to_do(runner, tmp_path):  # noqa: ANN001
    (tmp_path / "requirements.txt").write_text("")
    result = runner.invoke(main, ["push", "myapp", "-p", str(tmp_path)])
    assert result.exit_code == 1
    assert "paas target URL" in result.output


def test_invalid_name_is_refused_before_any_upload(runner, tmp_path):  # noqa: ANN001
    result = runner.invoke(main, ["push", "-p", str(tmp_path), "Bad Name"])
    assert result.exit_code == 1
    assert "is not a valid app name" in result.output


def test_unreachable_controller(runner):  # noqa: ANN001
    result = runner.invoke(main, ["target", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "could not reach the controller" in result.output


@pytest.mark.parametrize("text, mb", [("256M", 256), ("1G", 1024), ("512", 512), ("2gb", 2048)])
def test_memory_sizes(text: str, mb: int):
    assert parse_memory(text) == mb


def test_pack_skips_ignored_files(tmp_path):  # noqa: ANN001
    (tmp_path / "app.py").write_text("x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("x")
    (tmp_path / "secret.env").write_text("x")
    (tmp_path / ".paasignore").write_text("# comment\n*.env\n")
    tarball, count = pack(tmp_path)
    import tarfile

    with tarfile.open(tarball) as tar:
        assert tar.getnames() == ["app.py"]
    assert count == 1
    tarball.unlink()
    assert ignored("deep/x/__pycache__", [".git", "__pycache__"])
