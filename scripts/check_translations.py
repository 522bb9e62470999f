"""Check the Chinese edition's message catalogues against the book's current English text.

    python scripts/check_translations.py            # list every problem; exit 1 if any
    python scripts/check_translations.py --summary  # one line per page
    python scripts/check_translations.py --report   # print, but exit 0 (scripts/build_book.py)

Reads the message templates that the gettext builder extracted from the current sources
(_build/gettext/<page>.pot: scripts/update_translations.py and scripts/build_book.py make them)
and the translations (locales/zh_CN/LC_MESSAGES/<page>.po). A page is complete when every
message of its template has a translation in its catalogue that is:

- present: the message is in the .po (else the catalogue predates the English text: run
  `make translations`) and its msgstr is not empty;
- not fuzzy: sphinx-intl marks a message fuzzy when the English changed under a translation;
  the translator checks the translation, edits it, and removes the `#, fuzzy` line;
- faithful to the math, code and links: the msgstr has the same inline math ($...$), code spans
  (`...`), roles ({cite}`...`) and link targets ((...) after [...]) as the msgid, in any order.

A message with nothing to translate (nothing left but numbers, punctuation and single letters
once its math and code are taken out, such as "E1") may keep an empty msgstr: the Chinese edition
then shows the English, which is the same. Display math and paragraphs of only math and code are
not extracted at all (book/_ext/editions.py). A msgstr identical to its msgid counts as
translated: that is the translator's choice (a name, a term kept in English).
"""

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parents[1]
POT_DIR = ROOT / "_build" / "gettext"
PO_DIR = ROOT / "locales" / "zh_CN" / "LC_MESSAGES"

# What a translation keeps as it is, tried in this order at each position of a message: a role
# with its target ({cite}`key`), a code span (`x` or `` `x` ``), display math, inline math, a
# link target.
UNTOUCHED = re.compile(
    r"(?P<role>\{[\w:.-]+\}`[^`]*`)"
    r"|(?P<code>(?P<ticks>`+)(?!`).+?(?<!`)(?P=ticks)(?!`))"
    r"|(?P<dmath>\$\$.+?\$\$)"
    r"|(?P<math>(?<!\\)\$[^$]+?(?<!\\)\$)"
    r"|(?P<link>\]\([^)\s]+\))",
    re.DOTALL,
)


@dataclass(frozen=True)
class Problem:
    kind: str  # "untranslated", "fuzzy", "changed"
    msgid: str
    where: str  # the message's first source location, "notebooks/00_setup.ipynb:30002"
    detail: str = ""

    def describe(self, width: int = 100) -> str:
        text = " ".join(self.msgid.split())
        text = text if len(text) <= width else text[: width - 3] + "..."
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.kind}: {self.where}: {text!r}{extra}"


def untouched_parts(message: str) -> Counter:
    """The math, code, roles and link targets of a message, counted (order does not matter)."""
    return Counter(m.group(0) for m in UNTOUCHED.finditer(message))


def has_prose(message: str) -> bool:
    """Whether anything is left to translate once the math, code and link targets are out."""
    rest = UNTOUCHED.sub(" ", message)
    return re.search(r"[^\W\d_]{2,}", rest) is not None


def changed_parts(msgid: str, msgstr: str) -> str:
    """How the translation's math, code and links differ from the English ("" if not)."""
    english, chinese = untouched_parts(msgid), untouched_parts(msgstr)
    if english == chinese:
        return ""
    missing = sorted((english - chinese).elements())
    extra = sorted((chinese - english).elements())
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"not in the English {extra}")
    return "; ".join(parts)


def read_catalogue(path: Path):
    with path.open("rb") as f:
        return read_po(f, ignore_obsolete=True)


def page_problems(pot: Path, po: Path | None) -> list[Problem]:
    """Every problem of one page: its template `pot` against its catalogue `po` (None: none)."""
    translations = {m.id: m for m in read_catalogue(po) if m.id} if po and po.exists() else {}
    found = []
    for message in read_catalogue(pot):
        if not message.id:
            continue  # the header
        if not isinstance(message.id, str):
            raise ValueError(f"{pot}: plural messages are not expected: {message.id!r}")
        where = ":".join(str(x) for x in message.locations[0]) if message.locations else "?"
        where = where.removeprefix("../../")
        translated = translations.get(message.id)
        msgstr = translated.string if translated is not None else ""
        if translated is not None and translated.fuzzy:
            found.append(Problem("fuzzy", message.id, where))
        elif not msgstr:
            if has_prose(message.id):
                detail = "" if translated is not None else "not in the .po: run make translations"
                found.append(Problem("untranslated", message.id, where, detail))
        elif detail := changed_parts(message.id, msgstr):
            found.append(Problem("changed", message.id, where, detail))
    return found


def problems(pot_dir: Path = POT_DIR, po_dir: Path = PO_DIR) -> dict[str, list[Problem]]:
    """Every page's problems, by page ("notebooks/00_setup"); pages without any are left out.

    Raises FileNotFoundError where there are no templates: extract them first.
    """
    pots = sorted(pot_dir.rglob("*.pot"))
    if not pots:
        raise FileNotFoundError(
            f"no message templates (.pot) in {pot_dir}: run `make translations` "
            "(or scripts/update_translations.py --check) to extract them"
        )
    found = {}
    for pot in pots:
        page = pot.relative_to(pot_dir).with_suffix("").as_posix()
        page_found = page_problems(pot, po_dir / f"{page}.po")
        if page_found:
            found[page] = page_found
    return found


def stale_catalogues(pot_dir: Path = POT_DIR, po_dir: Path = PO_DIR) -> list[str]:
    """Catalogues of pages that no longer exist (no template): to delete."""
    pages = {p.relative_to(pot_dir).with_suffix("") for p in pot_dir.rglob("*.pot")}
    return sorted(
        str(po.relative_to(po_dir))
        for po in po_dir.rglob("*.po")
        if po.relative_to(po_dir).with_suffix("") not in pages
    )


def report(found: dict[str, list[Problem]], po_dir: Path, summary: bool) -> list[str]:
    """The lines to print: per page a count of each kind of problem, then each problem."""
    lines = []
    for page, page_found in found.items():
        counts = Counter(p.kind for p in page_found)
        where = po_dir / f"{page}.po"
        where = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where
        lines.append(f"{where}: " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())))
        if not summary:
            lines += [f"    {p.describe()}" for p in page_found]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pot-dir", type=Path, default=POT_DIR)
    parser.add_argument("--po-dir", type=Path, default=PO_DIR)
    parser.add_argument("--summary", action="store_true", help="only a count per page")
    parser.add_argument("--report", action="store_true", help="exit 0 even if incomplete")
    args = parser.parse_args()
    try:
        found = problems(args.pot_dir, args.po_dir)
    except FileNotFoundError as error:
        sys.exit(f"check_translations: {error}")
    for stale in stale_catalogues(args.pot_dir, args.po_dir):
        print(f"check_translations: {stale} has no page any more (delete it)")
    lines = report(found, args.po_dir, args.summary)
    if lines:
        print(*lines, sep="\n")
    total = sum(len(v) for v in found.values())
    if not total:
        print("check_translations: every message of every page is translated")
        return
    pages = len(list(args.pot_dir.rglob("*.pot")))
    print(
        f"check_translations: {total} messages to translate or check, "
        f"on {len(found)} of {pages} pages"
    )
    if not args.report:
        sys.exit(1)


if __name__ == "__main__":
    main()
