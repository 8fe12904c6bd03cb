"""Query strategies: behaviour on synthetic problems, a real Chroma collection, and the --quick benchmark."""
import json
import subprocess
import sys

import numpy as np
import pytest

from backend.embed.store import CollectionIndex
from backend.learn.heads import LogisticHead, ZeroShotHead
from backend.queue import (BoundaryRetrieval, ColdStart, Entropy, LeastConfidence, Margin, NumpyIndex, QueryContext,
                           RandomSampling, dedupe, get_strategy, top2_margin)
from bench.strategy_variants import ExploringBoundaryRetrieval, explore_picks, sampled_density
from tests.helpers import DATA_DIR, REPO_ROOT


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def two_class_problem(n=400, d=16, seed=0):
    """Two classes separated along axis 0; the boundary is x0 = 0."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.standard_normal((n, d)) * 0.1
    X[:, 0] = np.where(y == 1, 1.0, -1.0) * rng.uniform(0.01, 1.0, n)
    return unit(X + np.r_[0, 1.0, np.zeros(d - 2)]), y


def blobs(k=5, per=60, d=32, spread=0.08, seed=0):
    rng = np.random.default_rng(seed)
    centers = unit(rng.standard_normal((k, d)))
    X = np.concatenate([centers[c] + spread * rng.standard_normal((per, d)) / np.sqrt(d) * 4 for c in range(k)])
    return unit(X), np.repeat(np.arange(k), per), centers


ALL = [RandomSampling(), LeastConfidence(), Margin(), Entropy(), BoundaryRetrieval(), ColdStart()]


def test_margin_picks_items_nearest_the_boundary():
    X, y = two_class_problem()
    lab = np.r_[np.flatnonzero(y == 0)[:20], np.flatnonzero(y == 1)[:20]]
    head = LogisticHead(C=30.0, n_classes=2).fit(X[lab], y[lab])
    proba = head.predict_proba(X)
    picks = Margin().rank(proba, X, 10)
    # the head's decision value |w.x + b| is smallest exactly for the picked items
    decision = np.abs(head.models[0].decision_function(X))
    assert set(picks.tolist()) == set(np.argsort(decision)[:10].tolist())
    # and they sit near the true boundary x0 = 0 compared with the pool
    assert np.median(np.abs(X[picks, 0])) < np.median(np.abs(X[:, 0])) / 3


@pytest.mark.parametrize("strategy", ALL, ids=lambda s: s.name)
def test_priorities_in_unit_interval_and_lower_for_uncertain(strategy):
    X, y = two_class_problem(seed=1)
    lab = np.r_[np.flatnonzero(y == 0)[:15], np.flatnonzero(y == 1)[:15]]
    head = LogisticHead(C=30.0, n_classes=2).fit(X[lab], y[lab])
    proba = head.predict_proba(X)
    ctx = QueryContext(head=head, labeled_embeddings=X[lab], labeled_y=y[lab], rng=0)
    pr = strategy.priority(proba, X, k=10, context=ctx)
    assert pr.shape == (len(X),)
    assert np.all((pr >= 0) & (pr <= 1))
    if strategy.name in ("random", "cold_start"):
        return
    m = top2_margin(proba)
    certain, uncertain = np.argsort(m)[-50:], np.argsort(m)[:50]
    assert pr[uncertain].mean() < pr[certain].mean()
    # the batch that rank() returns comes first in Label Studio's ascending order
    batch = strategy.rank(proba, X, 10, ctx)
    assert len(set(batch.tolist())) == 10
    assert set(np.argsort(pr, kind="stable")[:10].tolist()) == set(batch.tolist())


def test_uncertainty_strategies_agree_on_binary_ordering():
    p = np.array([[0.5, 0.5], [0.9, 0.1], [0.6, 0.4], [0.99, 0.01]])
    for s in (LeastConfidence(), Margin(), Entropy()):
        assert s.rank(p, None, 4).tolist() == [0, 2, 1, 3]
    p3 = np.array([[0.4, 0.4, 0.2], [0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])
    assert Margin().rank(p3, None, 1).tolist() == [0]  # tie on top two
    assert LeastConfidence().rank(p3, None, 1).tolist() == [0]
    assert Entropy().priority(p3)[2] == pytest.approx(1.0)


def test_dedupe_and_diverse_rank_skip_near_duplicates():
    rng = np.random.default_rng(0)
    base = unit(rng.standard_normal((5, 24)))
    dup = unit(base[0] + 0.01 * rng.standard_normal(24))
    X = np.vstack([base[0], dup, dup, base[1:]])
    assert dedupe(range(len(X)), X, 10) == [0, 3, 4, 5, 6]
    # diverse margin: the three near-identical most-uncertain items yield one pick
    proba = np.array([[0.5, 0.5]] * 3 + [[0.7, 0.3], [0.8, 0.2], [0.9, 0.1], [0.95, 0.05]])
    plain = Margin().rank(proba, X, 3)
    diverse = Margin(diverse=True).rank(proba, X, 3)
    assert set(plain.tolist()) == {0, 1, 2}
    assert len({0, 1, 2} & set(diverse.tolist())) == 1
    Xb = np.vstack([X, X[:1]])  # BoundaryRetrieval never returns two near-duplicates either
    pb = np.vstack([proba, proba[:1]])
    picks = BoundaryRetrieval().rank(pb, Xb, 4, QueryContext(prototypes=unit(rng.standard_normal((2, 24)))))
    S = Xb[picks] @ Xb[picks].T
    assert (S[np.triu_indices(len(picks), 1)] <= 0.95).all()


def test_cold_start_covers_separated_clusters():
    X, blob, centers = blobs(k=6, per=50)
    picks = ColdStart().rank(None, X, 6, QueryContext(rng=0))
    assert sorted(blob[picks].tolist()) == list(range(6))
    # typical items: each pick is close to its blob's centre
    assert min(float(X[i] @ centers[blob[i]]) for i in picks) > 0.8
    # with zero-shot prototypes still one per blob
    zs = ZeroShotHead(centers[:3], 30.0).predict_proba(X)
    picks = ColdStart().rank(zs, X, 6, QueryContext(prototypes=centers[:3], rng=1))
    assert sorted(blob[picks].tolist()) == list(range(6))


def _boundary_setup(seed=0, K=4, per=150, d=32):
    X, blob, centers = blobs(k=K, per=per, d=d, spread=0.25, seed=seed)
    rng = np.random.default_rng(seed)
    lab = np.concatenate([rng.choice(np.flatnonzero(blob == c), 6, replace=False) for c in range(K)])
    head = LogisticHead(C=10.0, n_classes=K).fit(X[lab], blob[lab])
    unl = np.setdiff1d(np.arange(len(X)), lab)
    return X, blob, lab, unl, head


def test_boundary_retrieval_via_chroma_matches_exact_scan(tmp_path):
    import chromadb

    X, y, lab, unl, head = _boundary_setup()
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    coll = client.create_collection("al_test", embedding_function=None, metadata={"hnsw:space": "cosine"})
    ids = [f"{i}:text" for i in range(len(X))]
    coll.add(ids=ids, embeddings=X, metadatas=[{"task_id": i, "field": "text", "hash": "h"} for i in range(len(X))])
    strat = BoundaryRetrieval()
    known = QueryContext(labeled_embeddings=X[lab], labeled_y=y[lab], labeled_ids=[ids[i] for i in lab], rng=0)
    k = 12
    via_chroma = strat.query(CollectionIndex(coll), head, k, X[unl], known)
    exact = strat.query(NumpyIndex(X, ids), head, k, X[unl], known)
    assert len(via_chroma) == k and len(set(via_chroma)) == k
    assert not set(via_chroma) & set(known.labeled_ids)  # labeled items are never returned
    recall = len(set(via_chroma) & set(exact)) / k
    assert recall >= 0.9
    # the in-memory rank() is the same algorithm on the unlabeled arrays (numpy scan above
    # exhaustive_max; below it every item of a pair is a candidate: the exact answer)
    proba_unl = head.predict_proba(X[unl])
    ctx = QueryContext(head=head, labeled_embeddings=X[lab], labeled_y=y[lab], rng=0)
    ranked = BoundaryRetrieval(exhaustive_max=0).rank(proba_unl, X[unl], k, ctx)
    assert len({ids[i] for i in unl[ranked]} & set(exact)) / k >= 0.9
    exhaustive = strat.rank(proba_unl, X[unl], k, ctx)
    assert top2_margin(proba_unl[exhaustive]).mean() <= top2_margin(proba_unl[ranked]).mean() + 1e-9
    # the batch is near the boundary: far smaller margins than the unlabeled pool's median
    idx = [ids.index(r) for r in via_chroma]
    assert np.median(top2_margin(head.predict_proba(X[idx]))) < np.median(top2_margin(head.predict_proba(X[unl]))) / 2


def test_boundary_retrieval_with_a_where_filter(tmp_path):
    import chromadb

    X, y, lab, unl, head = _boundary_setup(seed=3)
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    coll = client.create_collection("al_test", embedding_function=None, metadata={"hnsw:space": "cosine"})
    labeled = set(lab.tolist())
    coll.add(ids=[str(i) for i in range(len(X))], embeddings=X,
             metadatas=[{"labeled": i in labeled} for i in range(len(X))])
    got = BoundaryRetrieval().query(CollectionIndex(coll, where={"labeled": False}), head, 8, X[unl],
                                    QueryContext(labeled_embeddings=X[lab], labeled_y=y[lab]))
    assert len(got) == 8 and not {int(g) for g in got} & labeled


class _FarAwayIndex:
    """A vector index whose searches only find items far from the boundary (failure injection: the
    crossing points' neighbourhoods miss where the low-margin items are)."""

    def __init__(self, X, ids, far):
        self.X, self.ids, self.far = X, ids, far

    def search(self, direction, m, exclude=None):
        keep = [i for i in self.far if self.ids[i] not in (exclude or ())][:m]
        return [self.ids[i] for i in keep], self.X[keep]


def test_boundary_query_with_the_sample_is_never_worse_than_the_samples_exact_ranking():
    """Searches that miss the boundary cannot push the sample's own boundary items out of the batch."""
    X, y, lab, unl, head = _boundary_setup()
    ids = [f"{i}:text" for i in range(len(X))]
    margins = top2_margin(head.predict_proba(X[unl]))
    far = unl[np.argsort(-margins)][:100]  # the most certain unlabeled items
    index = _FarAwayIndex(X, ids, far)
    ctx = QueryContext(head=head, labeled_embeddings=X[lab], labeled_y=y[lab], labeled_ids=[ids[i] for i in lab])
    k = 12
    blind = BoundaryRetrieval().query(index, head, k, X[unl], ctx)
    with_sample = BoundaryRetrieval().query(index, head, k, X[unl], ctx, sample_keys=[ids[i] for i in unl])
    exact = BoundaryRetrieval().rank(head.predict_proba(X[unl]), X[unl], k, ctx)
    assert len(with_sample) == k and not set(with_sample) & set(ctx.labeled_ids)

    def mean_margin(keys):
        return float(top2_margin(head.predict_proba(X[[ids.index(key) for key in keys]])).mean())
    assert mean_margin(with_sample) <= mean_margin([ids[i] for i in unl[exact]]) + 1e-9
    assert mean_margin(with_sample) < mean_margin(blind) / 2


def test_boundary_opt_in_exploration_and_density_weighting():
    X, blob, centers = blobs(k=5, per=60, seed=2)
    # exploration: typical items of the blobs that no labeled item covers yet
    lab = np.concatenate([np.flatnonzero(blob == c)[:3] for c in range(3)])
    unl = np.setdiff1d(np.arange(len(X)), lab)
    dens = sampled_density(X[unl])
    picks = explore_picks(X[unl], 2, dens, X[lab])
    assert sorted(blob[unl[picks]].tolist()) == [3, 4]
    assert np.allclose(sampled_density(X, reference=len(X)), sampled_density(X, reference=10_000))
    assert sampled_density(X, reference=100, rng=0).shape == (len(X),)
    # the exploration share decays to zero at explore_until labels per class: then the batch is
    # exactly the default boundary batch (and the defaults explore nothing)
    X2, y2, lab2, unl2, head = _boundary_setup(seed=1)  # 6 labels per class
    proba = head.predict_proba(X2[unl2])
    ctx = QueryContext(head=head, labeled_embeddings=X2[lab2], labeled_y=y2[lab2], rng=0)
    strat = ExploringBoundaryRetrieval(explore=0.5, explore_until=12)
    assert strat.explore_share(len(lab2), 4) == pytest.approx(0.25)
    assert ExploringBoundaryRetrieval().explore_share(0, 4) == 0.0
    assert ExploringBoundaryRetrieval(explore=0.5, explore_until=6).rank(proba, X2[unl2], 8, ctx).tolist() == \
        BoundaryRetrieval().rank(proba, X2[unl2], 8, ctx).tolist()
    mixed = strat.rank(proba, X2[unl2], 8, ctx)
    assert len(set(mixed.tolist())) == 8
    # density weighting: still a boundary batch of distinct items, far below the pool's median margin
    dense = ExploringBoundaryRetrieval(density_weight=0.1).rank(proba, X2[unl2], 8, ctx)
    assert len(set(dense.tolist())) == 8
    assert np.median(top2_margin(proba[dense])) < np.median(top2_margin(proba)) / 2


def test_get_strategy_and_random_is_seeded():
    assert get_strategy("margin").name == "margin"
    with pytest.raises(ValueError):
        get_strategy("nope")
    p = np.full((50, 3), 1 / 3)
    assert RandomSampling().rank(p, None, 5, QueryContext(rng=1)).tolist() == \
        RandomSampling().rank(p, None, 5, QueryContext(rng=1)).tolist()


@pytest.mark.skipif(not (DATA_DIR / "sms_spam").is_dir(), reason="shared data not available")
def test_quick_benchmark_json(tmp_path):
    # embeddings are cached under the benchmark's default cache dir (/tmp/al_cache or $AL_CACHE):
    # the first run embeds ~700 items (~30-60 s on 2 cores), later runs take ~10 s
    proc = subprocess.run(
        [sys.executable, "-m", "bench.active_learning", "--quick", "--json", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=400, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert set(res["datasets"]) == {"banking77", "ag_news", "sms_spam", "cifar10"}
    ran = {n: d for n, d in res["datasets"].items() if "strategies" in d}
    assert {"banking77", "ag_news", "sms_spam"} <= set(ran)  # cifar10 needs the optional image encoder
    for name, d in ran.items():
        assert {"random", "least_confidence", "margin", "entropy", "boundary", "modal_margin"} <= set(d["strategies"])
        for sname, s in d["strategies"].items():
            assert "labels_to_95pct" in s and "auc_learning_curve" in s, (name, sname)
            if "skipped" not in s:
                assert 0.0 <= s["auc_learning_curve"] <= 1.0
                assert s["labels_to_95pct"] is None or s["labels_to_95pct"] <= d["label_budget"]
        assert 0 < d["full_pool_accuracy"] <= 1
    assert (tmp_path / "out" / "learning_curves.png").stat().st_size > 10_000
