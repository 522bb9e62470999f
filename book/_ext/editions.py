"""The book's two editions, English and Chinese, built from the same sources (a Sphinx extension).

The English edition is the book's root (`_build/html/`); the Chinese one is built by
scripts/build_book.py from the same pages with `language = "zh_CN"`, its prose taken from the
message catalogues in locales/zh_CN/LC_MESSAGES/ (one .po per page), into `_build/html/zh/`.

This extension does two things:

1. Math stays out of the message catalogues. Sphinx extracts a display-math block ($$...$$,
   \\begin{aligned}...) as a message of its own, and so a table cell or a paragraph that holds
   nothing but inline math and code (the notation page's symbols). The book does not translate
   math or code, so these nodes are marked untranslatable: `make translations` does not list them,
   and the Chinese edition shows them exactly as the English. (Inline math inside a sentence is
   part of that sentence's message; the translator keeps it as it is.)
2. Each page links to the same page in the other edition: a link above the page's title
   ("中文版" on an English page, "English" on a Chinese one) and a `<link rel="alternate"
   hreflang=...>` in its head. The links are relative, so they work on the published site and on
   the files opened from disk.
"""

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform

# Where each edition lives under the site's root, its link text (in its own language) and its
# language tag. The first is the root edition.
EDITIONS = {
    "en": {"path": "", "label": "English", "hreflang": "en"},
    "zh_CN": {"path": "zh/", "label": "中文版", "hreflang": "zh-CN"},
}


def edition_of(language: str | None) -> str:
    """The EDITIONS key of a Sphinx `language` setting (None or "en" is English)."""
    edition = language or "en"
    if edition not in EDITIONS:
        raise ValueError(f"no edition for language {language!r}: known {sorted(EDITIONS)}")
    return edition


def link_to_edition(pagename: str, here: str, there: str) -> str:
    """The relative URL, from page `pagename` of edition `here`, of the same page in `there`.

    >>> link_to_edition("notebooks/00_setup", "en", "zh_CN")
    '../zh/notebooks/00_setup.html'
    >>> link_to_edition("notebooks/00_setup", "zh_CN", "en")
    '../../notebooks/00_setup.html'
    """
    depth = pagename.count("/") + EDITIONS[here]["path"].count("/")
    return "../" * depth + EDITIONS[there]["path"] + pagename + ".html"


def is_math_only(node: nodes.Element) -> bool:
    """Whether a paragraph holds only inline math and code (and spaces or punctuation)."""
    if not isinstance(node, nodes.paragraph) or not node.children:
        return False
    has_math = False
    for child in node.children:
        if isinstance(child, nodes.math | nodes.literal):
            has_math = True
        elif isinstance(child, nodes.Text):
            if any(ch.isalnum() for ch in child.astext()):
                return False
        else:
            return False
    return has_math


class KeepMathUntranslated(SphinxTransform):
    """Mark display math, and paragraphs of only math and code, as not translatable."""

    default_priority = 15  # before sphinx.transforms.i18n.Locale (20), which translates

    def apply(self, **kwargs) -> None:
        for node in self.document.findall(nodes.math_block):
            node["translatable"] = False
        for node in self.document.findall(is_math_only):
            node["translatable"] = False


def add_edition_links(app: Sphinx, pagename: str, templatename: str, context: dict, doctree):
    """Put a link to this page's other edition(s) above the page's body, and in its head."""
    if "body" not in context or pagename not in app.env.found_docs:
        return  # the search page and the index have no source page
    here = edition_of(app.config.language)
    links, alternates = [], []
    for there, edition in EDITIONS.items():
        if there == here:
            continue
        url = link_to_edition(pagename, here, there)
        lang = edition["hreflang"]
        links.append(
            f'<a class="ddpm-edition-link" href="{url}" hreflang="{lang}" lang="{lang}">'
            f"{edition['label']}</a>"
        )
        alternates.append(f'<link rel="alternate" hreflang="{lang}" href="{url}" />')
    context["body"] = f'<p class="ddpm-editions">{" ".join(links)}</p>\n' + context["body"]
    context["metatags"] = context.get("metatags", "") + "\n".join(alternates) + "\n"


def setup(app: Sphinx) -> dict:
    app.add_transform(KeepMathUntranslated)
    app.connect("html-page-context", add_edition_links)
    app.add_css_file("ddpm-editions.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
