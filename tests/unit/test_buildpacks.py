"""Buildpack detection and Procfile parsing."""

from __future__ import annotations

from pathlib import Path

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
