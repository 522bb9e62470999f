"""The built book in a real browser: Debian's Chromium, driven by Playwright.

Every page of the table of contents is served from _build/html by a local HTTP server and opened
in headless Chromium. Each page must load with no failed request, no request leaving this machine
and no console error; its math must be typeset by MathJax (no raw TeX left in the text); its
figures must be present. On chapter 02's page, dragging the static t-slider must change the
picture, with no kernel behind the page.

Chromium comes from Debian (`apt-get install -y chromium`; .ci/run does it), never from
`playwright install`. Where it is missing, these tests are skipped.
"""

import functools
import http.server
import json
import re
import shutil
import threading
from dataclasses import dataclass, field

import pytest
from conftest import page_source, toc_pages

pytestmark = [pytest.mark.browser, pytest.mark.book]

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
if CHROMIUM is None:
    pytest.skip(
        "Chromium is not installed: install Debian's chromium: apt-get install -y chromium",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser)")

# Requests the browser makes on its own, not the page: Chromium asks every site for
# /favicon.ico, and the book has no favicon.
ALLOWED_FAILED_URLS = [re.compile(r"/favicon\.ico$")]
# Console errors that are expected. Keep this list short and say why for each entry. (A failed
# load of an allowed URL above is not reported either: Chromium logs it as a console error.)
ALLOWED_CONSOLE_ERRORS: list[re.Pattern] = []
# Text that means TeX was not typeset: $$, \( \) \[ \], or a TeX command such as \frac.
RAW_TEX = re.compile(r"\$\$|\\[()[\]]|\\[a-zA-Z]+")
HIDDEN_TAGS = {"remove-cell", "remove_cell", "remove-output", "remove_output"}


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output readable
        pass


@pytest.fixture(scope="module")
def base_url(book_html):
    """The built book, served on a free local port for the duration of this module."""
    handler = functools.partial(QuietHandler, directory=str(book_html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@dataclass
class Visit:
    """What one page did in the browser."""

    problems: list[str] = field(default_factory=list)  # failed requests, console errors, ...
    off_site: list[str] = field(default_factory=list)  # requests that would leave the machine
    math_elements: int = 0  # Sphinx's .math elements (TeX for MathJax)
    untypeset_math: list[str] = field(default_factory=list)  # .math with no mjx-container
    math_errors: list[str] = field(default_factory=list)  # MathJax's mjx-merror
    raw_tex: list[str] = field(default_factory=list)  # TeX left in the visible text
    output_images: list[dict] = field(default_factory=list)  # figures in cell outputs
    broken_images: list[str] = field(default_factory=list)
    widget_views: int = 0
    rendered_views: int = 0


def open_page(browser, base_url: str, page_path: str):
    """Open a page in a fresh browser context; return (context, page, visit) with listeners set."""
    visit = Visit()
    context = browser.new_context(viewport={"width": 1280, "height": 1000})

    def route(r):
        url = r.request.url
        if url.startswith(base_url):
            r.continue_()
        else:  # nothing may leave this machine: record it and refuse it
            visit.off_site.append(url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()

    def allowed_url(url: str) -> bool:
        return any(p.search(url) for p in ALLOWED_FAILED_URLS)

    def on_failed(request):
        if not allowed_url(request.url) and request.url.startswith(base_url):
            visit.problems.append(f"request failed: {request.url} ({request.failure})")

    def on_response(response):
        if response.status >= 400 and not allowed_url(response.url):
            visit.problems.append(f"HTTP {response.status}: {response.url}")

    def on_console(message):
        if message.type != "error":
            return
        if message.text.startswith("Failed to load resource") and allowed_url(
            message.location.get("url", "")
        ):
            return
        if not any(p.search(message.text) for p in ALLOWED_CONSOLE_ERRORS):
            where = message.location.get("url", "")
            visit.problems.append(f"console error: {message.text} ({where})")

    page.on("requestfailed", on_failed)
    page.on("response", on_response)
    page.on("console", on_console)
    page.on("pageerror", lambda error: visit.problems.append(f"page error: {error}"))
    page.goto(base_url + page_path, wait_until="load")
    # MathJax 3 typesets after loading; the widgets render on "load".
    page.evaluate(
        "() => window.MathJax && MathJax.startup ? MathJax.startup.promise.then(() => true) : true"
    )
    page.wait_for_function(
        """() => [...document.querySelectorAll('.widget-subarea')]
                 .every(area => area.children.length > 0)""",
        timeout=20_000,
    )
    page.wait_for_load_state("networkidle")
    return context, page, visit


INSPECT_JS = r"""() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main');
  const maths = [...article.querySelectorAll('.math')];
  const clone = article.cloneNode(true);
  clone.querySelectorAll('pre, code, .highlight, mjx-container, script, style, .cell_input')
       .forEach(e => e.remove());
  const imgs = [...article.querySelectorAll('.cell_output img')];
  return {
    mathElements: maths.length,
    untypeset: maths.filter(m => !m.querySelector('mjx-container'))
                    .map(m => m.textContent.slice(0, 80)),
    mathErrors: [...article.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 80)),
    text: clone.textContent,
    outputImages: imgs.map(i => ({src: i.src.slice(0, 80), width: i.naturalWidth,
                                  complete: i.complete,
                                  widget: !!i.closest('.widget-subarea')})),
    broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0)
                                .map(i => i.src.slice(0, 120)),
    widgetViews: document.querySelectorAll(
        'script[type="application/vnd.jupyter.widget-view+json"]').length,
    renderedViews: [...document.querySelectorAll('.widget-subarea')]
                       .filter(a => a.querySelector('.jupyter-widgets')).length,
  };
}"""


@pytest.fixture(scope="module")
def visits(browser, base_url):
    """Each page is opened once (lazily); the tests below read what it did."""
    cache: dict[str, Visit] = {}

    def get(toc_page: str) -> Visit:
        if toc_page not in cache:
            context, page, visit = open_page(browser, base_url, f"{toc_page}.html")
            info = page.evaluate(INSPECT_JS)
            context.close()
            visit.math_elements = info["mathElements"]
            visit.untypeset_math = info["untypeset"]
            visit.math_errors = info["mathErrors"]
            visit.raw_tex = [
                info["text"][max(0, m.start() - 40) : m.end() + 40]
                for m in RAW_TEX.finditer(info["text"])
            ]
            visit.output_images = info["outputImages"]
            visit.broken_images = info["broken"]
            visit.widget_views = info["widgetViews"]
            visit.rendered_views = info["renderedViews"]
            cache[toc_page] = visit
        return cache[toc_page]

    return get


def test_page_loads_cleanly(visits, toc_page):
    """No failed request, no HTTP error, no console or JavaScript error, nothing off-site."""
    visit = visits(toc_page)
    assert visit.off_site == [], "the page requested files from outside the book"
    assert visit.problems == []


def test_math_is_typeset(visits, toc_page):
    visit = visits(toc_page)
    assert visit.untypeset_math == [], "MathJax left these formulas untypeset"
    assert visit.math_errors == [], "MathJax could not parse these formulas"
    assert visit.raw_tex == [], "raw TeX is visible on the page"
    source = page_source(toc_page).read_text()
    if "$" in source or "{math}" in source:
        assert visit.math_elements > 0, "the source has math but the page shows none"


def expected_figures(toc_page: str) -> int:
    """The number of visible code cells of a chapter that show a matplotlib figure."""
    source = page_source(toc_page)
    if source.suffix != ".ipynb":
        return 0
    cells = json.loads(source.read_text())["cells"]
    return sum(
        1
        for c in cells
        if c["cell_type"] == "code"
        and re.search(r"plt\.show\(\)", "".join(c["source"]))
        and not HIDDEN_TAGS & set(c.get("metadata", {}).get("tags", []))
    )


def test_figures_are_present(visits, toc_page):
    visit = visits(toc_page)
    assert visit.broken_images == [], "these images did not load"
    figures = [i for i in visit.output_images if not i["widget"] and i["width"] > 0]
    assert len(figures) >= expected_figures(toc_page), (
        f"{toc_page}: {expected_figures(toc_page)} cells call plt.show(), "
        f"but the page shows {len(figures)} figures"
    )


def test_widgets_render(visits, toc_page):
    visit = visits(toc_page)
    assert visit.rendered_views == visit.widget_views, (
        f"{visit.widget_views} widgets on the page, {visit.rendered_views} rendered"
    )


def test_expected_figures_counts_plotting_cells():
    """The figure count above is not vacuous: chapter 02 plots."""
    assert "notebooks/02_forward_process" in toc_pages()
    assert expected_figures("notebooks/02_forward_process") >= 2
    assert expected_figures("book/notation") == 0


# ---- chapter 02: the static slider --------------------------------------------------------------

STATIC_SLIDERS_JS = r"""() => [...document.querySelectorAll('.widget-vbox')]
  .filter(box => box.children.length === 2
                 && box.children[0].classList.contains('widget-slider')
                 && box.children[1].classList.contains('widget-box')
                 && box.children[1].querySelector('img'))
  .map(box => { box.setAttribute('data-test-static-slider', ''); return true; }).length"""


def test_moving_the_static_slider_changes_the_picture(browser, base_url):
    context, page, visit = open_page(browser, base_url, "notebooks/02_forward_process.html")
    try:
        assert page.evaluate(STATIC_SLIDERS_JS) >= 1, "no static slider (slider + image stack)"
        box = page.locator("[data-test-static-slider]").first
        box.scroll_into_view_if_needed()
        readout = box.locator(".widget-readout")
        stack = box.locator(".widget-box").first
        picture = stack.locator("img")
        assert readout.inner_text() == "0"
        before_src, before_png = picture.get_attribute("src"), stack.screenshot()

        # Drag the handle to the right end of the track, as a reader would.
        handle = box.locator(".noUi-handle").first
        track = box.locator(".noUi-target").first.bounding_box()
        h = handle.bounding_box()
        page.mouse.move(h["x"] + h["width"] / 2, h["y"] + h["height"] / 2)
        page.mouse.down()
        page.mouse.move(track["x"] + track["width"] + 20, h["y"] + h["height"] / 2, steps=10)
        page.mouse.up()
        page.wait_for_function(
            "el => el.textContent === '1000'", arg=readout.element_handle(), timeout=5_000
        )
        page.wait_for_timeout(300)  # let the stack swap its image in
        after_src, after_png = picture.get_attribute("src"), stack.screenshot()
        assert after_src != before_src, "the slider moved but the image did not change"
        assert after_png != before_png, "the slider moved but the picture looks the same"

        # And back with the keyboard: Home returns to t = 0 and to the first picture.
        handle.focus()
        page.keyboard.press("Home")
        page.wait_for_function(
            "el => el.textContent === '0'", arg=readout.element_handle(), timeout=5_000
        )
        page.wait_for_timeout(300)
        assert stack.screenshot() == before_png, "t = 0 again, but not the first picture"
        assert visit.problems == [] and visit.off_site == []
    finally:
        context.close()


SLIDERS_JS = r"""() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main');
  return [...article.querySelectorAll('.widget-slider')].map(slider => {
    const box = slider.parentElement;
    const below = box.children[1];
    // Static: the slider is linked to a stack of precomputed pictures. Live: a bare picture
    // that only a kernel could update.
    const stack = below && below.classList.contains('widget-box') ? below : null;
    const shown = stack ? [...stack.querySelectorAll('img')].find(i => i.offsetParent !== null)
                        : (below && below.tagName === 'IMG' ? below : null);
    return {
      static: box.classList.contains('widget-vbox') && box.children.length === 2
              && box.children[0] === slider && stack !== null,
      sliderWidth: slider.getBoundingClientRect().width,
      natural: shown ? shown.naturalWidth : 0,
      shownWidth: shown ? shown.getBoundingClientRect().width : 0,
    };
  });
}"""


def test_chapter_02_shows_only_sliders_that_work_without_a_kernel(browser, base_url):
    """The live slider, which needs a kernel, is hidden from the page (its cell's output is
    tagged remove-output); every slider shown is a static one, a slider linked to a stack of
    precomputed pictures, each picture shown at its own size (not stretched to the width of the
    page), large enough to see (300 px and more for a 28-pixel digit), and as wide as its slider.
    """
    context, page, visit = open_page(browser, base_url, "notebooks/02_forward_process.html")
    try:
        sliders = page.evaluate(SLIDERS_JS)
    finally:
        context.close()
    assert len(sliders) >= 2, "chapter 02 shows a static slider for the digit and one in colour"
    for slider in sliders:
        assert slider["static"], f"a slider that needs a kernel is on the static page: {slider}"
        assert slider["shownWidth"] == slider["natural"] >= 300, slider
        assert abs(slider["sliderWidth"] - slider["shownWidth"]) <= 2, slider
    assert visit.problems == [] and visit.off_site == []


# ---- the Chinese edition (_build/html/zh/) ------------------------------------------------------
# The same checks on every page of the Chinese edition, which is built from the same pages with
# the prose taken from locales/zh_CN/LC_MESSAGES/, and the language link between the editions.


def test_chinese_page_loads_cleanly(visits, toc_page):
    test_page_loads_cleanly(visits, f"zh/{toc_page}")


def test_chinese_math_is_typeset(visits, toc_page):
    """Typeset, with nothing raw, and exactly the English page's formulas (math is not
    translated: a translation that lost or broke a formula shows here)."""
    visit = visits(f"zh/{toc_page}")
    assert visit.untypeset_math == [], "MathJax left these formulas untypeset"
    assert visit.math_errors == [], "MathJax could not parse these formulas"
    assert visit.raw_tex == [], "raw TeX is visible on the page"
    assert visit.math_elements == visits(toc_page).math_elements


def test_chinese_figures_and_widgets_render(visits, toc_page):
    visit = visits(f"zh/{toc_page}")
    assert visit.broken_images == [], "these images did not load"
    figures = [i for i in visit.output_images if not i["widget"] and i["width"] > 0]
    assert len(figures) >= expected_figures(toc_page)
    assert visit.rendered_views == visit.widget_views


def test_moving_the_static_slider_changes_the_picture_in_chinese(browser, base_url):
    """The slider test above, on the Chinese page: everything the page loads is under zh/."""
    test_moving_the_static_slider_changes_the_picture(browser, base_url + "zh/")


def test_chinese_chapter_02_shows_only_sliders_that_work_without_a_kernel(browser, base_url):
    test_chapter_02_shows_only_sliders_that_work_without_a_kernel(browser, base_url + "zh/")


@pytest.mark.parametrize("page_name", ["book/intro", "notebooks/02_forward_process"])
def test_the_language_link_goes_to_the_same_page(browser, base_url, page_name):
    """Clicking "中文版" on an English page opens the same page in Chinese, and "English" there
    brings the reader back."""
    context, page, visit = open_page(browser, base_url, f"{page_name}.html")
    try:
        assert page.evaluate("document.documentElement.lang") == "en"
        with page.expect_navigation():
            page.locator("a.ddpm-edition-link[hreflang='zh-CN']").click()
        assert page.url == f"{base_url}zh/{page_name}.html"
        assert page.evaluate("document.documentElement.lang") == "zh-CN"
        with page.expect_navigation():
            page.locator("a.ddpm-edition-link[hreflang='en']").click()
        assert page.url == f"{base_url}{page_name}.html"
        assert visit.problems == [] and visit.off_site == []
    finally:
        context.close()
