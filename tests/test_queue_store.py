"""The queue's side of the embedding store (real embedded Chroma): labeled flags, searches that skip
labeled records inside Chroma, and the uniform draw the audit sample relies on."""
import numpy as np
import pytest

from backend.embed.store import StoredItem, open_store

PROJECT, ENCODER = "7", "st-test"


@pytest.fixture
def store(tmp_path):
    store = open_store(path=tmp_path / "chroma")
    rng = np.random.default_rng(0)
    E = rng.normal(size=(200, 16)).astype(np.float32)
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    items = [StoredItem(task_id=t, field="text", hash=f"h{t}", embedding=E[t]) for t in range(200)]
    items += [StoredItem(task_id=t, field="title", hash=f"g{t}", embedding=E[t]) for t in range(20)]
    store.put_many(PROJECT, ENCODER, items)
    return store, E


def test_labeled_records_are_skipped_inside_chroma_and_come_back_when_unflagged(store):
    store, E = store
    store.mark_labeled(PROJECT, ENCODER, "text", range(0, 200, 2))
    index = store.unlabeled_index(PROJECT, ENCODER, "text")
    keys, V = index.search(E[0], 60)
    assert len(keys) == 60 and all(int(k.split(":")[0]) % 2 == 1 and k.endswith(":text") for k in keys)
    assert np.allclose(V[0], E[int(keys[0].split(":")[0])], atol=1e-6)
    store.mark_labeled(PROJECT, ENCODER, "text", [0], labeled=False)  # the annotation was deleted
    assert index.search(E[0], 1)[0] == ["0:text"]
    store.mark_labeled(PROJECT, ENCODER, "text", [10_000])  # a task without a record: ignored


def test_the_draw_is_uniform_over_unlabeled_records_of_the_field(store):
    store, _ = store
    labeled = set(range(0, 200, 2))
    store.mark_labeled(PROJECT, ENCODER, "text", sorted(labeled))
    counts = np.zeros(200)
    rng = np.random.default_rng(1)
    for _ in range(300):
        ids, V = store.sample_unlabeled(PROJECT, ENCODER, "text", 10, rng, exclude={1, 3})
        assert len(ids) == len(set(ids)) == 10 and V.shape == (10, 16)
        counts[ids] += 1
    assert counts[sorted(labeled)].sum() == 0 and counts[[1, 3]].sum() == 0
    drawn = counts[[t for t in range(1, 200, 2) if t not in (1, 3)]]
    expected = 3000 / len(drawn)
    chi2 = ((drawn - expected) ** 2 / expected).sum()
    assert chi2 < 160, chi2  # 97 degrees of freedom: p < 1e-4 above 160


def test_a_block_sample_reads_only_what_it_returns_for(store):
    store, _ = store
    ids, V = store.sample_unlabeled(PROJECT, ENCODER, "text", 40, np.random.default_rng(2), runs=4)
    assert 0 < len(ids) <= 40 and len(set(ids)) == len(ids) and V.shape[0] == len(ids)


def test_a_sample_larger_than_the_collection_reads_it_once(store):
    """QUEUE_SAMPLE above the project's size: every unlabeled record of the field, in one pass (not
    random reads until a count that cannot be reached)."""
    store, _ = store
    store.mark_labeled(PROJECT, ENCODER, "text", range(0, 200, 2))
    coll = store.collection(PROJECT, ENCODER)
    reads, get = [], coll.get
    coll.get = lambda **kw: reads.append(kw) or get(**kw)
    ids, V = store.sample_unlabeled(PROJECT, ENCODER, "text", 4000, np.random.default_rng(3), runs=8)
    assert sorted(ids) == list(range(1, 200, 2)) and V.shape == (100, 16)
    assert len(reads) == 1


def test_a_mostly_labeled_collection_stops_reading(store):
    store, _ = store
    store.mark_labeled(PROJECT, ENCODER, "text", range(0, 198))
    coll = store.collection(PROJECT, ENCODER)
    reads, get = [], coll.get
    coll.get = lambda **kw: reads.append(kw) or get(**kw)
    ids, _ = store.sample_unlabeled(PROJECT, ENCODER, "text", 100, np.random.default_rng(4), runs=4)
    assert set(ids) <= {198, 199}
    assert sum(kw["limit"] for kw in reads) <= 2 * coll.count() + 25


def test_a_search_without_metadata_filter_skips_labeled_tasks_and_other_fields(store):
    """The queue's searches: plain HNSW queries that drop the labeled tasks (here the 60 nearest to the
    query, more than the first over-fetch) and the other field's records, and still return m."""
    store, E = store
    nearest = np.argsort(-(E @ E[0]))
    labeled = {int(t) for t in nearest[:60]}
    index = store.unlabeled_index(PROJECT, ENCODER, "text", labeled)
    keys, V = index.search(E[0], 10)
    tasks = [int(k.split(":")[0]) for k in keys]
    assert len(keys) == 10 and all(k.endswith(":text") for k in keys) and not set(tasks) & labeled
    assert tasks == [int(t) for t in nearest[60:70]]  # exactly the nearest unlabeled ones, in order
    assert np.allclose(V, E[tasks], atol=1e-6)
