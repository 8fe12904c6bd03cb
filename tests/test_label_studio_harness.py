"""Smoke test of the real-Label-Studio harness (tests/ls_server.py)."""
import glob
from pathlib import Path

import pytest
import requests

from tests.helpers import DATA_DIR

pytestmark = pytest.mark.e2e

IMAGE_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="label" toName="image"><Choice value="cat"/><Choice value="dog"/></Choices>
</View>"""

TEXT_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="Positive"/><Choice value="Negative"/></Choices>
</View>"""


def _sample_images(tmp_path, n=2):
    found = sorted(glob.glob(str(DATA_DIR / "cifar10-test" / "cat" / "*.jpg")))[:n]
    if len(found) == n:
        return [Path(p) for p in found]
    from PIL import Image  # fallback when the shared data set is absent

    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(p)
        paths.append(p)
    return paths


def test_import_and_download(label_studio, tmp_path):
    ls = label_studio
    assert requests.get(ls.url + "/health", timeout=5).json()["status"] == "UP"

    img_project = ls.create_project("harness images", IMAGE_CONFIG)
    images = _sample_images(tmp_path)
    file_task_ids = ls.import_files(img_project, images)
    assert len(file_task_ids) == 2

    txt_project = ls.create_project("harness text", TEXT_CONFIG)
    text_task_ids = ls.import_tasks(txt_project, [{"text": "I love it"}, {"text": "awful"}])
    assert len(text_task_ids) == 2

    img_tasks = ls.list_tasks(img_project)
    assert sorted(t["id"] for t in img_tasks) == sorted(file_task_ids)
    assert len(ls.list_tasks(txt_project)) == 2
    assert {t["data"]["text"] for t in ls.list_tasks(txt_project)} == {"I love it", "awful"}

    # uploaded files get LS-relative URLs: /data/upload/<project id>/<8 hex>-<original name>
    by_name = {p.name: p for p in images}
    for task in img_tasks:
        url = task["data"]["image"]
        assert url.startswith(f"/data/upload/{img_project}/"), url
        original = by_name[url.rsplit("/", 1)[1].split("-", 1)[1]]
        # legacy token
        assert ls.download(url) == original.read_bytes()
        # anonymous access is refused
        assert requests.get(ls.url + url, timeout=10).status_code == 401

    # Personal Access Token -> access token -> Bearer
    access = ls.pat_access_token(ls.create_personal_access_token())
    url = img_tasks[0]["data"]["image"]
    r = requests.get(ls.url + url, headers={"Authorization": f"Bearer {access}"}, timeout=10)
    assert r.status_code == 200 and len(r.content) > 0
