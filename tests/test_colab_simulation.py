"""Simulated Colab: a fresh environment holding only what Colab preinstalls (torch, torchvision,
matplotlib, ipywidgets, scipy, and the Jupyter kernel machinery), where a chapter's first cell
installs ddpm_lib from the repository and the chapter then runs top to bottom.

The environment is a new virtual environment whose site-packages link to exactly those
distributions (and what they require) from the project's environment, so it is made in seconds
without a second multi-gigabyte torch install. The setup cell is pointed at a clone of this
repository (DDPM_BOOK_REPO=file://...) instead of the public URL; everything else is what a Colab
reader runs. pip fetches the other runtime needs (tqdm, safetensors) from the package index.
"""

import os
import subprocess
import sysconfig
import venv
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
COLAB_PREINSTALLED = ["torch", "torchvision", "matplotlib", "ipywidgets", "scipy"]
KERNEL_MACHINERY = ["ipykernel", "nbclient", "nbformat"]  # Colab runs notebooks in a kernel
CHAPTER = "notebooks/02_forward_process.ipynb"

pytestmark = pytest.mark.slow


def requirement_closure(names: list[str]) -> set[str]:
    """The distributions `names` need, recursively (markers evaluated here, extras ignored)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        dist = metadata.distribution(name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def link_distributions(names: set[str], site: Path) -> None:
    """Symlink every top-level file and folder of the distributions `names` into `site`."""
    here = Path(sysconfig.get_paths()["purelib"])
    for name in names:
        dist = metadata.distribution(name)
        for top in {Path(f).parts[0] for f in dist.files or []}:
            src, dst = here / top, site / top
            if src.exists() and not dst.exists() and top != ".." and not top.endswith(".pth"):
                dst.symlink_to(src)


def test_a_chapter_runs_in_a_fresh_colab_like_environment(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env_dir = tmp_path / "colab"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    link_distributions(requirement_closure(COLAB_PREINSTALLED + KERNEL_MACHINERY), site)

    work = tmp_path / "work"  # not the clone: the import must come from the installed package
    work.mkdir()
    before = subprocess.run([python, "-c", "import ddpm_lib"], cwd=work, capture_output=True)
    assert before.returncode != 0, "ddpm_lib must not be importable before the setup cell runs"

    env = {
        k: v for k, v in os.environ.items() if k not in {"MPLBACKEND", "PYTHONPATH", "VIRTUAL_ENV"}
    }
    env |= {
        "DDPM_BOOK_INSTALL": "1",
        "DDPM_BOOK_REPO": f"file://{clone}",
        "DDPM_SIZE": "toy",
        "PATH": f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}",
        "JUPYTER_PATH": str(env_dir / "share" / "jupyter"),
    }
    run_chapter = f"""
import nbformat
from nbclient import NotebookClient
nb = nbformat.read({str(clone / CHAPTER)!r}, as_version=4)
NotebookClient(nb, timeout=300, kernel_name="python3").execute()
import ddpm_lib, sys
print("ddpm_lib from", ddpm_lib.__file__)
"""
    result = subprocess.run(
        [python, "-c", run_chapter], cwd=work, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert f"ddpm_lib from {site}" in result.stdout, result.stdout
