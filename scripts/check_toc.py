"""Check that _toc.yml lists every chapter notebook, in order, and nothing that does not exist.

    python scripts/check_toc.py

The book builds only the pages listed in _toc.yml (only_build_toc_files in _config.yml), so a
chapter missing from it would silently be left out of the book: this check fails instead.
"""

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def toc_files(toc: dict) -> list[str]:
    """Every `file:` of a jb-book toc, root first, in reading order."""
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts") or []:
        walk(part.get("chapters"))
    return files


def problems(root: Path = ROOT) -> list[str]:
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = toc_files(toc)
    found = []
    for f in files:
        if not any((root / f).with_suffix(ext).exists() for ext in (".ipynb", ".md")):
            found.append(f"_toc.yml lists {f}, which does not exist")
    chapters = [f"notebooks/{p.stem}" for p in sorted((root / "notebooks").glob("[0-9]*.ipynb"))]
    for nb in chapters:
        if nb not in files:
            found.append(f"{nb}.ipynb is not in _toc.yml")
    listed = [f for f in files if f in chapters]
    if listed != sorted(listed):
        found.append(f"the chapters in _toc.yml are out of order: {listed}")
    return found


def main() -> None:
    found = problems()
    if found:
        sys.exit("check_toc: " + "\n  ".join(["_toc.yml is not complete:", *found]))
    print("check_toc: _toc.yml lists every chapter")


if __name__ == "__main__":
    main()
