"""The search page in a real headless Chromium against a real server on loopback.

tests/test_service.py's catalog: 40 demo products (real photos, 10 categories, some out of
stock) embedded with the random-weight test model: plumbing, never quality. What the grid shows is checked against the
catalog file itself (which products a filter keeps) and against the API's own answers.
Screenshots (desktop and phone) go to $PRODVEC_SCREENSHOTS or a temporary folder; the test
run prints where.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_MODEL
from test_service import (  # noqa: F401
    ServiceCatalog,
    base_url,
    jpeg_of,
    running,
    service_catalog,
    settings_for,
)

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="browser tests need Playwright: pip install -e '.[dev]' (or pip install playwright)"
)
CHROMIUM = os.environ.get("PRODVEC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"browser tests need Chromium at {CHROMIUM}: apt-get install -y chromium (or set PRODVEC_CHROMIUM)",
        allow_module_level=True,
    )

DESKTOP = {"width": 1360, "height": 900}
PHONE = {"width": 390, "height": 844}  # an ordinary phone, in CSS pixels


@dataclass(frozen=True)
class Served:
    """tests/test_service.py's server (uvicorn on 127.0.0.1) and the catalog rows it serves."""

    base_url: str
    catalog: ServiceCatalog

    def photo(self, sku: str) -> Path:
        return self.catalog.photo(sku)

    def row(self, sku: str) -> dict[str, str]:
        return next(row for row in self.catalog.rows if row["sku"] == sku)

    def skus(self, *, category: str | None = None, max_price: Decimal | None = None,
             in_stock: bool = False) -> set[str]:
        """The products a filter keeps, read from the catalog file (not from the server)."""
        return {
            row["sku"] for row in self.catalog.rows
            if (category is None or row["category"] == category)
            and (max_price is None or Decimal(row["price"]) <= max_price)
            and (not in_stock or int(row["stock"]) > 0)
        }


@pytest.fixture(scope="module")
def served(base_url: str, service_catalog: ServiceCatalog) -> Served:
    return Served(base_url, service_catalog)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    folder = Path(os.environ.get("PRODVEC_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown even when pytest captures output
        print(f"\npage screenshots: {folder}")
    return folder


def _open(browser: Any, served: Served, viewport: dict[str, int]) -> tuple[Any, list[str]]:
    """A new tab on the page, loaded; and the list its script errors and failed loads go to."""
    page = browser.new_page(viewport=viewport)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.goto(served.base_url + "/")
    page.wait_for_selector("#categories .chip-toggle", state="attached")
    page.wait_for_function("document.querySelector('[data-count=embedded]').textContent !== '–'")
    return page, problems


def _settled(page: Any) -> None:
    page.wait_for_function("document.getElementById('results').getAttribute('aria-busy') === 'false'")


def _search(page: Any, action: Any, path: str = "/v1/search") -> dict[str, Any]:
    """Do ``action`` (it sends one search), wait until the page shows the answer; return the answer."""
    with page.expect_response(lambda response: path in response.url) as answered:
        action()
    _settled(page)
    return answered.value.json()


def _grid(page: Any) -> list[dict[str, str]]:
    return page.eval_on_selector_all("#grid .card", """cards => cards.map(card => ({
        sku: card.dataset.sku,
        category: card.querySelector('[data-field=category]').dataset.value,
        price: card.querySelector('[data-field=price]').dataset.value,
        stock: card.querySelector('[data-field=stock]').dataset.value,
        title: card.querySelector('[data-field=title]').textContent,
    }))""")


def _no_horizontal_scroll(page: Any) -> None:
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"the page is {widths[0]} px wide in a {widths[1]} px window"


def test_photo_upload_finds_that_product_first(browser: Any, served: Served, screenshots: Path) -> None:
    page, problems = _open(browser, served, DESKTOP)
    sku = "FM-00004"
    answer = _search(page, lambda: page.set_input_files("#photo", served.photo(sku)))
    cards = _grid(page)
    assert cards[0]["sku"] == sku
    assert [card["sku"] for card in cards] == [hit["sku"] for hit in answer["hits"]]
    assert len(cards) == 12  # the page asks for 12 by default; the catalog has 40
    first = page.locator("#grid .card").first
    row = served.row(sku)
    assert first.locator(".card-title").inner_text() == row["title"]
    assert first.locator(".price").inner_text() == f"{Decimal(row['price']):.2f}"
    # The answer says how it was found, by which model, and how long it took.
    meta = page.locator("#meta")
    assert meta.locator(".badge-exact, .badge-index").inner_text() == ("Exact" if answer["exact"] else "From the index")
    assert answer["model"].startswith(TEST_MODEL) and answer["model"] in meta.inner_text()
    took = meta.locator(".took")
    assert float(took.get_attribute("data-took-ms")) == answer["took_ms"] and took.inner_text().startswith("in ")
    page.wait_for_function("[...document.querySelectorAll('#grid img')].slice(0, 8).every(img => img.complete)")
    page.screenshot(path=screenshots / "desktop-photo-results.png", animations="disabled")
    assert not problems
    page.close()


def test_filters_keep_only_matching_products(browser: Any, served: Served, screenshots: Path) -> None:
    page, problems = _open(browser, served, DESKTOP)
    _search(page, lambda: page.set_input_files("#photo", served.photo("FM-00004")))

    _search(page, lambda: page.click("#cat-sneaker"))
    assert {card["sku"] for card in _grid(page)} == served.skus(category="sneaker")

    prices = sorted(Decimal(served.row(sku)["price"]) for sku in served.skus(category="sneaker"))
    cap = prices[len(prices) // 2]
    page.fill("#max-price", str(cap))
    _search(page, lambda: page.click("#apply"))
    cards = _grid(page)
    assert cards and all(Decimal(card["price"]) <= cap for card in cards)
    assert {card["sku"] for card in cards} == served.skus(category="sneaker", max_price=cap)

    _search(page, lambda: page.click("#cat-sneaker"))  # every category again
    _search(page, lambda: page.check("#in-stock"))
    cards = _grid(page)
    expected = served.skus(max_price=cap, in_stock=True)
    assert len(cards) == min(12, len(expected))
    assert {card["sku"] for card in cards} <= expected
    assert all(int(card["stock"]) > 0 and Decimal(card["price"]) <= cap for card in cards)
    assert page.locator("#filter-count").inner_text() == "2 on"
    page.screenshot(path=screenshots / "desktop-filtered.png", animations="disabled")

    assert not served.skus(max_price=Decimal("1"))  # nothing that cheap: the page says so
    page.fill("#max-price", "1")
    _search(page, lambda: page.press("#max-price", "Enter"))
    assert _grid(page) == []
    assert page.locator("#empty-none").is_visible() and page.locator("#meta .count").inner_text() == "0 results"
    assert not problems
    page.close()


def test_more_like_this_leaves_the_product_out(browser: Any, served: Served, screenshots: Path) -> None:
    page, problems = _open(browser, served, DESKTOP)
    _search(page, lambda: page.set_input_files("#photo", served.photo("FM-00004")))
    chosen = _grid(page)[1]
    answer = _search(page, lambda: page.locator("#grid .card").nth(1).locator(".more").click(),
                     f"/v1/products/{chosen['sku']}/similar")
    cards = _grid(page)
    assert chosen["sku"] not in {card["sku"] for card in cards}
    assert [card["sku"] for card in cards] == [hit["sku"] for hit in answer["hits"]]
    assert len(cards) == 12
    assert page.locator("#results-heading").inner_text() == f"More like {chosen['title']}"
    assert page.locator("#photo").input_value() == ""  # the photo is no longer the query
    page.screenshot(path=screenshots / "desktop-more-like-this.png", animations="disabled")
    assert not problems
    page.close()


def test_an_api_error_is_shown_as_its_message(browser: Any, served: Served, screenshots: Path) -> None:
    page, _ = _open(browser, served, DESKTOP)  # the 415 is logged as a failed load, on purpose
    upload = {"name": "shoe.jpg", "mimeType": "image/jpeg", "buffer": b"this is a text file, not a photo\n"}
    with page.expect_response(lambda response: "/v1/search" in response.url) as answered:
        page.set_input_files("#photo", upload)
    _settled(page)
    assert answered.value.status == 415
    alert = page.locator("#error")
    assert alert.is_visible()
    assert page.locator("#error-message").text_content() == answered.value.json()["error"]
    assert page.locator("#error-title").inner_text() == "Not an image"
    assert page.locator("#grid .card").count() == 0
    page.screenshot(path=screenshots / "desktop-error.png", animations="disabled")
    page.close()


def test_a_truncated_photo_is_called_so(browser: Any, served: Served) -> None:
    page, _ = _open(browser, served, DESKTOP)  # the 422 is logged as a failed load, on purpose
    whole = jpeg_of(served.photo("FM-00004"))
    upload = {"name": "shoe.jpg", "mimeType": "image/jpeg", "buffer": whole[: len(whole) // 2]}
    with page.expect_response(lambda response: "/v1/search" in response.url) as answered:
        page.set_input_files("#photo", upload)
    _settled(page)
    assert answered.value.status == 422
    message = page.locator("#error-message").text_content()
    assert message == answered.value.json()["error"] and message.startswith("the image is truncated or corrupt: ")
    assert page.locator("#error-title").inner_text() == "Check the photo and filters"
    assert page.locator("#grid .card").count() == 0
    page.close()


def test_a_price_range_error_is_shown_in_prodvecs_words(browser: Any, served: Served) -> None:
    page, _ = _open(browser, served, DESKTOP)  # the 422 is logged as a failed load, on purpose
    _search(page, lambda: page.set_input_files("#photo", served.photo("FM-00004")))
    page.fill("#min-price", "50")
    page.fill("#max-price", "10")
    with page.expect_response(lambda response: "/v1/search" in response.url) as answered:
        page.click("#apply")
    _settled(page)
    assert answered.value.status == 422
    assert page.locator("#error-message").text_content() == (
        "invalid request: min_price 50 is above max_price 10: no product can match")
    page.close()


def test_everything_works_from_the_keyboard(browser: Any, served: Served) -> None:
    page, problems = _open(browser, served, DESKTOP)
    # Playwright starts intercepting file dialogs when the first listener comes: early, so the
    # Enter that opens the picker below cannot race it.
    page.on("filechooser", lambda chooser: None)
    reached: list[str] = []
    for _ in range(40):
        page.keyboard.press("Tab")
        # Where the ring shows: the drop zone for the hidden file input, the chip for its checkbox.
        focused = page.evaluate("""() => {
            const el = document.activeElement;
            const shown = el.matches('#photo') ? el.closest('label')
                : el.matches('.chip-toggle input') ? el.nextElementSibling : el;
            return [el.id || el.className, getComputedStyle(shown).boxShadow];
        }""")
        assert focused[1] != "none", f"{focused[0]} has no visible focus"
        reached.append(focused[0])
        if focused[0] == "apply":
            break
    for control in ("photo", "cat-sneaker", "min-price", "max-price", "in-stock", "k", "apply"):
        assert control in reached, f"Tab never reaches #{control}: {reached}"

    page.focus("#photo")
    with page.expect_file_chooser() as chooser:  # interception is on: the no-op listener above
        page.keyboard.press("Enter")
    _search(page, lambda: chooser.value.set_files(served.photo("FM-00004")))
    assert _grid(page)[0]["sku"] == "FM-00004"

    page.focus("#apply")
    for _ in range(10):  # past Reset, Clear: the first result's button
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('more')"):
            break
    first = _grid(page)[0]["sku"]
    _search(page, lambda: page.keyboard.press("Enter"), f"/v1/products/{first}/similar")
    assert first not in {card["sku"] for card in _grid(page)}
    page.wait_for_function("document.activeElement.id === 'results-heading'")  # focus follows the new results
    assert not problems
    page.close()


def test_phone_width_has_no_horizontal_scroll(browser: Any, served: Served, screenshots: Path) -> None:
    page, problems = _open(browser, served, PHONE)
    _no_horizontal_scroll(page)
    page.screenshot(path=screenshots / "phone-start.png", animations="disabled")
    _search(page, lambda: page.set_input_files("#photo", served.photo("FM-00004")))
    assert _grid(page)[0]["sku"] == "FM-00004"
    _no_horizontal_scroll(page)
    columns = page.evaluate("getComputedStyle(document.getElementById('grid')).gridTemplateColumns.split(' ').length")
    assert columns == 2
    page.locator("#results-heading").scroll_into_view_if_needed()
    page.wait_for_function("[...document.querySelectorAll('#grid img')].slice(0, 4).every(img => img.complete)")
    page.screenshot(path=screenshots / "phone-results.png", animations="disabled")
    page.click("#filters > summary")  # folded on a phone; open them
    assert page.locator("#max-price").is_visible()
    _no_horizontal_scroll(page)
    page.locator("#filters").scroll_into_view_if_needed()
    page.screenshot(path=screenshots / "phone-filters.png", animations="disabled")
    assert not problems
    page.close()


def test_a_server_with_keys_asks_for_one(browser: Any, service_catalog: ServiceCatalog, test_encoder: Any) -> None:
    from prodvec.service.app import create_app

    key = "page-test-key"
    app = create_app(settings_for(service_catalog.url, api_keys=(key,)), encoder=test_encoder)
    with running(app) as keyed_url:
        page = browser.new_page(viewport=DESKTOP)
        page.goto(keyed_url + "/")
        dialog = page.locator("#key-dialog")
        dialog.wait_for(state="visible")  # the categories answered 401: the page asks at once

        page.fill("#key-input", "not-the-key")
        with page.expect_response(lambda response: "/v1/categories" in response.url) as refused:
            page.keyboard.press("Enter")
        assert refused.value.status == 403
        dialog.wait_for(state="visible")
        assert refused.value.json()["error"] in page.locator("#key-hint").text_content()

        page.fill("#key-input", key)
        page.keyboard.press("Enter")
        page.wait_for_selector("#categories .chip-toggle", state="attached")
        assert page.locator("#key-button-label").inner_text() == "Key set"
        answer = _search(page, lambda: page.set_input_files("#photo", service_catalog.photo("FM-00004")))
        assert _grid(page)[0]["sku"] == answer["hits"][0]["sku"] == "FM-00004"
        page.close()


def test_text_search_where_the_model_reads_text(browser: Any, served: Served) -> None:
    page, problems = _open(browser, served, DESKTOP)
    page.wait_for_selector("#text-form", state="visible")  # the test model (open_clip) has a text tower
    page.fill("#text", "a black sneaker")
    answer = _search(page, lambda: page.press("#text", "Enter"))
    assert page.locator("#results-heading").inner_text() == "Matches for “a black sneaker”"
    assert [card["sku"] for card in _grid(page)] == [hit["sku"] for hit in answer["hits"]]
    assert len(answer["hits"]) == 12
    _search(page, lambda: page.check("#in-stock"))  # the filters re-run the text query
    cards = _grid(page)
    assert len(cards) == min(12, len(served.skus(in_stock=True)))
    assert all(int(card["stock"]) > 0 for card in cards)
    assert not problems
    page.close()


def test_the_api_documentation_renders_without_internet(browser: Any, served: Served) -> None:
    """/docs in a browser that can reach nothing but the server: Swagger UI still lists the endpoints."""
    page = browser.new_page(viewport=DESKTOP)
    elsewhere: list[str] = []

    def only_the_server(route: Any) -> None:
        if route.request.url.startswith(served.base_url + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_server)
    page.goto(served.base_url + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=60_000)
    paths = set(page.locator(".opblock-summary-path").evaluate_all("els => els.map(el => el.dataset.path)"))
    assert {"/v1/search", "/v1/products/{sku}/similar", "/readyz"} <= paths
    assert not elsewhere, f"/docs tried to load {elsewhere}"
    page.close()
