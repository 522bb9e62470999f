"""Strip outputs, execution counts and stray metadata from the chapter notebooks.

    python scripts/clean_notebooks.py           # clean notebooks/*.ipynb in place
    python scripts/clean_notebooks.py --check   # fail if any notebook is not clean

The book executes the notebooks when it is built, so the committed notebooks hold no outputs.
Kept: each cell's id, source and `tags`; the notebook's kernelspec and language name.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def clean(nb: dict) -> dict:
    """The notebook `nb` (parsed JSON) with outputs and all metadata but tags removed."""
    cells = []
    for cell in nb["cells"]:
        source = cell["source"]
        if isinstance(source, list):
            source = "".join(source)
        tags = cell.get("metadata", {}).get("tags", [])
        new = {"cell_type": cell["cell_type"], "id": cell["id"]}
        new["metadata"] = {"tags": tags} if tags else {}
        new["source"] = source.splitlines(keepends=True)
        if cell["cell_type"] == "code":
            new["execution_count"] = None
            new["outputs"] = []
        cells.append(new)
    return {"cells": cells, "metadata": NOTEBOOK_METADATA, "nbformat": 4, "nbformat_minor": 5}


def dumps(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report instead of rewriting")
    parser.add_argument("paths", nargs="*", type=Path)
    args = parser.parse_args()
    paths = args.paths or sorted((ROOT / "notebooks").glob("*.ipynb"))
    dirty = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        cleaned = dumps(clean(json.loads(text)))
        if cleaned != text:
            dirty.append(path)
            if not args.check:
                path.write_text(cleaned, encoding="utf-8")
    for path in dirty:
        print(f"{'not clean' if args.check else 'cleaned'}: {path}", file=sys.stderr)
    return 1 if (dirty and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
