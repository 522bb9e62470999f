"""Build the HTML book, both editions: vendor the JavaScript, run every chapter (toy size) once.

    python scripts/build_book.py

Steps:
1. scripts/check_toc.py: every notebook in notebooks/ is a chapter of _toc.yml.
2. scripts/vendor_js.py: MathJax, RequireJS and the ipywidgets HTML manager into
   book/_static/vendor/ (from npm, pinned by package-lock.json).
3. The English edition, `jupyter-book build . --all -W -n --keep-going`, into _build/html/:
   re-read every page (--all), execute every notebook, nit-picky references (-n), and every
   warning an error (-W) reported at the end of the build rather than at the first one
   (--keep-going). DDPM_SIZE=toy, and MPLBACKEND is removed so that figures reach the pages.
   The execution cache (_build/.jupyter_cache, execute_notebooks: cache in _config.yml) is
   emptied first, so every notebook is executed afresh and stored there.
4. Unless a notebook's execution failed: the Chinese edition, into _build/html/zh/: the same
   build (scripts/sphinx_build.py, also -W -n, every page re-read) with language = "zh_CN", so
   that each page's prose comes from locales/zh_CN/LC_MESSAGES/<page>.po (English where a message
   is not translated), and every notebook's outputs from the execution cache: nothing is
   executed twice (if a notebook changed during the build, it is, and this says so).
5. The translations: the message templates are extracted from the current sources into
   _build/gettext/ and scripts/check_translations.py lists, per page, what is untranslated, fuzzy
   or has its math or code changed (scripts/update_translations.py --check). With
   TRANSLATIONS_STRICT (below) off, this is a report; on, any such message fails the build.
6. Fail if either build failed, if any notebook's execution failed (a warning, so -W fails the
   build too: myst-nb writes each one's traceback into <edition>/reports/, which this prints), or
   if any notebook took longer than NOTEBOOK_BUDGET_S (60 s) to execute at toy size.

Prints the path of each edition's index.html and the time the build took.
"""

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
ZH_HTML = HTML / "zh"
EXECUTION_CACHE = ROOT / "_build" / ".jupyter_cache"  # execute: cache: in _config.yml
BIN = Path(sys.executable).parent

# The translation gate. True (every page is translated): any message that the Chinese edition
# has left to translate (untranslated, fuzzy, or with its math or code changed) fails the build,
# and so `make book` and `make test`: a prose change is not done until it is translated. False
# would only list them. TRANSLATIONS_STRICT=1 (or =0) in the environment overrides it for one run.
TRANSLATIONS_STRICT = True
# Sphinx settings of the Chinese edition, on top of _config.yml's (which has locale_dirs).
ZH_SETTINGS = {"language": "zh_CN", "html_title": "从第一性原理理解 DDPM"}


NOTEBOOK_BUDGET_S = 60  # each chapter at toy size, on a 2-core CPU
EXECUTED = re.compile(r"(\S+\.ipynb): Executed notebook in ([0-9.]+) seconds")
CACHED = re.compile(r"(\S+\.ipynb): Using cached notebook")


def run(
    cmd: list[str], env: dict[str, str] | None = None
) -> tuple[int, dict[str, float], set[str]]:
    """Run `cmd`, echoing its output; also return the notebook execution times it reports and
    the notebooks it took from the execution cache."""
    print("build_book:", " ".join(str(c) for c in cmd), flush=True)
    times, cached = {}, set()
    with subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            if m := EXECUTED.search(line):
                times[Path(m.group(1)).name] = float(m.group(2))
            if m := CACHED.search(line):
                cached.add(Path(m.group(1)).name)
    return proc.returncode, times, cached


def execution_failures(html: Path = HTML) -> list[Path]:
    """The error reports of the notebooks whose execution failed, in either edition.

    myst-nb writes one for each notebook that raised (_build/html/reports/<page>.err.log, and
    _build/html/zh/reports/ for the Chinese edition); a cell tagged `raises-exception` shows its
    error on purpose and writes none.
    """
    return sorted((html / "reports").rglob("*.err.log")) + sorted(
        (html / "zh" / "reports").rglob("*.err.log")
    )


def translations_strict(default: bool = TRANSLATIONS_STRICT) -> bool:
    """The translation gate's setting: TRANSLATIONS_STRICT=1/0 in the environment, else default."""
    value = os.environ.get("TRANSLATIONS_STRICT", "").strip()
    if value in ("", "default"):
        return default
    if value not in ("0", "1"):
        sys.exit(f"build_book: TRANSLATIONS_STRICT must be 0 or 1, not {value!r}")
    return value == "1"


def zh_build_command(python: str) -> list[str]:
    """The Chinese edition's build: scripts/sphinx_build.py with ZH_SETTINGS."""
    cmd = [python, "scripts/sphinx_build.py", "html", str(ZH_HTML.relative_to(ROOT))]
    for name, value in ZH_SETTINGS.items():
        cmd += ["-D", f"{name}={json.dumps(value, ensure_ascii=False)}"]
    return cmd


def hold_build_lock():
    """Wait for any other build of this checkout to end, then hold the lock until this one ends.

    Two builds at once would delete each other's output folder and execution cache.
    """
    lock_path = ROOT / "_build" / ".build.lock"
    lock_path.parent.mkdir(exist_ok=True)
    lock = lock_path.open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("build_book: another build of this checkout is running; waiting for it", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    return lock  # the lock lasts as long as this file object


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--no-toc-check",
        action="store_true",
        help="build even if a notebook is missing from _toc.yml (a chapter being written)",
    )
    args = parser.parse_args()
    _lock = hold_build_lock()  # held until this process exits
    start = time.perf_counter()
    python = sys.executable
    if not args.no_toc_check and run([python, "scripts/check_toc.py"])[0] != 0:
        sys.exit("build_book: _toc.yml is incomplete (see above)")
    if run([python, "scripts/vendor_js.py"])[0] != 0:
        sys.exit("build_book: vendoring the JavaScript failed (see above)")

    strict = translations_strict()
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # a headless backend setting would drop every figure
    env["DDPM_SIZE"] = "toy"
    jupyter_book = BIN / "jupyter-book"
    if not jupyter_book.exists():
        jupyter_book = shutil.which("jupyter-book") or sys.exit("build_book: no jupyter-book")
    # A fresh output folder: no stale page or error report from an earlier build survives; an
    # empty execution cache: every notebook is executed by this build.
    shutil.rmtree(HTML, ignore_errors=True)
    shutil.rmtree(EXECUTION_CACHE, ignore_errors=True)
    steps = {}
    step = time.perf_counter()
    cmd = [str(jupyter_book), "build", ".", "--all", "-W", "-n", "--keep-going"]
    code, times, _ = run(cmd, env=env)
    steps["English edition"] = time.perf_counter() - step
    failures = execution_failures() if HTML.exists() else []

    zh_code, executed_again, cached = None, {}, set()
    if not failures and times:
        step = time.perf_counter()
        zh_code, executed_again, cached = run(zh_build_command(python), env=env)
        steps["Chinese edition"] = time.perf_counter() - step
        failures = execution_failures()
    step = time.perf_counter()
    check = [python, "scripts/update_translations.py", "--check"]
    check += ["--strict"] if strict else ["--summary"]
    translations_code = run(check)[0]
    steps["translation check"] = time.perf_counter() - step

    for name, seconds in sorted(times.items()):
        print(f"build_book: {name} executed in {seconds:.1f} s")
    if zh_code is not None:
        print(
            f"build_book: the Chinese edition took {len(cached & times.keys())} of the "
            f"{len(times)} executed notebooks from the execution cache"
        )
    if executed_again:
        print(
            "build_book: WARNING: the Chinese edition executed these notebooks again instead of "
            f"taking them from the execution cache (did they change during the build?): "
            f"{sorted(executed_again)}"
        )
    all_times = {n: max(times.get(n, 0), executed_again.get(n, 0)) for n in times | executed_again}
    too_slow = {name: s for name, s in all_times.items() if s > NOTEBOOK_BUDGET_S}
    print("build_book: " + ", ".join(f"{k} {v:.0f} s" for k, v in steps.items()))
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
    if zh_code != 0:
        sys.exit(f"build_book: FAILED: the Chinese edition's build (exit code {zh_code})")
    if too_slow:
        sys.exit(f"build_book: FAILED: over the {NOTEBOOK_BUDGET_S} s toy-size budget: {too_slow}")
    if translations_code != 0:
        gate = "TRANSLATIONS_STRICT is on" if strict else "the check itself failed"
        sys.exit(f"build_book: FAILED: the translations are incomplete ({gate}; see above)")
    print(f"build_book: the book is at {HTML / 'index.html'}")
    print(f"build_book: the Chinese edition is at {ZH_HTML / 'index.html'}")


if __name__ == "__main__":
    main()
