"""Embeddings go through Chroma: a second pass over the same tasks embeds nothing."""
import numpy as np
import pytest

from backend.embed.encoders import get_encoder
from backend.embed.fetch import Fetcher
from backend.embed.pipeline import Item, embed_items
from backend.embed.store import StoredItem, collection_name, open_store
from backend.config import Settings
from tests.helpers import DATA_DIR, backend_env, encoder_spec, fetcher_kwargs


@pytest.fixture(scope="module")
def clip_settings(tmp_path_factory):
    return Settings.from_env(backend_env(tmp_path_factory.mktemp("clip"), LOCAL_FILES_DOCUMENT_ROOT=DATA_DIR))


@pytest.fixture(scope="module")
def image_encoder(clip_settings):
    return get_encoder("image", encoder_spec(clip_settings))


def _items(paths, start_id=1):
    return [Item(task_id=start_id + i, field="image", source=str(p)) for i, p in enumerate(paths)]


def test_second_pass_reads_everything_from_the_store(tmp_path, clip_settings, image_encoder, cifar_images):
    store = open_store(path=tmp_path / "chroma")
    fetcher = Fetcher(**fetcher_kwargs(clip_settings))
    items = _items(cifar_images["cat"][:12])
    first = embed_items(items, image_encoder, lambda it: fetcher.load_image(it.source), store, "7")
    assert (first.cached, first.computed, first.errors) == (0, 12, {})
    assert store.count("7", image_encoder.id) == 12
    second = embed_items(items, image_encoder, lambda it: fetcher.load_image(it.source), store, "7")
    assert (second.cached, second.computed) == (12, 0)
    for a, b in zip(first.embeddings, second.embeddings):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert abs(np.linalg.norm(a) - 1) < 1e-4

    # the store survives a restart (a new client on the same path)
    reopened = open_store(path=tmp_path / "chroma")
    third = embed_items(items, image_encoder, lambda it: fetcher.load_image(it.source), reopened, "7")
    assert (third.cached, third.computed) == (12, 0)

    # changed task data (new hash) is embedded again; other projects are separate collections
    changed = [Item(task_id=1, field="image", source=str(cifar_images["dog"][0]))]
    assert embed_items(changed, image_encoder, lambda it: fetcher.load_image(it.source), store, "7").computed == 1
    assert embed_items(items[:3], image_encoder, lambda it: fetcher.load_image(it.source), store, "8").computed == 3


def test_bad_items_are_skipped_with_a_reason(tmp_path, clip_settings, image_encoder, cifar_images):
    fetcher = Fetcher(**fetcher_kwargs(clip_settings))
    items = _items(cifar_images["cat"][:3]) + [Item(4, "image", "missing/nothing.jpg"),
                                               Item(5, "image", "data:image/png;base64,AAAA")]
    result = embed_items(items, image_encoder, lambda it: fetcher.load_image(it.source), None, "1")
    assert result.computed == 3 and sorted(result.errors) == [3, 4]
    assert "cannot read local file" in result.errors[3] and "not a decodable image" in result.errors[4]
    assert result.embeddings[3] is None and result.embeddings[0] is not None


def test_embedding_batch_matches_one_by_one(image_encoder, cifar_images):
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in cifar_images["ship"][:5]]
    batched = image_encoder.encode_items(images)
    single = np.concatenate([image_encoder.encode_items([img]) for img in images])
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_collection_names_are_valid_for_chroma():
    name = collection_name("12", "clip-ViT-B-32-/weird path/ckpt.pt" * 20)
    assert 3 <= len(name) <= 200 and name[0].isalnum() and name[-1].isalnum()


def test_store_upsert_replaces_stale_hash(tmp_path):
    store = open_store(path=tmp_path / "c")
    v = np.ones(4, np.float32) / 2
    store.put_many("1", "enc", [StoredItem(5, "image", "h1", v)])
    assert set(store.get_many("1", "enc", [(5, "image", "h1")])) == {"5:image"}
    assert store.get_many("1", "enc", [(5, "image", "h2")]) == {}
    store.put_many("1", "enc", [StoredItem(5, "image", "h2", -v)])
    assert store.count("1", "enc") == 1
    np.testing.assert_allclose(store.get_many("1", "enc", [(5, "image", "h2")])["5:image"], -v)


def test_hnsw_settings_build_new_collections_and_widen_the_search_of_existing_ones(tmp_path, caplog):
    from backend.embed.store import HnswParams
    from backend.runtime.models import store_kwargs

    settings = Settings.from_env({"MODEL_DIR": str(tmp_path), "CHROMA_HNSW_M": "32",
                                  "CHROMA_HNSW_CONSTRUCTION_EF": "200", "CHROMA_HNSW_SEARCH_EF": "400"})
    assert store_kwargs(settings)["hnsw"] == HnswParams(M=32, construction_ef=200, search_ef=400)
    old = open_store(path=tmp_path / "c")  # Chroma's defaults
    old.put_many("1", "enc", [StoredItem(5, "image", "h1", np.ones(4, np.float32) / 2)])
    store = open_store(path=tmp_path / "c", hnsw=store_kwargs(settings)["hnsw"])
    with caplog.at_level("WARNING"):
        existing = store.collection("1", "enc").configuration["hnsw"]
    assert (existing["max_neighbors"], existing["ef_construction"], existing["ef_search"]) == (16, 100, 400)
    assert "CHROMA_HNSW_M=32" in caplog.text  # the graph is fixed once built: the log says the setting waits
    new = store.collection("2", "enc").configuration["hnsw"]
    assert (new["max_neighbors"], new["ef_construction"], new["ef_search"]) == (32, 200, 400)
    assert set(store.get_many("1", "enc", [(5, "image", "h1")])) == {"5:image"}  # nothing lost
