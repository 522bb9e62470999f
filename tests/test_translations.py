"""The Chinese edition's machinery: the translation check (scripts/check_translations.py) on small
catalogues made here, the extraction of the real pages' messages (no code, no outputs, no display
math), the committed catalogues, the language links (book/_ext/editions.py) and the switch of
the translation gate (scripts/build_book.py).
"""

import importlib.util
import json
import re
import subprocess
import sys
import textwrap

import pytest
from babel.messages.pofile import read_po
from conftest import ROOT, load_script, page_source, toc_pages
from docutils import nodes

check_translations = load_script("check_translations")
PO_DIR = ROOT / "locales" / "zh_CN" / "LC_MESSAGES"


def load_editions():
    path = ROOT / "book" / "_ext" / "editions.py"
    spec = importlib.util.spec_from_file_location("editions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HEADER = textwrap.dedent(
    """\
    msgid ""
    msgstr ""
    "Content-Type: text/plain; charset=UTF-8\\n"

    """
)


def write_catalogue(path, entries):
    """A .pot or .po with `entries`: (msgid, msgstr, fuzzy) triples."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = HEADER
    for i, (msgid, msgstr, fuzzy) in enumerate(entries):
        text += f"#: ../../book/page.md:{i + 1}\n"
        text += "#, fuzzy\n" if fuzzy else ""
        text += f"msgid {json.dumps(msgid, ensure_ascii=False)}\n"
        text += f"msgstr {json.dumps(msgstr, ensure_ascii=False)}\n\n"
    path.write_text(text, encoding="utf-8")


ENGLISH = [
    "The forward process",
    "A **diffusion model** adds noise over $T$ steps with `q_step` {cite}`ho2020denoising`.",
    "See the [notation page](notation.md).",
    "E1",  # nothing to translate: a label
]
CHINESE = [
    "前向过程",
    "**扩散模型**用 `q_step` 在 $T$ 步中加入噪声 {cite}`ho2020denoising`。",
    "见[符号表](notation.md)。",
    "",
]


@pytest.fixture
def book(tmp_path):
    """A one-page book's template and a complete translation of it; returns (pot_dir, po_dir)."""
    pot_dir, po_dir = tmp_path / "gettext", tmp_path / "po"
    write_catalogue(pot_dir / "book" / "page.pot", [(m, "", False) for m in ENGLISH])
    write_catalogue(
        po_dir / "book" / "page.po", [(m, s, False) for m, s in zip(ENGLISH, CHINESE, strict=True)]
    )
    return pot_dir, po_dir


def run_check(pot_dir, po_dir, *flags):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_translations.py"), "--pot-dir", pot_dir]
        + ["--po-dir", po_dir, *flags],
        capture_output=True,
        text=True,
    )


def test_a_complete_translation_passes(book):
    pot_dir, po_dir = book
    assert check_translations.problems(pot_dir, po_dir) == {}
    result = run_check(*book)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every message of every page is translated" in result.stdout


def test_an_untranslated_message_fails(book):
    pot_dir, po_dir = book
    entries = [(m, s, False) for m, s in zip(ENGLISH, CHINESE, strict=True)]
    entries[2] = (ENGLISH[2], "", False)
    write_catalogue(po_dir / "book" / "page.po", entries)
    found = check_translations.problems(pot_dir, po_dir)
    assert [(p.kind, p.msgid, p.where) for p in found["book/page"]] == [
        ("untranslated", ENGLISH[2], "book/page.md:3")
    ]
    result = run_check(*book)
    assert result.returncode == 1
    assert "book/page.po: 1 untranslated" in result.stdout
    assert "untranslated: book/page.md:3: 'See the [notation page](notation.md).'" in result.stdout
    # As a report (what the book build does while the gate is off): printed, exit 0.
    report = run_check(*book, "--report", "--summary")
    assert report.returncode == 0 and "book/page.po: 1 untranslated" in report.stdout


def test_a_fuzzy_message_fails(book):
    pot_dir, po_dir = book
    entries = [(m, s, False) for m, s in zip(ENGLISH, CHINESE, strict=True)]
    entries[0] = (ENGLISH[0], "前向过程", True)  # sphinx-intl: the English changed under it
    write_catalogue(po_dir / "book" / "page.po", entries)
    found = check_translations.problems(pot_dir, po_dir)
    assert [(p.kind, p.msgid) for p in found["book/page"]] == [("fuzzy", ENGLISH[0])]
    assert run_check(*book).returncode == 1


def test_a_message_missing_from_the_catalogue_or_a_missing_catalogue_fails(book):
    pot_dir, po_dir = book
    # The English gained a paragraph that `make translations` has not yet added to the .po.
    write_catalogue(
        pot_dir / "book" / "page.pot", [(m, "", False) for m in ENGLISH + ["A new paragraph."]]
    )
    (problem,) = check_translations.problems(pot_dir, po_dir)["book/page"]
    assert problem.kind == "untranslated" and "make translations" in problem.detail
    # A page with no catalogue at all: every message with prose in it.
    write_catalogue(pot_dir / "notebooks" / "new.pot", [(m, "", False) for m in ENGLISH])
    found = check_translations.problems(pot_dir, po_dir)
    assert [p.msgid for p in found["notebooks/new"]] == ENGLISH[:3]


def test_changed_math_code_or_links_fail(book):
    pot_dir, po_dir = book
    entries = [(m, s, False) for m, s in zip(ENGLISH, CHINESE, strict=True)]
    entries[1] = (ENGLISH[1], "**扩散模型**用 `q_step` 在 $N$ 步中加入噪声。", False)
    entries[2] = (ENGLISH[2], "见[符号表](glossary.md)。", False)
    write_catalogue(po_dir / "book" / "page.po", entries)
    found = check_translations.problems(pot_dir, po_dir)["book/page"]
    assert [p.kind for p in found] == ["changed", "changed"]
    assert "'$T$'" in found[0].detail and "'$N$'" in found[0].detail
    assert "{cite}`ho2020denoising`" in found[0].detail
    assert "](notation.md)" in found[1].detail


def test_what_a_translation_must_keep():
    parts = check_translations.untouched_parts(
        "a `x` and `` `y` `` with {eq}`e1`, $a$ and $$b$$, [l](p.md) $a$"
    )
    assert parts == {
        "`x`": 1,
        "`` `y` ``": 1,
        "{eq}`e1`": 1,
        "$a$": 2,
        "$$b$$": 1,
        "](p.md)": 1,
    }
    assert not check_translations.has_prose("E1")
    assert not check_translations.has_prose("$x_t$ `xt` (1, 2)")
    assert check_translations.has_prose("`xt` at `t = T`")
    assert check_translations.has_prose("扩散模型")


def test_no_templates_is_an_error_not_a_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="make translations"):
        check_translations.problems(tmp_path / "gettext", tmp_path / "po")
    result = run_check(tmp_path / "gettext", tmp_path / "po", "--report")
    assert result.returncode != 0


def test_stale_catalogues_are_named(book):
    pot_dir, po_dir = book
    write_catalogue(po_dir / "book" / "gone.po", [("Old", "旧", False)])
    assert check_translations.stale_catalogues(pot_dir, po_dir) == ["book/gone.po"]


# ---- the real pages' messages -------------------------------------------------------------------


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """The message templates of the book's current pages (the gettext builder, as
    `make translations` runs it, into a temporary folder)."""
    out = tmp_path_factory.mktemp("gettext")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sphinx_build.py"), "gettext", str(out)]
        + ["-D", 'nb_execution_mode="off"', "--warnings-ok", "-q"]
        + ["--doctrees", str(out.parent / "doctrees")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    catalogues = {}
    for pot in sorted(out.rglob("*.pot")):
        with pot.open("rb") as f:
            catalogues[pot.relative_to(out).with_suffix("").as_posix()] = [
                m.id for m in read_po(f) if m.id
            ]
    return catalogues


@pytest.mark.slow
def test_every_page_has_a_template(templates):
    assert sorted(templates) == sorted(toc_pages())
    assert "Glossary" in templates["book/glossary"]


@pytest.mark.slow
def test_templates_hold_no_code_no_outputs_and_no_display_math(templates, notebook_page):
    """Code cells (and so their outputs) and $$...$$ blocks are not messages; prose is."""
    messages = templates[notebook_page]
    cells = json.loads(page_source(notebook_page).read_text())["cells"]
    code_lines = {
        line.strip()
        for cell in cells
        if cell["cell_type"] == "code"
        for line in "".join(cell["source"]).splitlines()
        if len(line.strip()) > 25 and not line.strip().startswith("#")
    }
    leaked = [line for line in code_lines if any(line in m for m in messages)]
    assert leaked == [], "code cells' lines in the message catalogue"
    markdown = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    display_math = [m.strip() for m in re.findall(r"\$\$(.+?)\$\$", markdown, re.S)]
    math_messages = [m for m in messages for tex in display_math if tex and tex in m.strip()]
    assert math_messages == [], "display math in the message catalogue"
    assert messages, "the chapter's prose is missing from its catalogue"


# ---- the committed catalogues ------------------------------------------------------------------


def committed_catalogues():
    return sorted(PO_DIR.rglob("*.po"))


def test_committed_catalogues_parse_and_keep_math_and_code():
    """Every translation in locales/ keeps its English's math, code and link targets."""
    assert committed_catalogues(), "no catalogue in locales/zh_CN/LC_MESSAGES"
    changed = []
    for po in committed_catalogues():
        with po.open("rb") as f:
            catalogue = read_po(f)
        for m in catalogue:
            if m.id and m.string and not m.fuzzy:
                if detail := check_translations.changed_parts(m.id, m.string):
                    changed.append(f"{po.relative_to(ROOT)}: {m.id[:60]!r}: {detail}")
    assert changed == []


def test_each_catalogue_is_a_page_of_the_book():
    pages = {f"{p}.po" for p in toc_pages()}
    assert {str(po.relative_to(PO_DIR)) for po in committed_catalogues()} <= pages


def test_glossary_terms_are_the_issue_s():
    """The glossary gives the Chinese term of the book's key terms (issue 17)."""
    text = (ROOT / "book" / "glossary.md").read_text()
    rows = dict(re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|", text, re.M))
    for english, chinese in {
        "diffusion model": "扩散模型",
        "forward process": "前向过程",
        "reverse process": "逆向过程",
        "posterior": "后验（后验分布）",
        "variational lower bound, evidence lower bound (ELBO)": "变分下界，证据下界（ELBO）",
        "noise-prediction network": "噪声预测网络",
    }.items():
        assert rows.get(english) == chinese


# ---- the language links and the switch ---------------------------------------------------------


def test_links_between_editions():
    editions = load_editions()
    link = editions.link_to_edition
    assert link("book/intro", "en", "zh_CN") == "../zh/book/intro.html"
    assert link("book/intro", "zh_CN", "en") == "../../book/intro.html"
    assert link("search", "en", "zh_CN") == "zh/search.html"
    assert link("search", "zh_CN", "en") == "../search.html"
    assert editions.edition_of(None) == editions.edition_of("en") == "en"
    with pytest.raises(ValueError, match="no edition"):
        editions.edition_of("fr")


def test_math_only_paragraphs_are_recognised():
    editions = load_editions()
    only_math = nodes.paragraph(
        "", "", nodes.math("", "x"), nodes.Text(", "), nodes.literal("", "x")
    )
    prose = nodes.paragraph("", "", nodes.math("", "x"), nodes.Text(" is the image"))
    label = nodes.paragraph("", "", nodes.Text("E1"))
    assert editions.is_math_only(only_math)
    assert not editions.is_math_only(prose)
    assert not editions.is_math_only(label)


def test_the_translation_gate_switch(monkeypatch):
    build_book = load_script("build_book")
    assert isinstance(build_book.TRANSLATIONS_STRICT, bool)
    monkeypatch.delenv("TRANSLATIONS_STRICT", raising=False)
    assert build_book.translations_strict() is build_book.TRANSLATIONS_STRICT
    monkeypatch.setenv("TRANSLATIONS_STRICT", "1")
    assert build_book.translations_strict() is True
    monkeypatch.setenv("TRANSLATIONS_STRICT", "0")
    assert build_book.translations_strict(default=True) is False
    monkeypatch.setenv("TRANSLATIONS_STRICT", "yes")
    with pytest.raises(SystemExit, match="must be 0 or 1"):
        build_book.translations_strict()
