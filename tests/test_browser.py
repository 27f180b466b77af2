"""The product in a real browser: Debian's headless Chromium driven by Playwright (no browser download).

Log in, upload two photos, see them captioned, search a word of a caption, open the image page
and its attention maps, fix a caption in admin and find the photo by the new word, search with a
photo; then the same pages at a phone's size. Screenshots of each page go to test-artifacts/.
Captioning runs in-process with the deterministic fake captioner: this is about the web layer.
"""
import base64
import io
import os
from pathlib import Path

import PIL.Image
import pytest
import skimage.data
from django.contrib.auth import get_user_model
from playwright.sync_api import expect, sync_playwright

from gallery.ingest import ingest_bytes


# Playwright's sync API runs an event loop in this thread; the ORM calls made here are still synchronous.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PASSWORD = "pw-for-the-browser-1"
CAT = "a tabby cat resting on a wooden chair"
COFFEE = "a cup of coffee on a white saucer"


def jpeg(pixels, crop=None) -> bytes:
    image = PIL.Image.fromarray(pixels)
    if crop:
        image = image.crop(crop)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium chromium-driver (make test does it).")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def site(live_server):
    ARTIFACTS.mkdir(exist_ok=True)
    return live_server.url


@pytest.fixture
def curator(transactional_db):
    return get_user_model().objects.create_superuser("curator", "curator@example.com", PASSWORD)


def csp_violations(page) -> list[str]:
    """What the Content-Security-Policy blocked on this page (Chromium reports each on the console)."""
    blocked = []
    page.on("console", lambda message: blocked.append(message.text) if "Content Security Policy" in message.text else None)
    return blocked


def shot(page, name):
    page.evaluate("window.scrollTo(0, 0)")  # a sticky header is drawn where the page was scrolled to
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def log_in(page, site, next_path):
    page.goto(f"{site}{next_path}")
    expect(page).to_have_url(f"{site}/accounts/login/?next={next_path}")
    page.get_by_label("Username").fill("curator")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{site}{next_path}")
    page.wait_for_load_state("load")  # the URL changes before the page's deferred scripts have run


def upload_two_photos(page, site, fake_captioner):
    cat = fake_captioner.register(jpeg(skimage.data.chelsea()), CAT)
    coffee = fake_captioner.register(jpeg(skimage.data.coffee()), COFFEE)
    log_in(page, site, "/upload/")
    # One photo dropped on the drop zone, the others picked with the file input.
    page.evaluate(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], name, {type: "image/jpeg"}));
            const drop = new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true});
            document.getElementById("dropzone").dispatchEvent(drop);
        }""",
        ["chelsea.jpg", base64.b64encode(cat).decode()],
    )
    page.locator('input[type="file"]').set_input_files(
        [
            {"name": "coffee.jpg", "mimeType": "image/jpeg", "buffer": coffee},
            {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"a text file named like a photo"},
        ]
    )
    done = page.locator(".upload-item.is-done")
    expect(done).to_have_count(2)
    expect(done.filter(has_text=CAT)).to_have_count(1)
    expect(done.filter(has_text=COFFEE)).to_have_count(1)
    expect(page.locator(".upload-item.is-error")).to_contain_text("notes.jpg")
    expect(page.locator(".upload-item.is-error")).to_contain_text("not an image")
    # A thumbnail per file, drawn from the file itself (none for the file that is no image).
    thumbs = page.locator(".upload-item.is-done img.upload-thumb")
    expect(thumbs).to_have_count(2)
    assert all(thumbs.nth(i).evaluate("img => img.naturalWidth") > 0 for i in range(2))


def test_upload_search_view_and_curate(browser, site, curator, fake_captioner):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    blocked = csp_violations(page)
    page.goto(f"{site}/accounts/login/")
    shot(page, "01-login")
    upload_two_photos(page, site, fake_captioner)
    shot(page, "02-upload")

    page.goto(f"{site}/")
    cards = page.locator(".grid .card")
    expect(cards).to_have_count(2)
    expect(cards.filter(has_text=COFFEE)).to_have_count(1)
    expect(page.get_by_role("img", name=CAT)).to_be_visible()
    shot(page, "03-gallery")

    search_box = page.get_by_label("Search photos by words")
    search_box.fill("cats")
    search_box.press("Enter")
    expect(page).to_have_url(f"{site}/search/?q=cats")
    result = page.locator(".results .card")
    expect(result).to_have_count(1)
    expect(result.locator("mark")).to_have_text("cat")
    expect(result).to_contain_text("score")
    shot(page, "04-search")

    result.locator("a").click()
    expect(page.locator("h1")).to_have_text(CAT)
    words = page.locator(".attention-word")
    expect(words).to_have_text(["tabby", "cat", "resting", "wooden", "chair"])  # content words only
    expect(page.locator("#overlay-label")).to_have_text("tabby")  # the first map is over the photo at once
    words.nth(1).focus()
    page.keyboard.press("Enter")  # keyboard-usable: lays the word's map over the photo
    expect(words.nth(1)).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#overlay-label")).to_have_text("cat")
    expect(page.locator(".detail-info")).not_to_contain_text("score")  # no raw log-probability
    shot(page, "05-image")

    page.get_by_role("link", name="Edit in admin").click()
    page.locator('textarea[name="caption"]').fill("our cat Chelsea asleep on the armchair")
    shot(page, "06-admin-edit")
    page.locator('input[name="_save"]').click()
    expect(page.locator(".messagelist")).to_contain_text("was changed successfully")
    page.goto(f"{site}/search/?q=armchair")
    expect(page.locator(".results .card")).to_have_count(1)
    expect(page.locator(".results .card mark")).to_have_text("armchair")
    shot(page, "07-search-new-word")

    page.goto(f"{site}/admin/searchindex/term/")
    expect(page.locator("#content")).to_contain_text("Most frequent terms")
    shot(page, "08-admin-index")
    context.close()
    assert blocked == []  # the pages, the admin and the attention canvas work under the policy


def search_by_photo(page, site, fake_captioner):
    query = fake_captioner.register(jpeg(skimage.data.chelsea(), crop=(100, 0, 400, 300)), "a cat looking up")
    page.goto(f"{site}/search/by-image/")
    page.wait_for_load_state("load")
    # Picked (or dropped): the photo is described and searched at once.
    page.get_by_label("Choose a photo…").set_input_files({"name": "query.jpg", "mimeType": "image/jpeg", "buffer": query})
    expect(page.locator(".described")).to_contain_text("a cat looking up")
    expect(page.locator(".described")).not_to_contain_text("score")
    query_photo = page.get_by_role("img", name="Your photo")
    expect(query_photo).to_be_visible()
    assert query_photo.evaluate("img => img.naturalWidth") > 0
    expect(page.locator(".results .card")).to_have_count(1)
    expect(page.locator(".results .card mark")).to_have_text("cat")


def test_search_by_photo(browser, site, fake_captioner):
    ingest_bytes(fake_captioner.register(jpeg(skimage.data.chelsea()), CAT), "chelsea.jpg")  # captioned on commit
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    blocked = csp_violations(page)
    search_by_photo(page, site, fake_captioner)
    shot(page, "09-search-by-image")
    # Dropped on the zone, as on the upload page.
    dropped = fake_captioner.register(jpeg(skimage.data.chelsea(), crop=(0, 0, 300, 300)), "a cat with green eyes")
    page.evaluate(
        """b64 => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
            document.getElementById("dropzone").dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
        }""",
        base64.b64encode(dropped).decode(),
    )
    expect(page.locator(".described")).to_contain_text("a cat with green eyes")
    expect(page.get_by_role("img", name="Your photo")).to_be_visible()
    page.close()
    assert blocked == []


def test_phone_viewport(browser, site, curator, fake_captioner):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = context.new_page()
    blocked = csp_violations(page)
    upload_two_photos(page, site, fake_captioner)
    shot(page, "10-phone-upload")

    def fits():
        return page.evaluate("document.documentElement.scrollWidth") <= 390

    page.goto(f"{site}/")
    expect(page.locator(".grid .card")).to_have_count(2)
    assert fits()
    boxes = [page.locator(".grid .card").nth(i).bounding_box() for i in range(2)]
    assert boxes[0]["y"] == boxes[1]["y"] and boxes[0]["width"] < 195  # two columns side by side
    expect(page.get_by_label("Search photos by words")).to_be_visible()
    shot(page, "11-phone-gallery")

    page.get_by_label("Search photos by words").fill("coffee")
    page.get_by_role("button", name="Search", exact=True).tap()
    expect(page.locator(".results .card")).to_have_count(1)
    assert fits()
    shot(page, "12-phone-search")

    page.locator(".results .card a").tap()
    expect(page.locator(".attention-word")).to_have_text(["cup", "coffee", "white", "saucer"])
    page.locator(".attention-word").nth(1).tap()
    expect(page.locator("#overlay-label")).to_have_text("coffee")
    assert fits()
    shot(page, "13-phone-image")
    context.close()
    assert blocked == []  # the upload script and the attention canvas work under the policy


XSS_NAME = "<script>alert(1)</script>.jpg"
# Photos of different shapes (landscape, square, portrait) for the grid.
SHAPES = {
    "chelsea.jpg": (skimage.data.chelsea, "a cat on a chair"),
    "camera.jpg": (lambda: skimage.data.camera()[:, :, None].repeat(3, axis=2), "a man with a camera"),
    "rocket.jpg": (skimage.data.rocket, "a rocket on a launch pad"),
    "astronaut.jpg": (skimage.data.astronaut, "a woman in a space suit"),
    "coffee.jpg": (skimage.data.coffee, "a cup of coffee"),
}
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}


def no_overflow(page, width):
    return page.evaluate("document.documentElement.scrollWidth") <= width


@pytest.mark.parametrize("device", WIDTHS)
def test_every_page_at_desktop_and_phone_width(browser, site, curator, fake_captioner, device):
    """Screenshots of every page; none overflows; the fixes of the first-ten-minutes review hold."""
    width, height = WIDTHS[device]
    images = {name: ingest_bytes(fake_captioner.register(jpeg(load()), text), name).image for name, (load, text) in SHAPES.items()}
    context = browser.new_context(viewport={"width": width, "height": height}, is_mobile=device == "phone")
    page = context.new_page()
    log_in(page, site, "/upload/")

    # Upload: a file name with markup stays recognisable (shown escaped), with its own thumbnail.
    xss_photo = fake_captioner.register(jpeg(skimage.data.coffee(), crop=(0, 0, 300, 300)), "a close up of coffee")
    page.locator('input[type="file"]').set_input_files({"name": XSS_NAME, "mimeType": "image/jpeg", "buffer": xss_photo})
    expect(page.locator(".upload-item.is-done")).to_have_count(1)
    expect(page.locator(".upload-item .upload-name")).to_have_text(XSS_NAME)
    expect(page.locator(".upload-item img.upload-thumb")).to_have_count(1)
    shot(page, f"20-{device}-upload")
    page.locator(".upload-item a").click()
    expect(page.locator(".facts")).to_contain_text("<script>alert(1)<_script>.jpg")

    pages = {
        "gallery": "/",
        "search": "/search/?q=a+cat+of+a+chair",
        "search-by-photo": "/search/by-image/",
        "image": f"/images/{images['chelsea.jpg'].pk}/",
        "admin-images": "/admin/gallery/image/",
        "not-found": "/images/999999/",
    }
    for name, path in pages.items():
        response = page.goto(f"{site}{path}")
        assert response.status == (404 if name == "not-found" else 200), name
        page.wait_for_load_state("load")
        assert no_overflow(page, width), f"{name} is wider than {width} px"
        if not name.startswith("admin"):
            expect(page.locator("body")).not_to_contain_text("score -")  # no raw log-probability
            icon = page.locator('link[rel="icon"]').get_attribute("href")
            assert page.request.get(f"{site}{icon}").status == 200
        shot(page, f"21-{device}-{name}")

        if name == "gallery":
            # Even rows: every thumbnail has one shape whatever the photo's, cards of a row line up.
            boxes = [page.locator(".grid .card .thumb").nth(i).bounding_box() for i in range(len(SHAPES) + 1)]
            assert len({round(b["height"]) for b in boxes}) == 1 and len({round(b["width"]) for b in boxes}) == 1
            fit = page.locator("#site-q").evaluate(
                """input => { const style = getComputedStyle(input);
                    const ctx = document.createElement("canvas").getContext("2d");
                    ctx.font = `${style.fontSize} ${style.fontFamily}`;
                    const room = input.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
                    return ctx.measureText(input.placeholder).width <= room; }"""
            )
            assert fit, "the search placeholder is cut off"
        if name == "search":
            expect(page.locator(".interpretation-notes")).to_contain_text("Left out as too common: a, of.")
        if name == "admin-images":
            cut_off = page.locator("#changelist .results").evaluate("box => box.scrollWidth > box.clientWidth")
            assert device == "phone" or not cut_off, "the admin image list is cut off"
    assert page.request.get(f"{site}/favicon.ico").status == 200
    context.close()
