"""The repository's own rules: the library is what the notebooks export, notebooks are clean,
every chapter starts with the same Colab setup cell, and ruff finds no undefined name."""

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import clean_notebooks  # noqa: E402
import export_library  # noqa: E402
import sync_repo_url  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def repo_url() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["urls"]["Repository"]


def test_library_is_what_the_notebooks_export():
    assert export_library.check(ROOT) == []


def test_export_check_catches_a_hand_edit_and_an_orphan(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "notebooks", copy / "notebooks")
    shutil.copytree(ROOT / "ddpm_lib", copy / "ddpm_lib", ignore=shutil.ignore_patterns("assets"))
    assert export_library.check(copy) == []
    with open(copy / "ddpm_lib" / "schedules.py", "a") as f:
        f.write("\nHAND_EDIT = 1\n")
    (copy / "ddpm_lib" / "orphan.py").write_text("x = 1\n")
    problems = export_library.check(copy)
    assert any("schedules.py: differs" in p for p in problems)
    assert any("orphan.py: no notebook exports" in p for p in problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean(path):
    text = path.read_text(encoding="utf-8")
    assert clean_notebooks.dumps(clean_notebooks.clean(json.loads(text))) == text, (
        f"{path.name} carries outputs or stray metadata: run make export"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_is_the_colab_setup_cell(path):
    reference = json.loads(NOTEBOOKS[0].read_text())["cells"][0]
    first = json.loads(path.read_text())["cells"][0]
    assert first["cell_type"] == "code" and first["source"] == reference["source"], (
        f"{path.name}: the first cell must be the Colab setup cell of {NOTEBOOKS[0].name}"
    )


def test_repository_url_is_set_in_one_place():
    """pyproject's Repository URL is the one the setup cell installs from and the book links to."""
    url = repo_url()
    setup = "".join(json.loads(NOTEBOOKS[0].read_text())["cells"][0]["source"])
    assert re.search(r'^REPO_URL = "(.*)"$', setup, re.M).group(1) == url
    config = (ROOT / "_config.yml").read_text()
    assert re.search(r"^\s+url:\s*(\S+)", config, re.M).group(1) == url
    for path, text in sync_repo_url.synced_copies(ROOT).items():
        assert path.read_text(encoding="utf-8") == text, f"{path.name}: run make export"


def test_changing_the_url_in_pyproject_rewrites_every_copy(tmp_path):
    for name in ["pyproject.toml", "_config.yml"]:
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(repo_url(), "https://example.org/fork"))
    copies = sync_repo_url.synced_copies(tmp_path)
    assert len(copies) == len(NOTEBOOKS) + 1
    for path, text in copies.items():
        assert "https://example.org/fork" in text and repo_url() not in text, path.name


def test_ruff_finds_no_undefined_name_or_star_import():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"
    result = subprocess.run(
        [ruff, "check", "--select", "F821,F403,F405,F401,F811", "--no-cache", "ddpm_lib"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
