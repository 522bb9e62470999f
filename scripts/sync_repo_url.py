"""Copy the repository URL from pyproject.toml to the places that need a literal copy of it.

    python scripts/sync_repo_url.py           # rewrite the copies
    python scripts/sync_repo_url.py --check   # fail if a copy differs

The one place to set it is `[project.urls] Repository` in pyproject.toml. Copies: `REPO_URL` in
the Colab setup cell that opens every chapter (Colab has no checkout to read it from), and
`repository.url` in _config.yml (the book's launch buttons). `make export` runs this.
"""

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUP_LINE = re.compile(r'^REPO_URL = "[^"]*"$', re.M)
CONFIG_LINE = re.compile(r"^(repository:\n  url: ).*$", re.M)


def repo_url(root: Path = ROOT) -> str:
    with open(root / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["urls"]["Repository"]


def synced_copies(root: Path = ROOT) -> dict[Path, str]:
    """Each file holding a copy, with the text it should have."""
    url = repo_url(root)
    out = {}
    config = root / "_config.yml"
    out[config] = CONFIG_LINE.sub(lambda m: m.group(1) + url, config.read_text(encoding="utf-8"))
    for nb_path in sorted((root / "notebooks").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
        first = nb["cells"][0]
        source = SETUP_LINE.sub(f'REPO_URL = "{url}"', "".join(first["source"]))
        first["source"] = source.splitlines(keepends=True)
        out[nb_path] = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report instead of rewriting")
    args = parser.parse_args()
    stale = [p for p, text in synced_copies().items() if p.read_text(encoding="utf-8") != text]
    for path in stale:
        if args.check:
            print(f"repository URL differs from pyproject.toml: {path}", file=sys.stderr)
        else:
            path.write_text(synced_copies()[path], encoding="utf-8")
            print(f"updated the repository URL in {path.relative_to(ROOT)}")
    return 1 if (stale and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
