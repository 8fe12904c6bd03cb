"""The search page in a real browser (Debian's chromium, driven by Playwright) against a real Label
Studio 1.23.2: search an SMS project, select by the slider, open the selection as a Data Manager tab,
apply "spam" as annotations after the confirmation, and check in Label Studio's API that exactly those
tasks got exactly one annotation each and that the learning loop trained on them; an image project's
grid loads its thumbnails, which stay inside their project and under the fetch rules; cross-site
writes are refused and a query with markup is shown as text.

Screenshots (overview before and after training, grid, confirmation, image grid) go to $UI_SCREENSHOTS (default /tmp/ui-screens).
"""
import math
import os
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.helpers import label_config
from tests.test_e2e_label_studio import connect_and_retrieve

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(os.environ.get("UI_SCREENSHOTS") or "/tmp/ui-screens")
QUERY = "free prize, call now"
MARKUP = '<img src=x onerror="window.__pwned=1"><b>bold</b>'


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium with apt")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _new_page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)
    return page


def _wait_for_version(backend, project_id, labels, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        training = requests.get(backend + "/status", timeout=5).json()["training"]
        reports = requests.get(backend + f"/reports?project={project_id}", timeout=5).json()["reports"]
        if reports and reports[-1]["labels"] == labels and not training["busy"]:
            return reports[-1]
        time.sleep(0.5)
    raise AssertionError(f"no version trained on {labels} labels: {reports}")


def test_search_select_open_in_data_manager_and_annotate(label_studio, backend, sms_messages, browser):
    ls = label_studio
    project = ls.create_project("ui sms", label_config("sms_spam.xml"))
    sample = [m for m in sms_messages if m[0] == "spam"][600:630] + [m for m in sms_messages if m[0] == "ham"][600:690]
    ls.import_tasks(project, [{"text": text, "truth": label} for label, text in sample])
    connect_and_retrieve(ls, project, backend)
    truth = {t["id"]: t["data"]["truth"] for t in ls.list_tasks(project)}

    page = _new_page(browser)
    page.goto(f"{backend}/ui/projects/{project}")
    assert page.locator("#embedded").inner_text() == "120" and page.locator("#tasks").inner_text() == "120"
    assert page.locator("#ls-link").get_attribute("href") == f"{ls.url}/projects/{project}/data"
    page.screenshot(path=str(SHOTS / "ui-overview.png"))

    # the same ranking the page will show; the slider snaps to steps of 0.005
    ranking = requests.get(f"{backend}/ui/api/{project}/search", params={"q": QUERY, "limit": 60}, timeout=60).json()
    threshold = math.floor(ranking["results"][9]["score"] * 200) / 200
    expected = {r["task"] for r in ranking["results"] if r["score"] >= threshold}
    spam = sum(truth[t] == "spam" for t in expected)
    print(f"\n[ui] {QUERY!r}: {len(expected)} results above {threshold:.3f}, {spam} of them spam")
    assert 10 <= len(expected) <= 40 and spam >= 0.7 * len(expected)

    page.fill("#query", QUERY)
    page.press("#query", "Enter")
    page.wait_for_function("document.querySelectorAll('#grid .card').length === 60")
    assert [int(t) for t in page.locator("#grid .card").evaluate_all("cs => cs.map(c => c.dataset.task)")] == \
        [r["task"] for r in ranking["results"]]
    page.eval_on_selector("#threshold", "(el, t) => { el.value = t; el.dispatchEvent(new Event('change')); }",
                          str(threshold))
    page.wait_for_function(f"document.getElementById('selected-count').textContent === '{len(expected)} selected'")
    selected = {int(t) for t in page.locator("#grid .card.selected").evaluate_all("cs => cs.map(c => c.dataset.task)")}
    assert selected == expected
    page.screenshot(path=str(SHOTS / "ui-grid.png"))

    # "Open in Label Studio": a Data Manager tab holding exactly the selection
    page.click("#open-view")
    link = page.wait_for_selector("#view-link").get_attribute("href")
    assert link.startswith(f"{ls.url}/projects/{project}/data?tab=")
    tab = int(parse_qs(urlsplit(link).query)["tab"][0])
    listed = ls.get("/api/tasks/", params={"project": project, "view": tab, "page_size": 200})["tasks"]
    assert {t["id"] for t in listed} == expected

    # apply "spam" as annotations, after the confirmation that says how many
    page.check('input[name="mode"][value="annotations"]')
    page.select_option("#label", "spam")
    page.click("#apply")
    page.wait_for_selector("#confirm:not([hidden])")
    assert f"Create {len(expected)} annotations" in page.locator("#confirm-text").inner_text()
    page.screenshot(path=str(SHOTS / "ui-confirm.png"))
    page.click("#confirm-yes")
    page.wait_for_function("document.getElementById('result').textContent.startsWith('Label Studio stored')")
    assert f"{len(expected)} of the {len(expected)} selected tasks now hold an annotation" in \
        page.locator("#result").inner_text()
    for task in ls.list_tasks(project):
        annotations = task["annotations"]
        if task["id"] in expected:
            assert len(annotations) == 1, task["id"]
            assert annotations[0]["result"][0]["value"]["choices"] == ["spam"]
        else:
            assert annotations == [], task["id"]
    assert page.locator("#grid .card").count() == 60 - len(expected)  # labeled tasks leave the grid

    # the learning loop trained on exactly these annotations
    report = _wait_for_version(backend, project, labels=len(expected))
    full = requests.get(backend + f"/reports/{report['number']}?project={project}&format=json", timeout=10).json()
    assert full["counts"]["total"] == len(expected)
    assert sum(full["class_counts"]["spam"].values()) == len(expected)
    # the overview now shows the trained version and the state of its audit
    page.reload()
    assert page.locator("#serving").inner_text() == report["version"]
    # the chart plots exactly the versions with an audit figure, each with its interval. A search pick
    # is an audit item only when it happens to be one of the random audit draws (about 4 in 10 runs
    # here), so either may hold; with none the page says why rather than drawing an unmeasured point
    latest = requests.get(backend + f"/reports/latest?project={project}&format=json", timeout=10).json()
    assert latest["counts"]["total"] == len(expected)  # the version the page shows
    measured = [p for p in latest.get("learning_curve") or [] if p.get("audit_accuracy") is not None]
    assert page.locator("#curve svg circle").count() == len(measured)
    assert page.locator("#curve svg line.ci").count() == len(measured)
    if not measured:
        assert "trained, none measured yet" in page.locator("#curve-empty").inner_text()
    assert "audit" in page.locator("#audit").inner_text()
    page.screenshot(path=str(SHOTS / "ui-overview-trained.png"))

    # a query with markup is shown as text, never run
    page.fill("#query", MARKUP)
    page.press("#query", "Enter")
    page.wait_for_function("document.getElementById('status').textContent.includes('bold')")
    assert MARKUP in page.locator("#status").inner_text()
    assert page.evaluate("window.__pwned") is None and page.locator("#status b, #status img").count() == 0

    # cross-site writes are refused, and nothing is written
    token = page.get_attribute('meta[name="csrf-token"]', "content")
    body = {"label": "ham", "mode": "annotations", "items": [{"task": t, "score": 0} for t in truth], "confirm": 120}
    url = f"{backend}/ui/api/{project}/apply"
    assert requests.post(url, json=body, headers={"Origin": "http://evil.example", "X-CSRF-Token": token},
                         timeout=10).status_code == 403
    assert requests.post(url, json=body, timeout=10).status_code == 403
    assert requests.post(url, data={"label": "ham"}, timeout=10).status_code == 403
    assert sum(len(t["annotations"]) for t in ls.list_tasks(project)) == len(expected)
    page.close()


def test_image_grid_loads_thumbnails_that_stay_in_their_project(label_studio, backend, cifar_images, browser):
    ls = label_studio
    project = ls.create_project("ui cifar", label_config("image_classification.xml"))
    files = [path for cls in sorted(cifar_images) for path in cifar_images[cls][:2]]
    ls.import_files(project, files)
    (foreign,) = ls.import_tasks(project, [{"image": "http://198.51.100.7/private/secret.jpg"}])
    other = ls.create_project("ui other", label_config("image_classification.xml"))
    (elsewhere,) = ls.import_files(other, files[:1])
    connect_and_retrieve(ls, project, backend)

    page = _new_page(browser)
    page.goto(f"{backend}/ui/projects/{project}")
    page.fill("#query", "a photo of a horse")
    page.press("#query", "Enter")
    page.wait_for_function("document.querySelectorAll('#grid .card img').length === 20")
    page.wait_for_function("[...document.querySelectorAll('#grid .card img')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator("#grid .card img").evaluate_all("is => is.map(i => i.naturalWidth)")[0] <= 192
    page.screenshot(path=str(SHOTS / "ui-image-grid.png"))
    page.close()

    thumb = f"{backend}/ui/api/{project}/thumb"
    ok = requests.get(f"{thumb}/{ls.list_tasks(project)[0]['id']}", timeout=30)
    assert ok.status_code == 200 and ok.headers["Content-Type"] == "image/jpeg" and ok.content[:2] == b"\xff\xd8"
    # a task of another project, through this project's thumbnails: refused
    assert requests.get(f"{thumb}/{elsewhere}", timeout=30).status_code == 404
    # a task pointing at a host outside the allowlist: refused by the fetch rules, never a redirect
    refused = requests.get(f"{thumb}/{foreign}", timeout=30, allow_redirects=False)
    assert refused.status_code == 502 and "Location" not in refused.headers
    assert "198.51.100.7" in refused.json()["error"] or "not allowed" in refused.json()["error"]
    # the URL comes only from the task: a url parameter changes nothing
    assert requests.get(f"{thumb}/{foreign}?url=http://{urlsplit(ls.url).netloc}/", timeout=30).status_code == 502
