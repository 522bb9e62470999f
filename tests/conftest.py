"""Shared fixtures: the built book (tests marked `book` and `browser`) and its pages.

The book is built by `scripts/build_book.py` (`make test` runs it before pytest). These tests
read `_build/html`; they skip, saying how to build it, where it is missing, and fail where it is
older than its sources (it would test a book that no longer exists).
"""

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD_HTML = ROOT / "_build" / "html"


def load_script(name: str):
    """Import scripts/<name>.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_unet_config(**overrides):
    """A U-Net config for unit tests: 16x16, 8 channels, two levels, attention at 8x8."""
    from ddpm_lib.unet import UNetConfig

    fields = dict(
        image_size=16,
        in_channels=1,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        dropout=0.0,
        num_groups=4,
    )
    return UNetConfig(**(fields | overrides))


def toc_pages() -> list[str]:
    """Every page of _toc.yml, e.g. "book/intro", "notebooks/02_forward_process", in order."""
    check_toc = load_script("check_toc")
    return check_toc.toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))


def page_source(page: str) -> Path:
    """The source file of a toc page: notebooks/NN.ipynb or book/x.md."""
    for ext in (".ipynb", ".md"):
        if (ROOT / page).with_suffix(ext).exists():
            return (ROOT / page).with_suffix(ext)
    raise FileNotFoundError(f"no source for toc page {page}")


def pytest_generate_tests(metafunc):
    """`toc_page`: one test per page of the book; `notebook_page`: one per chapter notebook."""
    if "toc_page" in metafunc.fixturenames:
        metafunc.parametrize("toc_page", toc_pages())
    if "notebook_page" in metafunc.fixturenames:
        metafunc.parametrize(
            "notebook_page", [p for p in toc_pages() if page_source(p).suffix == ".ipynb"]
        )


@pytest.fixture(scope="session")
def book_html() -> Path:
    """The built book's folder, _build/html (skips if it has not been built)."""
    index = BUILD_HTML / "index.html"
    if not index.exists():
        pytest.skip(
            "the book is not built: run `python scripts/build_book.py` "
            "(`make test` builds it before running the tests)"
        )
    built = index.stat().st_mtime
    sources = [page_source(p) for p in toc_pages()] + [ROOT / "_config.yml", ROOT / "_toc.yml"]
    stale = [str(s.relative_to(ROOT)) for s in sources if s.stat().st_mtime > built]
    if stale:
        pytest.fail(
            f"_build/html is older than {', '.join(stale)}: rebuild it with "
            "`python scripts/build_book.py`"
        )
    return BUILD_HTML
