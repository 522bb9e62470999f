"""Update the Chinese edition's message catalogues from the English text (`make translations`).

    python scripts/update_translations.py          # extract, update the .po files, then report
    python scripts/update_translations.py --check  # extract and report; write no .po
    python scripts/update_translations.py --check --strict   # ... and exit 1 if incomplete

1. Extract: the gettext builder reads every page of _toc.yml (notebooks are not executed) and
   writes one message template per page, _build/gettext/<page>.pot, with each paragraph,
   heading, list item and table cell of the English prose as a message. Code cells and their
   outputs are not extracted; neither is display math (book/_ext/editions.py).
2. Update (not with --check): `sphinx-intl update -p _build/gettext -l zh_CN -d locales
   --no-obsolete` creates locales/zh_CN/LC_MESSAGES/<page>.po for a new page, adds each new
   message with an empty translation, marks fuzzy a message whose English changed (keeping the
   old translation as a starting point), and drops messages whose English is gone.
3. Report: scripts/check_translations.py lists what is left to translate, per page.

The translator's loop: edit the English notebook or page, run this, translate in the .po what is
untranslated or fuzzy (remove the `#, fuzzy` line once the translation is right), and rebuild.
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POT_DIR = ROOT / "_build" / "gettext"
LOCALES = ROOT / "locales"
LANGUAGE = "zh_CN"


def extract(pot_dir: Path = POT_DIR) -> None:
    """Write the message templates of every page into pot_dir (a fresh folder)."""
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "sphinx_build.py"),
        "gettext",
        str(pot_dir),
        "-D",
        'nb_execution_mode="off"',
        "--warnings-ok",  # the html builds report the pages' warnings; here they only repeat
        "--quiet",
    ]
    shutil.rmtree(pot_dir, ignore_errors=True)  # no template of a page that is gone survives
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode != 0 or not list(pot_dir.rglob("*.pot")):
        sys.exit(f"update_translations: extracting the messages failed: {' '.join(cmd)}")


def update_catalogues(pot_dir: Path = POT_DIR) -> None:
    """Bring locales/zh_CN/LC_MESSAGES/*.po up to date with the templates (sphinx-intl)."""
    sphinx_intl = BIN / "sphinx-intl"
    cmd = [str(sphinx_intl), "update", "-p", str(pot_dir), "-l", LANGUAGE, "-d", str(LOCALES)]
    result = subprocess.run([*cmd, "--no-obsolete", "-j", "1"], cwd=ROOT)
    if result.returncode != 0:
        sys.exit("update_translations: sphinx-intl update failed")
    for po in (LOCALES / LANGUAGE / "LC_MESSAGES").rglob("*.po"):
        po.write_text(drop_format_flags(po.read_text(encoding="utf-8")), encoding="utf-8")


def drop_format_flags(po_text: str) -> str:
    """The catalogue without Babel's `python-format` flags: prose with "1% of" is no format
    string, and the flag makes `msgfmt -c` demand the same % codes in the translation."""
    out = []
    for line in po_text.splitlines(keepends=True):
        if line.startswith("#,"):
            flags = [f.strip() for f in line[2:].split(",") if f.strip() != "python-format"]
            if not flags:
                continue
            line = "#, " + ", ".join(flags) + "\n"
        out.append(line)
    return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="extract and report only")
    parser.add_argument("--strict", action="store_true", help="exit 1 if anything is left")
    parser.add_argument("--summary", action="store_true", help="only a count per page")
    args = parser.parse_args()
    extract()
    if not args.check:
        update_catalogues()
    cmd = [sys.executable, str(ROOT / "scripts" / "check_translations.py")]
    cmd += [] if args.strict else ["--report"]
    cmd += ["--summary"] if args.summary else []
    sys.exit(subprocess.run(cmd, cwd=ROOT).returncode)


if __name__ == "__main__":
    main()
