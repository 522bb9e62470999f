"""Vendor the book's JavaScript from npm, so that the built site requests nothing from a CDN.

    python scripts/vendor_js.py           # npm ci (if needed), then copy into book/_static/vendor/
    python scripts/vendor_js.py --check   # only say whether book/_static/vendor/ is complete

The versions are pinned in package.json and package-lock.json at the repository root:
MathJax 3 (math), RequireJS and @jupyter-widgets/html-manager 1.0.x (the ipywidgets 8 HTML
manager, which renders the static t-slider of chapter 02 from the widget state stored in the
page). `npm ci` installs exactly the lock file into node_modules/ (git-ignored); this script then
copies what the pages load into book/_static/vendor/ (git-ignored), which _config.yml serves as
_static/vendor/:

    vendor/mathjax/            MathJax's es5/ folder (tex-chtml.js loads its fonts and extensions
                               from beside itself, so the whole folder comes along)
    vendor/require.js          RequireJS, which html-manager's AMD bundle needs
    vendor/html-manager/       embed-amd.js and the fonts it loads from beside itself

Idempotent: when node_modules/ matches the lock file and the copies are up to date, it does
nothing (well under a second).
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = ROOT / "node_modules"
VENDOR = ROOT / "book" / "_static" / "vendor"
LOCK = ROOT / "package-lock.json"

# (what to copy from node_modules/, where it goes under book/_static/vendor/)
COPIES = [
    ("mathjax/es5", "mathjax"),
    ("requirejs/require.js", "require.js"),
    ("@jupyter-widgets/html-manager/dist", "html-manager"),
]
# Files the pages reference (checked after copying, and by --check).
REQUIRED = ["mathjax/tex-chtml.js", "require.js", "html-manager/embed-amd.js"]
# Not needed by a browser: source maps and the non-AMD bundles (about 12 MB).
SKIP = shutil.ignore_patterns("*.map", "embed.js", "embed.js.LICENSE.txt", "libembed-amd.js")
STAMP = VENDOR / ".vendored-from"


def lock_digest() -> str:
    """The exact package versions the lock file pins, as one string."""
    packages = json.loads(LOCK.read_text())["packages"]
    return json.dumps({k: v.get("version") for k, v in sorted(packages.items()) if k}, indent=0)


def npm_up_to_date() -> bool:
    """Whether node_modules/ already holds what package-lock.json pins (npm writes this copy)."""
    installed = NODE_MODULES / ".package-lock.json"
    if not installed.exists():
        return False
    have = json.loads(installed.read_text())["packages"]
    want = json.loads(LOCK.read_text())["packages"]
    return all(
        have.get(name, {}).get("version") == meta.get("version")
        for name, meta in want.items()
        if name and not meta.get("optional")
    )


def npm_ci() -> None:
    npm = shutil.which("npm")
    if npm is None:
        sys.exit(
            "vendor_js: npm is not installed; it fetches MathJax and the widget JavaScript "
            "(Debian: apt-get install -y npm)"
        )
    cmd = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    print("vendor_js:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def vendored_ok() -> bool:
    return (
        STAMP.exists()
        and STAMP.read_text() == lock_digest()
        and all((VENDOR / f).is_file() for f in REQUIRED)
    )


def copy_all() -> None:
    if VENDOR.exists():
        shutil.rmtree(VENDOR)
    VENDOR.mkdir(parents=True)
    for src, dst in COPIES:
        source = NODE_MODULES / src
        if source.is_dir():
            shutil.copytree(source, VENDOR / dst, ignore=SKIP)
        else:
            shutil.copy2(source, VENDOR / dst)
    missing = [f for f in REQUIRED if not (VENDOR / f).is_file()]
    if missing:
        sys.exit(f"vendor_js: after copying, still missing {missing}")
    STAMP.write_text(lock_digest())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, change nothing")
    args = parser.parse_args()
    if args.check:
        if not vendored_ok():
            sys.exit(
                "vendor_js: book/_static/vendor/ is missing or stale; run scripts/vendor_js.py"
            )
        print("vendor_js: book/_static/vendor/ is up to date")
        return
    if vendored_ok():  # the copies match the lock file: node_modules/ is not even needed
        print("vendor_js: book/_static/vendor/ is up to date")
        return
    if not npm_up_to_date():
        npm_ci()
    copy_all()
    size = sum(f.stat().st_size for f in VENDOR.rglob("*") if f.is_file())
    print(f"vendor_js: copied into {VENDOR.relative_to(ROOT)} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
