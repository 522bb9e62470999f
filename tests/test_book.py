"""The built book (_build/html, made by scripts/build_book.py): every page of the table of contents
is there, every chapter has its Colab button, nothing is loaded from a CDN, no chapter shows an
error, and the links, the bibliography and the static slider's widget state are in place.

The first tests check _toc.yml itself and need no build.
"""

import json
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from bs4 import BeautifulSoup
from conftest import ROOT, load_script

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
# Resources a page loads (as opposed to links a reader may follow).
RESOURCE_ATTRS = [
    ("script", "src"),
    ("img", "src"),
    ("iframe", "src"),
    ("source", "src"),
    ("audio", "src"),
    ("video", "src"),
    ("embed", "src"),
    ("object", "data"),
]
RESOURCE_RELS = {"stylesheet", "preload", "modulepreload", "prefetch", "icon", "manifest"}


def soup(path: Path) -> BeautifulSoup:
    return BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def html_of(book_html: Path, page: str) -> Path:
    return book_html / f"{page}.html"


def is_remote(url: str) -> bool:
    return bool(re.match(r"^(https?:)?//", url.strip(), re.I))


def remote_resources(page: BeautifulSoup) -> list[str]:
    """The absolute http(s) URLs of everything the page loads by itself."""
    found = [
        tag[attr] for name, attr in RESOURCE_ATTRS for tag in page.find_all(name) if tag.get(attr)
    ]
    for link in page.find_all("link", href=True):
        if RESOURCE_RELS & {r.lower() for r in link.get("rel", [])}:
            found.append(link["href"])
    for tag in page.find_all(style=True):  # inline style="background: url(...)"
        found += re.findall(r"url\(\s*['\"]?([^'\")]+)", tag["style"])
    for style in page.find_all("style"):
        found += re.findall(r"url\(\s*['\"]?([^'\")]+)", style.get_text())
        found += re.findall(r"@import\s+['\"]([^'\"]+)", style.get_text())
    # html-manager would fetch any widget module it lacks from this address.
    found += [
        tag["data-jupyter-widgets-cdn"]
        for tag in page.find_all(**{"data-jupyter-widgets-cdn": True})
    ]
    return [url for url in found if is_remote(url)]


# ---- _toc.yml (no build needed) -----------------------------------------------------------------


def test_toc_lists_every_chapter():
    """Every notebook in notebooks/ is a chapter of the book, in order (scripts/check_toc.py)."""
    assert load_script("check_toc").problems() == []


def test_check_toc_catches_a_missing_or_unknown_chapter(tmp_path):
    check_toc = load_script("check_toc")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "intro.md").write_text("# Intro\n")
    for name in ["00_a", "01_b"]:
        (tmp_path / "notebooks" / f"{name}.ipynb").write_text("{}")
    toc = {"format": "jb-book", "root": "book/intro", "chapters": [{"file": "notebooks/00_a"}]}
    (tmp_path / "_toc.yml").write_text(yaml.safe_dump(toc))
    assert check_toc.problems(tmp_path) == ["notebooks/01_b.ipynb is not in _toc.yml"]

    toc["chapters"] = [{"file": "notebooks/01_b"}, {"file": "notebooks/00_a"}, {"file": "book/x"}]
    (tmp_path / "_toc.yml").write_text(yaml.safe_dump(toc))
    found = check_toc.problems(tmp_path)
    assert "_toc.yml lists book/x, which does not exist" in found
    assert any("out of order" in p for p in found)


def test_remote_resource_detection_can_fail():
    """The CDN check below finds what it must (so that its passing means something)."""
    page = BeautifulSoup(
        '<script src="https://cdn.jsdelivr.net/npm/x.js"></script>'
        '<link rel="stylesheet" href="//cdnjs.cloudflare.com/a.css">'
        '<a href="https://example.org/paper.pdf">a link is fine</a>'
        '<script src="../_static/vendor/require.js"></script>',
        "html.parser",
    )
    assert remote_resources(page) == [
        "https://cdn.jsdelivr.net/npm/x.js",
        "//cdnjs.cloudflare.com/a.css",
    ]


# ---- the built book -----------------------------------------------------------------------------


@pytest.mark.book
def test_page_is_built(book_html, toc_page):
    page = html_of(book_html, toc_page)
    assert page.exists(), f"{toc_page} is in _toc.yml but {page} was not built"
    title = soup(page).find("h1")
    assert title is not None and title.get_text(strip=True), f"{page} has no title"


@pytest.mark.book
def test_index_opens_the_book(book_html):
    root = load_script("check_toc").toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))[0]
    assert f"{root}.html" in (book_html / "index.html").read_text()


@pytest.mark.book
def test_notebook_page_has_colab_button(book_html, notebook_page):
    """The launch button opens this chapter's notebook from the repository in Colab."""
    org_repo = urlsplit(CONFIG["repository"]["url"]).path.strip("/")
    branch = CONFIG["repository"]["branch"]
    expected = (
        f"https://colab.research.google.com/github/{org_repo}/blob/{branch}/{notebook_page}.ipynb"
    )
    links = [a["href"] for a in soup(html_of(book_html, notebook_page)).find_all("a", href=True)]
    assert expected in links, f"no Colab button to {expected}; Colab links: " + str(
        [u for u in links if "colab" in u]
    )


@pytest.mark.book
def test_no_page_loads_anything_from_a_cdn(book_html):
    """Every script, style sheet, image and font comes with the book (it works offline)."""
    offenders = {}
    for path in sorted(book_html.rglob("*.html")):
        if "reports" in path.relative_to(book_html).parts:
            continue
        remote = remote_resources(soup(path))
        if remote:
            offenders[str(path.relative_to(book_html))] = remote
    for css in sorted(book_html.glob("_static/**/*.css")):
        text = re.sub(
            r"/\*.*?\*/", "", css.read_text(encoding="utf-8", errors="replace"), flags=re.S
        )
        remote = [
            u for u in re.findall(r"(?:url\(|@import)\s*['\"]?([^'\")\s;]+)", text) if is_remote(u)
        ]
        if remote:
            offenders[str(css.relative_to(book_html))] = remote
    assert offenders == {}


@pytest.mark.book
def test_math_and_widgets_are_served_from_vendored_copies(book_html):
    vendor = book_html / "_static" / "vendor"
    for name in ["mathjax/tex-chtml.js", "require.js", "html-manager/embed-amd.js"]:
        assert (vendor / name).is_file(), f"_static/vendor/{name} is missing"
    # MathJax loads its fonts from beside itself.
    assert list(vendor.glob("mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff"))
    page = soup(book_html / "notebooks" / "02_forward_process.html")
    scripts = [s["src"] for s in page.find_all("script", src=True)]
    assert any("_static/vendor/mathjax/tex-chtml.js" in s for s in scripts)
    assert any("_static/vendor/html-manager/embed-amd.js" in s for s in scripts)


@pytest.mark.book
def test_no_chapter_shows_an_execution_error(book_html, notebook_page):
    reports = list((book_html / "reports").rglob("*.err.log"))
    assert reports == [], f"notebook execution failed: {reports}"
    page = soup(html_of(book_html, notebook_page))
    errors = []
    for output in page.select("div.output.traceback, div.output.error"):
        cell = output.find_parent("div", class_="cell")
        # A cell tagged raises-exception shows its error on purpose.
        if cell is None or "tag_raises-exception" not in cell.get("class", []):
            errors.append(output.get_text()[:500])
    assert errors == [], f"{notebook_page} shows an error output"


@pytest.mark.book
def test_internal_links_resolve(book_html, toc_page):
    """Every relative link of the page leads to a file of the built book."""
    path = html_of(book_html, toc_page)
    broken = []
    for a in soup(path).find_all("a", href=True):
        href = a["href"]
        parts = urlsplit(href)
        if parts.scheme or parts.netloc or not parts.path:  # external, or a #fragment
            continue
        target = (path.parent / unquote(parts.path)).resolve()
        if not target.exists():
            broken.append(href)
    assert broken == []


@pytest.mark.book
def test_setup_chapter_links_to_the_notation_page(book_html):
    page = soup(book_html / "notebooks" / "00_setup.html")
    hrefs = [a["href"] for a in page.find_all("a", href=True)]
    assert "../book/notation.html" in hrefs
    assert (book_html / "book" / "notation.html").exists()


@pytest.mark.book
def test_bibliography_lists_the_cited_papers(book_html):
    text = soup(book_html / "book" / "bibliography.html").get_text(" ").lower()
    for title in [
        "Denoising Diffusion Probabilistic Models",
        "Deep Unsupervised Learning using Nonequilibrium Thermodynamics",
    ]:
        assert title.lower() in text  # the style sets titles in sentence case
    # A citation in the preface links to its entry on the bibliography page.
    intro = soup(book_html / "book" / "intro.html")
    assert any("bibliography.html#" in a["href"] for a in intro.find_all("a", href=True))


@pytest.mark.book
def test_static_slider_widget_state_is_stored(book_html):
    """Chapter 02's page carries the state of its static slider: a SelectionSlider linked in the
    browser to a Stack of precomputed images (so it works with no kernel)."""
    page = soup(book_html / "notebooks" / "02_forward_process.html")
    script = page.find("script", type="application/vnd.jupyter.widget-state+json")
    assert script is not None, "no widget state: the static slider cannot render"
    state = json.loads(script.string)["state"]
    models = {mid: m["state"] for mid, m in state.items()}
    by_name = {}
    for mid, m in state.items():
        by_name.setdefault(m["model_name"], []).append(mid)
    assert "SelectionSliderModel" in by_name and "StackModel" in by_name
    links = [models[mid] for mid in by_name.get("LinkModel", [])]
    stacks = {f"IPY_MODEL_{mid}" for mid in by_name["StackModel"]}
    sliders = {f"IPY_MODEL_{mid}" for mid in by_name["SelectionSliderModel"]}
    linked = [
        link for link in links if link["source"][0] in sliders and link["target"][0] in stacks
    ]
    assert linked, "the static slider is not linked to its stack of images"
    for link in linked:
        stack = models[link["target"][0].removeprefix("IPY_MODEL_")]
        slider = models[link["source"][0].removeprefix("IPY_MODEL_")]
        assert len(stack["children"]) == len(slider["_options_labels"]) > 1
    # Every slider's view is on the page.
    views = page.find_all("script", type="application/vnd.jupyter.widget-view+json")
    assert len(views) >= len(linked)


@pytest.mark.book
def test_tables_that_cells_display_are_rendered(book_html):
    """Chapter 20 displays its GPU tables as Markdown: they must become HTML tables, not pipes."""
    page = soup(html_of(book_html, "notebooks/20_performance"))
    outputs = page.select("div.cell_output")
    as_text = [o for o in outputs if re.search(r"^\|.*\|$", o.get_text(), re.MULTILINE)]
    assert not as_text, "a Markdown table shown as text"
    if list((ROOT / "book" / "perf").glob("*/bench_gpu_*.json")):
        headers = [th.get_text(strip=True) for th in page.select("div.cell_output table th")]
        assert "training" in headers and "sampling" in headers
    if list((ROOT / "book" / "perf").glob("*/notebook_runs.json")):
        cells = [td.get_text(strip=True) for td in page.select("div.cell_output table td")]
        assert "00_setup" in cells


# ---- the Chinese edition (_build/html/zh, built from the same pages and locales/) -------------

PO_DIR = ROOT / "locales" / "zh_CN" / "LC_MESSAGES"


@pytest.fixture(scope="session")
def zh_html(book_html) -> Path:
    """The Chinese edition's folder, _build/html/zh (fails if missing or older than locales/)."""
    index = book_html / "zh" / "index.html"
    if not index.exists():
        pytest.fail("the Chinese edition is missing: rebuild with `python scripts/build_book.py`")
    built = index.stat().st_mtime
    stale = [
        str(po.relative_to(ROOT)) for po in PO_DIR.rglob("*.po") if po.stat().st_mtime > built
    ]
    if stale:
        pytest.fail(f"_build/html/zh is older than {', '.join(stale)}: rebuild the book")
    return book_html / "zh"


def catalogue(page: str) -> dict[str, str]:
    """A page's translations: msgid -> msgstr, for the messages translated and not fuzzy."""
    from babel.messages.pofile import read_po

    path = PO_DIR / f"{page}.po"
    if not path.exists():
        return {}
    with path.open("rb") as f:
        return {m.id: m.string for m in read_po(f) if m.id and m.string and not m.fuzzy}


@pytest.mark.book
def test_chinese_page_is_built(zh_html, toc_page):
    page = html_of(zh_html, toc_page)
    assert page.exists(), f"{toc_page} is in _toc.yml but {page} was not built"
    parsed = soup(page)
    assert parsed.find("html")["lang"] == "zh-CN"
    title = parsed.find("h1")
    assert title is not None and title.get_text(strip=True), f"{page} has no title"


@pytest.mark.book
def test_each_page_links_to_the_same_page_in_the_other_edition(book_html, zh_html, toc_page):
    english, chinese = html_of(book_html, toc_page), html_of(zh_html, toc_page)
    for page, other, lang in [(english, chinese, "zh-CN"), (chinese, english, "en")]:
        parsed = soup(page)
        links = parsed.select("p.ddpm-editions a.ddpm-edition-link")
        assert len(links) == 1, f"{page}: expected one link to the other edition"
        assert links[0]["hreflang"] == lang
        assert not is_remote(links[0]["href"]), "the link must work offline (relative)"
        assert (page.parent / links[0]["href"]).resolve() == other.resolve()
        alternate = parsed.find("link", rel="alternate", hreflang=lang)
        assert alternate is not None and alternate["href"] == links[0]["href"]


@pytest.mark.book
def test_chinese_edition_shows_the_translated_prose(book_html, zh_html):
    """The titles that the catalogues translate are the Chinese pages' titles; the English
    edition keeps the English."""
    checked = 0
    for page in load_script("check_toc").toc_files(
        yaml.safe_load((ROOT / "_toc.yml").read_text())
    ):
        english_title = soup(html_of(book_html, page)).find("h1").get_text(strip=True)
        english_title = english_title.rstrip("#").strip()
        translation = catalogue(page).get(english_title)
        if translation is None:
            continue
        chinese_title = soup(html_of(zh_html, page)).find("h1").get_text(strip=True)
        assert chinese_title.rstrip("#").strip() == translation, page
        checked += 1
    assert checked >= 4, "the intro, bibliography, glossary and chapter 00 are translated"


@pytest.mark.book
def test_untranslated_prose_falls_back_to_english(book_html, zh_html):
    """A heading whose message has no translation yet shows in English on the Chinese page."""
    from babel.messages.pofile import read_po

    pages = load_script("check_toc").toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))
    for page in pages:
        path = PO_DIR / f"{page}.po"
        if not path.exists():
            continue
        with path.open("rb") as f:
            untranslated = {m.id for m in read_po(f) if m.id and not m.string}
        for heading in soup(html_of(book_html, page)).select("h2"):
            text = heading.get_text(strip=True).rstrip("#").strip()
            if text in untranslated:
                zh_headings = [
                    h.get_text(strip=True).rstrip("#").strip()
                    for h in soup(html_of(zh_html, page)).select("h2")
                ]
                assert text in zh_headings, f"{page}: untranslated {text!r} is not shown"
                return
    pytest.skip("every heading is translated")


@pytest.mark.book
def test_both_editions_show_the_same_math_and_outputs(book_html, zh_html, toc_page):
    """Math and code are not translated, and the notebooks' outputs are the same run's."""
    english, chinese = soup(html_of(book_html, toc_page)), soup(html_of(zh_html, toc_page))

    def math(page):
        return [" ".join(m.get_text().split()) for m in page.select("article .math")]

    def outputs(page):
        return [
            (len(o.select("img")), o.get_text(" ", strip=True)[:200])
            for o in page.select("article div.cell_output")
        ]

    assert sorted(math(chinese)) == sorted(math(english)), "the Chinese page's math differs"
    assert outputs(chinese) == outputs(english), "the Chinese page's cell outputs differ"
    code = [c.get_text() for c in english.select("article div.cell_input")]
    assert [c.get_text() for c in chinese.select("article div.cell_input")] == code


@pytest.mark.book
def test_chinese_edition_checks(zh_html, notebook_page):
    """The English edition's checks of a chapter page, on the Chinese edition."""
    test_no_chapter_shows_an_execution_error(zh_html, notebook_page)
    test_notebook_page_has_colab_button(zh_html, notebook_page)


@pytest.mark.book
def test_chinese_internal_links_resolve(zh_html, toc_page):
    test_internal_links_resolve(zh_html, toc_page)


@pytest.mark.book
def test_chinese_edition_has_its_static_slider_math_and_bibliography(zh_html):
    test_math_and_widgets_are_served_from_vendored_copies(zh_html)
    test_static_slider_widget_state_is_stored(zh_html)
    test_setup_chapter_links_to_the_notation_page(zh_html)
    test_bibliography_lists_the_cited_papers(zh_html)
