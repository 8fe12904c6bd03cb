"""The throughput pipeline's behaviour (no timing here; python -m bench.throughput measures speed):
fast preprocessing equals open_clip's, pipeline embeddings equal one-by-one encoding in input order,
stored items are skipped, interrupted runs keep their work, clip-backend-embed resumes."""
import json
import random
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.embed.encoders import get_encoder
from backend.embed.fetch import Fetcher, decode_image
from backend.embed.pipeline import Item, embed_items
from backend.embed.store import open_store
from backend.embed.write_behind import for_store
from backend.config import Settings
from tests.helpers import DATA_DIR, backend_env, encoder_spec, fetcher_kwargs, store_kwargs


def _photo(path: Path, size: tuple[int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-10, 11, (h, w, 3), dtype=np.int16)
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """CIFAR JPEGs (32x32) and larger synthetic photos of several shapes, under one document root."""
    root = tmp_path_factory.mktemp("images")
    cifar = DATA_DIR / "cifar10-test"
    if not cifar.is_dir():
        pytest.fail(f"shared data not found at {cifar} (set SHARED_DATA)")
    for cls in ("cat", "ship", "truck"):
        for src in sorted((cifar / cls).glob("*.jpg"))[:2]:
            shutil.copyfile(src, root / f"{cls}_{src.name}")
    for i, size in enumerate([(500, 375), (375, 500), (1024, 768), (640, 427), (300, 301)]):
        _photo(root / f"photo_{i}.jpg", size, seed=i)
    return root


@pytest.fixture(scope="module")
def settings(tmp_path_factory, image_root) -> Settings:
    return Settings.from_env(backend_env(tmp_path_factory.mktemp("tp"), LOCAL_FILES_DOCUMENT_ROOT=image_root))


@pytest.fixture(scope="module")
def encoder(settings):
    return get_encoder("image", encoder_spec(settings))


class SmallBatches:
    """The real encoder with a small batch size, so a dozen items make several batches and a partial one."""

    def __init__(self, encoder, batch_size: int):
        self.inner, self.batch_size, self.id = encoder, batch_size, encoder.id
        self.batches: list[int] = []

    def prepare(self, item):
        return self.inner.prepare(item)

    def encode_batch(self, prepared):
        self.batches.append(len(prepared))
        return self.inner.encode_batch(prepared)


def test_fast_preprocessing_equals_open_clips_transform(encoder, image_root):
    clip = encoder.clip
    assert clip.fast_transform is not None  # ViT-B-32: shortest-side bicubic resize + center crop
    for path in sorted(image_root.glob("*.jpg"))[::2]:
        image = Image.open(path).convert("RGB")
        prepared = encoder.prepare(image)
        assert prepared.dtype == np.uint8 and prepared.shape == (224, 224, 3)
        with torch.inference_mode():
            ours = clip.pixels_to_input([prepared])[0].float().numpy()
        reference = clip.preprocess(image).numpy()
        np.testing.assert_allclose(ours, reference, atol=1e-5, err_msg=path.name)


def test_draft_decoding_keeps_the_short_side_at_least_the_model_input(image_root):
    big = decode_image((image_root / "photo_2.jpg").read_bytes(), 10**8, target_size=224)
    assert big.mode == "RGB" and min(big.size) >= 224 and big.size[0] < 1024  # 1024x768 decoded at 1/2
    small = decode_image((image_root / "photo_0.jpg").read_bytes(), 10**8, target_size=224)
    assert small.size == (500, 375)


def test_pipeline_equals_one_by_one_encoding_in_input_order(tmp_path, settings, encoder, image_root):
    fetcher = Fetcher(**fetcher_kwargs(settings))
    paths = sorted(image_root.glob("*.jpg"))
    random.Random(0).shuffle(paths)
    items = [Item(task_id=100 + i, field="image", source=p.name) for i, p in enumerate(paths)]
    items.insert(3, Item(task_id=5, field="image", source="missing.jpg"))
    items.insert(9, Item(task_id=6, field="image", source="data:image/png;base64,AAAA"))

    def slow_first_load(item):  # the first items finish last: completion order != input order
        if item.task_id in (100, 101):
            time.sleep(0.5)
        return fetcher.load_image(item.source)

    store = open_store(path=tmp_path / "chroma")
    small = SmallBatches(encoder, batch_size=4)
    result = embed_items(items, small, slow_first_load, store, "42", workers=4)

    good = [i for i, it in enumerate(items) if it.task_id >= 100]
    assert sorted(result.errors) == [3, 9] and result.computed == len(good) and result.cached == 0
    assert sum(small.batches) == len(good) and max(small.batches) == 4 and len(small.batches) >= 3
    for i in good:
        expected = encoder.encode_items([fetcher.load_image(items[i].source)])[0]
        np.testing.assert_allclose(result.embeddings[i], expected, rtol=1e-4, atol=1e-5,
                                   err_msg=f"item {i} ({items[i].source})")
    assert result.embeddings[3] is None and result.embeddings[9] is None

    # second pass: every good item comes from the store, nothing is encoded; failures are retried
    small.batches.clear()
    again = embed_items(items, small, slow_first_load, store, "42", workers=4)
    assert (again.cached, again.computed, small.batches) == (len(good), 0, [])
    assert sorted(again.errors) == [3, 9]
    for i in good:
        np.testing.assert_allclose(again.embeddings[i], result.embeddings[i], rtol=1e-5, atol=1e-6)


def test_an_interrupted_run_keeps_finished_batches(tmp_path, settings, encoder, image_root):
    fetcher = Fetcher(**fetcher_kwargs(settings))
    paths = sorted(image_root.glob("*.jpg"))
    items = [Item(task_id=1 + i, field="image", source=p.name) for i, p in enumerate(paths)]
    store = open_store(path=tmp_path / "chroma")

    class CtrlC:
        def update(self, n):
            raise KeyboardInterrupt  # right after the first batch was encoded

    first = SmallBatches(encoder, 4)
    with pytest.raises(KeyboardInterrupt):
        embed_items(items, first, lambda it: fetcher.load_image(it.source), store, "9",
                    workers=2, progress=CtrlC())
    assert len(first.batches) == 1 and store.count("9", encoder.id) == first.batches[0] >= 1
    kept = first.batches[0]
    assert not [t for t in threading.enumerate() if t.name.startswith("fetch")]
    assert for_store(store).backlog == 0  # the store-writer thread outlives the run; nothing is left waiting

    counted = []

    class Progress:
        def update(self, n):
            counted.append(n)

    rest = embed_items(items, SmallBatches(encoder, 4), lambda it: fetcher.load_image(it.source), store, "9",
                       progress=Progress())
    assert (rest.cached, rest.computed) == (kept, len(items) - kept)
    assert sum(counted) == len(items) and counted[0] == kept  # cached ones first, then batch by batch


def test_embed_project_folder_is_resumable(tmp_path, monkeypatch, capsys, settings, encoder, image_root):
    from backend.cli import embed_project

    folder = tmp_path / "import"
    shutil.copytree(image_root, folder)
    (folder / "broken.jpg").write_bytes(b"not an image")
    total = len(list(folder.glob("*.jpg")))
    for name, value in backend_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CHROMA_PATH", raising=False)
    monkeypatch.delenv("LOCAL_FILES_DOCUMENT_ROOT", raising=False)

    config = tmp_path / "two_labels.xml"  # few labels: few prompts to encode at each start
    config.write_text('<View><Image name="image" value="$image"/><Choices name="c" toName="image">'
                      '<Choice value="cat"/><Choice value="ship"/></Choices></View>')

    def run(*extra) -> tuple[dict, str]:
        code = embed_project.main(["--folder", str(folder), "--label-config", str(config), "--json", *extra])
        out, err = capsys.readouterr()
        assert code == 0, err
        return json.loads(out.strip().splitlines()[-1]), err

    first, err = run("--limit", "6")  # an interrupted import, as far as the store is concerned
    assert first["tasks"] == 6 and first["embedded"] + first["failed"] == 6 and first["skipped"] == 0
    assert "item" in err and "6/6" in err  # the progress bar
    second, _ = run()
    assert second["tasks"] == total
    assert second["skipped"] == first["embedded"]  # nothing embedded twice
    assert second["embedded"] == total - 1 - first["embedded"] and second["failed"] == 1
    third, _ = run()
    assert (third["embedded"], third["skipped"], third["failed"]) == (0, total - 1, 1)

    # the server reads what the script stored: same settings, same store, same collection
    store = open_store(**store_kwargs(Settings.from_env()))
    assert store.count(first["store_project"], encoder.id) == total - 1


def test_stage_report_gives_every_stage_a_positive_rate_and_names_the_limit(monkeypatch, capsys, tmp_path):
    """`python -m bench.throughput --stages` at CI size: each stage alone and together, JSON with the limit."""
    from bench import throughput
    from tests.helpers import minilm_path

    monkeypatch.setenv("CLIP_PRETRAINED", "none")
    monkeypatch.setenv("TEXT_MODEL", minilm_path())
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    code = throughput.main(["--stages", "--json", "--images", "8", "--loop-images", "2", "--sets", "cifar,64x48",
                            "--store-records", "64", "--store-batch", "32", "--device", "cpu",
                            "--batch-size", "8"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report["sets"]) == {"cifar", "64x48"}
    for name, row in report["sets"].items():
        for stage in ("read", "decode_cpu", "encode", "together", "together_stored"):
            assert row[stage] > 0, (name, stage)
        assert row["decode_gpu"] is None  # CPU: no device decode
        assert row["limit"] in ("read", "decode", "encode", "store_write_1w", "head_predict")
        assert row["together_vs_limit"] > 0
    shared = report["shared"]
    for stage in ("store_write_1w", "store_write_2w_same", "store_write_2w_two", "store_read", "head_predict",
                  "text_encode"):
        assert shared[stage] > 0, stage
    assert report["config"]["device"] == "cpu" and report["config"]["gpu_decode"] is False
