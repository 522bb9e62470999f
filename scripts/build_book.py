"""Build the HTML book: vendor the JavaScript, then run every chapter (toy size) with Jupyter Book.

    python scripts/build_book.py

Steps:
1. scripts/check_toc.py: every notebook in notebooks/ is a chapter of _toc.yml.
2. scripts/vendor_js.py: MathJax, RequireJS and the ipywidgets HTML manager into
   book/_static/vendor/ (from npm, pinned by package-lock.json).
3. `jupyter-book build . --all -W -n --keep-going`: re-read every page (--all), execute every
   notebook (execute_notebooks: force in _config.yml), nit-picky references (-n), and every
   warning an error (-W) reported at the end of the build rather than at the first one
   (--keep-going). DDPM_SIZE=toy, and MPLBACKEND is removed so that figures reach the pages.
4. Fail if any notebook's execution failed (a warning, so -W fails the build too): myst-nb writes
   each one's traceback into _build/html/reports/, which this prints.
5. Fail if any notebook took longer than NOTEBOOK_BUDGET_S (60 s) to execute at toy size.

Prints the path of the built index.html and the time the build took.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
BIN = Path(sys.executable).parent


NOTEBOOK_BUDGET_S = 60  # each chapter at toy size, on a 2-core CPU
EXECUTED = re.compile(r"(\S+\.ipynb): Executed notebook in ([0-9.]+) seconds")


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, dict[str, float]]:
    """Run `cmd`, echoing its output; also return the notebook execution times it reports."""
    print("build_book:", " ".join(str(c) for c in cmd), flush=True)
    times = {}
    with subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            if m := EXECUTED.search(line):
                times[Path(m.group(1)).name] = float(m.group(2))
    return proc.returncode, times


def execution_failures() -> list[Path]:
    """The error reports of the notebooks whose execution failed.

    myst-nb writes one for each notebook that raised (_build/html/reports/<page>.err.log); a cell
    tagged `raises-exception` shows its error on purpose and writes none.
    """
    return sorted((HTML / "reports").rglob("*.err.log"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--no-toc-check",
        action="store_true",
        help="build even if a notebook is missing from _toc.yml (a chapter being written)",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    python = sys.executable
    if not args.no_toc_check and run([python, "scripts/check_toc.py"])[0] != 0:
        sys.exit("build_book: _toc.yml is incomplete (see above)")
    if run([python, "scripts/vendor_js.py"])[0] != 0:
        sys.exit("build_book: vendoring the JavaScript failed (see above)")

    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # a headless backend setting would drop every figure
    env["DDPM_SIZE"] = "toy"
    jupyter_book = BIN / "jupyter-book"
    if not jupyter_book.exists():
        jupyter_book = shutil.which("jupyter-book") or sys.exit("build_book: no jupyter-book")
    # A fresh output folder: no stale page or error report from an earlier build survives.
    shutil.rmtree(HTML, ignore_errors=True)
    cmd = [str(jupyter_book), "build", ".", "--all", "-W", "-n", "--keep-going"]
    code, times = run(cmd, env=env)
    failures = execution_failures() if HTML.exists() else []
    for name, seconds in sorted(times.items()):
        print(f"build_book: {name} executed in {seconds:.1f} s")
    too_slow = {name: s for name, s in times.items() if s > NOTEBOOK_BUDGET_S}
    minutes, seconds = divmod(time.perf_counter() - start, 60)
    print(f"build_book: took {int(minutes)} min {seconds:.0f} s", flush=True)
    for log in failures:
        lines = log.read_text(errors="replace").splitlines()
        print(
            f"---- notebook execution failed: {log.relative_to(ROOT)} ----", *lines[-25:], sep="\n"
        )
    if code != 0 or failures:
        sys.exit(f"build_book: FAILED (jupyter-book exit code {code})")
    if not times:  # the budget check must not pass just because the log line changed
        sys.exit("build_book: FAILED: the build reported no notebook execution times")
    if too_slow:
        sys.exit(f"build_book: FAILED: over the {NOTEBOOK_BUDGET_S} s toy-size budget: {too_slow}")
    print(f"build_book: the book is at {HTML / 'index.html'}")


if __name__ == "__main__":
    main()
