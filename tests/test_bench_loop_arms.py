"""Smoke test of the whole-system arms of bench/active_learning.py (bench/shipped_loop.py) on a tiny
synthetic pool: the loop runs the server's code, the audit draws are held out, the example's arm
trains every 10 labels. No timing assertions."""
from __future__ import annotations

import numpy as np
import pytest

from bench.datasets import Data
from bench.shipped_loop import ShippedLoop, eval_points, import_order, run_ls_example, system_result


def _data(n_pool=150, n_test=60, K=3, dim=16, seed=0) -> Data:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(K, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)

    def sample(n):
        y = rng.integers(0, K, n)
        X = centers[y] + 0.6 * rng.normal(size=(n, dim)) / np.sqrt(dim)
        return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32), y

    Xp, yp = sample(n_pool)
    Xt, yt = sample(n_test)
    return Data("synthetic", Xp, yp, Xt, yt, K, centers.astype(np.float32), "synthetic")


def test_import_order_is_a_permutation_with_ids_in_import_order():
    order, ids = import_order(20, seed=3)
    assert sorted(order.tolist()) == list(range(20))
    assert ids[order].tolist() == list(range(1, 21))


def test_shipped_loop_holds_out_the_audit_and_retrains_on_schedule():
    d = _data()
    budget = 60
    points = eval_points(budget)
    loop = ShippedLoop(d, seed=0, retrain_every=20, batch=20, audit_share=0.1, old_estimate_until=40)
    trace = loop.run(budget, points)
    assert trace.labels == points == [10, 20, 30, 40, 50, 60]
    assert len(loop.audit_idx) == 6 and len(loop.train_idx) == 54
    assert not set(loop.audit_idx) & set(loop.train_idx)
    assert not loop.unlabeled[loop.audit_idx + loop.train_idx].any()
    assert [r["labels"] for r in trace.retrains] == [20, 40, 60]
    assert all("error" not in r for r in trace.retrains)
    assert trace.head[0] == "zero-shot"  # before the first training run
    assert [a["n"] for a in trace.audit] == [1, 2, 3, 4, 5, 6]
    for a in trace.audit:
        assert a["low"] <= a["value"] <= a["high"]
    # the training runs test on the audit draws, as the server does (train_and_select's audit_ids)
    assert loop.report["test_set"] == "audit sample" and loop.report["audit"]["n"] == 6
    # the old report's estimate (hash test split of the chosen labels) only up to old_estimate_until
    assert [b["n"] > 0 for b in trace.biased] == [False, True, True, True, False, False]
    assert all(0.0 <= x <= 1.0 for x in trace.accuracy)
    res = system_result([trace], target=0.5, full_acc=0.9, at=60, seconds=0.0)
    est = res["estimates_at"]
    assert est["labels"] == 60 and est["audit_n"] == [6]
    assert est["audit_abs_error_mean"] is not None


@pytest.mark.parametrize("audit_share", [0.0])
def test_shipped_loop_without_audit_trains_on_everything(audit_share):
    d = _data()
    loop = ShippedLoop(d, seed=1, retrain_every=10, batch=20, audit_share=audit_share)
    trace = loop.run(30, eval_points(30))
    assert loop.audit_idx == [] and len(loop.train_idx) == 30
    assert all(a["n"] == 0 for a in trace.audit)


def test_ls_example_serves_import_order_and_trains_every_ten():
    d = _data()
    trace = run_ls_example(d, 40, eval_points(40), seed=2)
    assert [r["labels"] for r in trace.retrains] == [10, 20, 30, 40][-len(trace.retrains):]
    assert trace.labels == [10, 20, 30, 40]
    majority = np.bincount(d.y_test).max() / len(d.y_test)
    if trace.head[0].startswith("none"):
        assert trace.accuracy[0] == pytest.approx(majority)


def test_cli_arms_accepts_strategies_and_systems():
    from bench.active_learning import parse_args

    args = parse_args(["--quick", "--arms", "random,ours,ls-example"])
    assert (args.strategies, args.systems, args.retrain_every) == (["random"], ["ours", "ls-example"], 10)
    args = parse_args(["--strategies", "margin"])  # the strategy arms alone, as before
    assert (args.strategies, args.systems, args.retrain_every) == (["margin"], [], 10)
    with pytest.raises(SystemExit):
        parse_args(["--arms", "nope"])


def test_ours_random_is_the_same_loop_serving_import_order():
    d = _data()
    loop = ShippedLoop(d, seed=4, retrain_every=10, batch=20, audit_share=0.0, order="random")
    loop.run(30, eval_points(30))
    assert loop.train_idx == loop.order[:30].tolist()  # import order, untouched by the queue
    assert loop.trained and [c["name"] for c in loop.report["candidates"]][0] == "zero-shot"  # selected as ours


def test_system_summary_checks_the_three_targets():
    from bench.shipped_loop import summarize_systems

    def system(l95, accs):
        return {"labels_to_95pct": l95, "curve": {"labels": [10, 20, 50], "accuracy_mean": accs}}
    results = {"datasets": {"a": {
        "system_budget": 50, "label_budget": 50,
        "systems": {"ours": system(20, [0.70, 0.80, 0.85]), "ours-random": system(40, [0.6, 0.7, 0.8]),
                    "ls-example": system(40, [0.72, 0.79, 0.84])},
        "strategies": {"boundary": {"labels_to_95pct": 30}, "random": {"labels_to_95pct": 50}}}}}
    row = summarize_systems(results, at=50)["labels_to_95pct"]["a"]
    assert row["ratio"] == 0.5 and row["meets_labels_target"]
    assert row["checkpoint_gap"] == {10: -0.02, 20: 0.01, 50: 0.01} and not row["meets_checkpoint_target"]
    assert (row["ours_vs_ours_random"], row["boundary_vs_random"]) == (0.5, 0.6) and row["meets_gain_target"]


def test_store_batch_is_what_the_exact_index_retrieves_and_skips_labeled_tasks():
    """The ablation's store row: the batch through a real Chroma collection (HNSW) holds the same items as
    BoundaryRetrieval on the exact in-memory index on a pool this small, and never a labeled task."""
    from backend.learn.heads import LogisticHead
    from backend.queue.base import QueryContext
    from backend.queue.boundary import BoundaryRetrieval, NumpyIndex
    from bench.store_ranking import StoreRanking

    d = _data(n_pool=300)
    _, task_ids = import_order(300, seed=0)
    labeled = list(range(0, 300, 10))
    head = LogisticHead(C=30, n_classes=d.K).fit(d.X_pool[labeled], d.y_pool[labeled])
    unlabeled = np.setdiff1d(np.arange(300), labeled)
    ranking = StoreRanking(d.X_pool, task_ids)
    try:
        picked = ranking.batch(head, 20, d.X_pool[unlabeled], {int(task_ids[i]) for i in labeled},
                               d.X_pool[labeled], d.y_pool[labeled], d.prototypes)
    finally:
        ranking.drop()
    exact = BoundaryRetrieval().query(NumpyIndex(d.X_pool, list(range(300))), head, 20, d.X_pool[unlabeled],
                                      QueryContext(head=head, labeled_embeddings=d.X_pool[labeled],
                                                   labeled_y=d.y_pool[labeled], prototypes=d.prototypes,
                                                   labeled_ids=labeled))
    assert len(picked) == 20 and not set(picked) & set(labeled)
    assert len(set(picked) & set(exact)) >= 18


def test_shipped_loop_through_the_store_learns_like_the_exact_ranking():
    d = _data()
    points = eval_points(60)
    exact = ShippedLoop(d, seed=0, retrain_every=10, batch=20, audit_share=0.0).run(60, points)
    store_loop = ShippedLoop(d, seed=0, retrain_every=10, batch=20, audit_share=0.0, index="store")
    stored = store_loop.run(60, points)
    assert len(store_loop.train_idx) == 60 and len(set(store_loop.train_idx)) == 60
    assert abs(np.mean(stored.accuracy) - np.mean(exact.accuracy)) < 0.05
