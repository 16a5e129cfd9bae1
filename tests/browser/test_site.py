"""Every page of the built book, loaded the way a reader sees it: in headless Chromium, offline.

For every page: no console errors and no failed or off-site requests; every image loaded with a
non-zero size; every math element typeset by the vendored MathJax; every internal link resolves;
the site search finds the page by a word that appears on no other page. A screenshot of each
chapter page is saved under artifacts/screenshots/.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest
from bs4 import BeautifulSoup

from .conftest import ROOT, SITE

SKIP = {"genindex.html", "py-modindex.html", "search.html"}
PAGES = sorted(
    p.relative_to(SITE).as_posix()
    for p in SITE.rglob("*.html")
    if p.name not in SKIP and "_static" not in p.parts and "_sources" not in p.parts
)
SHOTS = ROOT / "artifacts" / "screenshots"


def _text_of(page: str) -> str:
    soup = BeautifulSoup((SITE / page).read_text(encoding="utf-8"), "html.parser")
    main = soup.find("main") or soup
    for tag in main.find_all(["script", "style"]):
        tag.decompose()
    return main.get_text(" ")


def _unique_words() -> dict[str, str]:
    """For each page, a word (letters only, >= 7 long) that appears on no other page."""
    words = {p: set(re.findall(r"\b[a-z]{7,}\b", _text_of(p).lower())) for p in PAGES}
    counts = Counter(w for ws in words.values() for w in ws)
    found = {}
    for page, ws in words.items():
        unique = sorted(w for w in ws if counts[w] == 1)
        if unique:
            found[page] = unique[len(unique) // 2]
    return found


def test_the_site_has_every_page():
    expected = {"index.html", "api.html", "bibliography.html"} | {
        f"chapters/{n}.html"
        for n in ("01_introduction",)  # the chapters that exist are checked through the toc
    }
    assert expected <= set(PAGES), f"missing pages: {expected - set(PAGES)}"
    toc = (ROOT / "book" / "_toc.yml").read_text()
    for name in re.findall(r"file: (\S+)", toc):
        assert f"{name}.html" in PAGES, f"{name} is in the toc but was not built"


def _local_only(offsite: list[str]):
    """A route handler that lets requests to this machine through and aborts (and records in
    ``offsite``) every other one."""

    def route(r):
        if urlparse(r.request.url).hostname == "127.0.0.1":
            r.continue_()
        else:
            offsite.append(r.request.url)
            r.abort()

    return route


@pytest.mark.parametrize("page", PAGES)
def test_page_loads_cleanly(page, browser, base_url):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = ctx.new_page()
    errors: list[str] = []
    failed: list[str] = []
    offsite: list[str] = []

    tab.route("**/*", _local_only(offsite))
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.on("requestfailed", lambda r: failed.append(f"{r.url} ({r.failure})"))
    tab.on(
        "response", lambda r: failed.append(f"{r.url} ({r.status})") if r.status >= 400 else None
    )
    tab.goto(urljoin(base_url, page), wait_until="load")

    n_math = tab.locator("span.math, div.math").count()
    if n_math:
        tab.wait_for_function(
            "() => [...document.querySelectorAll('span.math, div.math')]"
            ".every(e => e.querySelector('mjx-container'))",
            timeout=30_000,
        )
    tab.wait_for_load_state("networkidle")
    raw = tab.evaluate(
        "() => [...document.querySelectorAll('span.math, div.math')]"
        ".filter(e => !e.querySelector('mjx-container')).length"
    )
    broken_imgs = tab.evaluate(
        "() => [...document.images].filter(i => !(i.complete && i.naturalWidth > 0"
        " && i.getBoundingClientRect().width > 0)).map(i => i.src)"
    )
    if page.startswith("chapters/"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(SHOTS / (Path(page).stem + ".png")), full_page=False)
    ctx.close()

    assert not offsite, f"{page} reached off the site: {offsite[:5]}"
    assert not failed, f"{page} has failed requests: {failed[:5]}"
    assert not errors, f"{page} logged console errors: {errors[:5]}"
    assert not broken_imgs, f"{page} has images that did not load: {broken_imgs[:5]}"
    assert raw == 0, f"{page} has {raw} of {n_math} math elements that MathJax did not typeset"


@pytest.mark.parametrize("page", PAGES)
def test_internal_links_resolve(page):
    soup = BeautifulSoup((SITE / page).read_text(encoding="utf-8"), "html.parser")
    bad = []
    for a in soup.find_all("a", href=True):
        href = a["href"]
        url = urlparse(href)
        if url.scheme or href.startswith(("mailto:", "#", "javascript:")):
            continue
        target = (SITE / page).parent / unquote(url.path)
        if not target.resolve().exists():
            bad.append(href)
    assert not bad, f"{page} links to missing files: {bad[:5]}"


def test_sidebar_navigation_reaches_every_chapter(browser, base_url):
    tab = browser.new_page()
    tab.goto(urljoin(base_url, "index.html"))
    hrefs = tab.eval_on_selector_all("nav.bd-links a", "els => els.map(e => e.href)")
    assert hrefs, "the sidebar has no links"
    reached = set()
    for href in hrefs:
        response = tab.goto(href)
        assert response is not None and response.ok, f"sidebar link {href} failed"
        reached.add(urlparse(href).path.lstrip("/"))
    assert {p for p in PAGES if p.startswith("chapters/")} <= reached
    tab.close()


UNIQUE = _unique_words()


@pytest.mark.parametrize("page", sorted(UNIQUE))
def test_search_finds_the_page(page, browser, base_url):
    word = UNIQUE[page]
    tab = browser.new_page()
    tab.goto(urljoin(base_url, f"search.html?q={word}"))
    tab.wait_for_selector("#search-results .search-summary, #search-results p", timeout=20_000)
    tab.wait_for_function(
        "() => !document.querySelector('#search-results h2')"
        " || !/Searching/.test(document.querySelector('#search-results h2').textContent)",
        timeout=20_000,
    )
    links = tab.eval_on_selector_all("#search-results a", "els => els.map(e => e.href)")
    tab.close()
    assert any(urlparse(h).path.endswith(page) for h in links), (
        f"searching for {word!r} (only on {page}) returned {links[:5]}"
    )


# --------------------------------------------------------------------------- animations, weight
PAGE_BUDGET = 2_000_000  # bytes a chapter page may weigh: its HTML and the images it loads
ANIMATED = [p for p in PAGES if 'class="animation"' in (SITE / p).read_text(encoding="utf-8")]


def _weight(page: str) -> int:
    """The bytes a reader downloads for a page: its HTML and its local images (the theme's shared
    CSS and JavaScript are cached across pages and left out)."""
    soup = BeautifulSoup((SITE / page).read_text(encoding="utf-8"), "html.parser")
    total = (SITE / page).stat().st_size
    for img in soup.find_all("img", src=True):
        if not urlparse(img["src"]).scheme:
            path = ((SITE / page).parent / unquote(img["src"])).resolve()
            total += path.stat().st_size if path.exists() else 0
    return total


@pytest.mark.parametrize("page", [p for p in PAGES if p.startswith("chapters/")])
def test_chapter_pages_stay_within_the_weight_budget(page):
    weight = _weight(page)
    assert weight <= PAGE_BUDGET, f"{page} weighs {weight / 1e6:.2f} MB, budget 2 MB"


def test_the_book_has_animations():
    """Chapters 2-8 each animate their models or carry a slider's pre-rendered player."""
    expected = {"02_rbm", "03_vae", "04_gan", "05_autoregressive", "06_flows", "07_diffusion",
                "08_energy_and_scores"}  # fmt: skip
    assert {f"chapters/{name}.html" for name in expected} <= set(ANIMATED), ANIMATED


@pytest.mark.parametrize("page", ANIMATED)
def test_every_animation_plays_offline(page, browser, base_url):
    """Press play on each animation of the page: its frame changes, and nothing is fetched from
    off the machine (matplotlib's player embeds every frame; its icon font is replaced)."""
    tab = browser.new_page()
    offsite: list[str] = []

    tab.route("**/*", _local_only(offsite))
    tab.goto(urljoin(base_url, page), wait_until="load")
    players = tab.locator("div.animation")
    assert players.count() > 0
    for i in range(players.count()):
        player = players.nth(i)
        player.scroll_into_view_if_needed()
        img = player.locator("img").first
        before = img.get_attribute("src")
        assert before and before.startswith("data:image/png"), f"{page}: no first frame"
        player.locator('button[title="Play"]').click()
        tab.wait_for_function(
            "([el, src]) => el.getAttribute('src') !== src", arg=[img.element_handle(), before],
            timeout=10_000,
        )  # fmt: skip
    tab.close()
    assert not offsite, f"{page} reached off the site: {offsite[:5]}"


@pytest.mark.parametrize("page", [p for p in PAGES if p.startswith("chapters/")])
def test_no_page_shows_a_dead_widget(page):
    """A slider (plots.control) shows its pre-rendered player on the site: no widget view, no
    saved widget state, no widget's text form."""
    html = (SITE / page).read_text(encoding="utf-8")
    for dead in ("application/vnd.jupyter.widget-view+json",
                 "application/vnd.jupyter.widget-state+json", "VBox(children="):  # fmt: skip
        assert dead not in html, f"{page} carries {dead}"


def test_every_slider_has_its_player_on_the_site():
    """Each plots.control of a chapter is one more player on its page than its plots.animate
    calls: the sliders fell back to their pre-rendered frames."""
    for page in ANIMATED + [p for p in PAGES if p.startswith("chapters/") and p not in ANIMATED]:
        source = (ROOT / "chapters" / Path(page).with_suffix(".md").name).read_text()
        calls = source.count("plots.control(") + source.count("plots.animate(")
        players = (SITE / page).read_text(encoding="utf-8").count('class="animation"')
        assert players == calls, f"{page}: {players} players for {calls} animations and sliders"
