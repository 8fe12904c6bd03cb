"""Honest numbers during active learning: intervals, the audit set as the test set, and the
label-error review (confident learning on out-of-fold probabilities). Synthetic embeddings only."""
import base64
import json

import numpy as np
import pytest

from backend.learn.audit import audit_size_for, audit_wanted
from backend.learn.heads import LogisticHead, ZeroShotHead
from backend.learn.intervals import bootstrap, proportion, wilson_interval
from backend.learn.label_errors import (confident_issues, neighbour_proba, rank_label_errors, suspicion,
                                        with_neighbours)
from backend.learn.report import write_report
from backend.learn.selection import train_and_select

K = 4
NAMES = ["apple", "banana", "cherry", "damson"]


def _clusters(n, k=K, d=24, noise=0.9, seed=0):
    """Unit vectors around k random class centres; the centres double as zero-shot prototypes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, k, n)
    X = centres[y] + noise * rng.normal(size=(n, d)) / np.sqrt(d)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), y, centres.astype(np.float32)


def _flip(y, share, seed, k=K):
    """y with a share of items moved to another class uniformly at random, and which were moved."""
    rng = np.random.default_rng(seed)
    flipped = np.zeros(len(y), dtype=bool)
    flipped[rng.choice(len(y), int(round(share * len(y))), replace=False)] = True
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, k, flipped.sum())) % k
    return noisy, flipped


# -- intervals ------------------------------------------------------------------------------------
def test_wilson_interval_matches_known_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=5e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-4)
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=5e-4)
    est = proportion(8, 10)
    assert est.value == 0.8 and est.low < 0.8 < est.high and est.n == 10
    assert proportion(0, 0).as_dict() == {"value": None, "low": None, "high": None, "n": 0, "half_width": None}


def test_bootstrap_interval_contains_the_value_and_narrows_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (40, 400, 4000):
        values = rng.normal(0.7, 0.2, n)
        est = bootstrap(lambda idx: values[idx].mean(), n, rounds=400)
        assert est.low <= est.value <= est.high and est.n == n
        widths.append(est.half_width)
    assert widths[0] > widths[1] > widths[2]
    assert bootstrap(lambda idx: 0.0, 0).value is None


def test_audit_size_for_gives_the_smallest_n_with_the_half_width():
    for accuracy in (0.5, 0.8, 0.97):
        n = audit_size_for(0.03, accuracy)
        low, high = wilson_interval(accuracy * n, n)
        before = wilson_interval(accuracy * (n - 1), n - 1)
        assert (high - low) / 2 <= 0.03 < (before[1] - before[0]) / 2
    assert 1000 < audit_size_for(0.03, 0.5) < 1100  # the textbook 1.96^2 / 4 / 0.03^2 = 1067
    assert audit_size_for(0.03, 0.9) < audit_size_for(0.03, 0.5)
    assert audit_size_for(0.05, 0.5) < audit_size_for(0.03, 0.5)
    assert audit_size_for(accuracy=0.5) == audit_size_for(0.03, 0.5)


def test_audit_draws_stop_once_the_interval_is_narrow_enough():
    needed = audit_size_for(0.03, 0.9)
    assert audit_wanted(None) and audit_wanted({"n": 0, "accuracy": {"value": None}})  # no audit figures yet
    assert audit_wanted({"n": needed - 1, "accuracy": {"value": 0.9}})
    assert not audit_wanted({"n": needed, "accuracy": {"value": 0.9}})
    assert audit_wanted({"n": needed, "accuracy": {"value": 0.6}})  # accuracy fell: a wider interval, draw more
    assert not audit_wanted({"n": audit_size_for(0.05, 0.9), "accuracy": {"value": 0.9}}, half_width=0.05)


# -- train_and_select with an audit set -------------------------------------------------------------
@pytest.fixture(scope="module")
def labeled():
    X, y, centres = _clusters(600, noise=2.0, seed=1)
    ids = [f"task-{i}" for i in range(len(y))]
    audit = ids[::10] + ["task-not-labeled-1", "task-not-labeled-2"]  # 60 labeled audit items
    return X, y, ids, centres, audit


def _select(X, y, ids, centres, **kwargs):
    return train_and_select(X, y, ids, centres, 10.0, NAMES, False, **kwargs)


def test_audit_items_are_the_test_set_and_never_trained_on(labeled):
    X, y, ids, centres, audit = labeled
    head, report = _select(X, y, ids, centres, audit_ids=audit, version="a1")
    in_audit = np.isin(ids, audit)
    assert report["test_set"] == "audit sample"
    assert report["audit"]["n"] == report["counts"]["test"] == int(in_audit.sum()) == 60
    assert report["counts"]["train"] == len(y) - 60  # no hash test split taken out
    assert report["test"]["n"] == 60 and np.sum(report["test"]["confusion_matrix"]["matrix"]) == 60

    # every audit label wrong: the fitted head, the selection and the candidates' scores do not move
    wrong = np.where(in_audit, (y + 1) % K, y)
    head_wrong, report_wrong = _select(X, wrong, ids, centres, audit_ids=audit, version="a1")
    probe = _clusters(50, seed=9)[0]
    np.testing.assert_allclose(head_wrong.predict_proba(probe), head.predict_proba(probe), rtol=1e-6)
    assert [c["val_score"] for c in report_wrong["candidates"]] == [c["val_score"] for c in report["candidates"]]
    assert report_wrong["head"] == report["head"]
    assert report_wrong["audit"]["accuracy"]["value"] < report["audit"]["accuracy"]["value"] - 0.5

    # ... whereas without the audit set those labels would be trained on or tested on
    _, plain = _select(X, wrong, ids, centres)
    assert plain["test_set"] == "hash split" and "audit" not in plain


def test_audit_report_has_intervals_and_says_when_it_is_too_small(labeled):
    X, y, ids, centres, audit = labeled
    _, first = _select(X[:300], y[:300], ids[:300], centres, audit_ids=audit, version="v1")
    _, report = _select(X, y, ids, centres, audit_ids=audit, version="v2", history=[first])
    audit_report = report["audit"]
    for key in ("accuracy", "macro_f1", "zero_shot_accuracy"):
        est = audit_report[key]
        assert est["n"] == 60 and est["low"] <= est["value"] <= est["high"] and est["half_width"] > 0
    recalls = audit_report["per_class_recall"]
    assert [r["label"] for r in recalls] == NAMES and sum(r["n"] for r in recalls) == 60
    assert all(r["low"] <= r["value"] <= r["high"] for r in recalls if r["n"])
    assert audit_report["accuracy"]["value"] == pytest.approx(report["test"]["accuracy"])
    assert not audit_report["enough"] and audit_report["needed"] > 60
    assert audit_report["message"].startswith("audit set too small: 60 items, accuracy")
    assert f"at about {audit_report['needed']} items" in audit_report["message"]
    # each candidate's audit accuracy is shown next to its selection score
    assert all(c["audit_accuracy"]["n"] == 60 for c in report["candidates"] if not c.get("error"))
    # the learning curve carries the audit figures of every version
    curve = report["learning_curve"]
    assert [p["version"] for p in curve] == ["v1", "v2"] and [p["audit_n"] for p in curve] == [30, 60]
    assert all(p["audit_low"] <= p["audit_accuracy"] <= p["audit_high"] for p in curve)
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_a_large_audit_set_is_enough_and_an_empty_one_says_so():
    X, y, centres = _clusters(2400, noise=0.6, seed=2)
    ids = list(range(len(y)))
    _, report = _select(X, y, ids, centres, audit_ids=ids[:1200])
    assert report["audit"]["accuracy"]["half_width"] <= 0.03 and report["audit"]["enough"]
    assert report["audit"]["message"].startswith("audit set: 1200 items")

    _, empty = _select(X[:300], y[:300], ids[:300], centres, audit_ids=[])
    assert empty["audit"]["n"] == 0 and empty["counts"]["test"] == 0 and not empty["audit"]["enough"]
    assert empty["audit"]["message"].startswith("no audit items yet")
    assert empty["counts"]["train"] == 300


def test_multiple_choice_audit_uses_exact_match():
    X, y, centres = _clusters(500, seed=3)
    rng = np.random.default_rng(3)
    Y = np.eye(K, dtype=int)[y]
    second = rng.random(len(y)) < 0.3  # some items carry a second label
    Y[second, (y[second] + 1) % K] = 1
    ids = list(range(len(y)))
    head, report = train_and_select(X, Y, ids, centres, 10.0, NAMES, True, audit_ids=ids[:100])
    audit_report = report["audit"]
    assert audit_report["accuracy_metric"] == "exact match" and audit_report["n"] == 100
    exact = (head.decisions(head.predict_proba(X[:100])) == Y[:100]).all(axis=1).mean()
    assert audit_report["accuracy"]["value"] == pytest.approx(exact) == pytest.approx(report["test"]["accuracy"])
    assert [r["n"] for r in audit_report["per_class_recall"]] == Y[:100].sum(axis=0).tolist()
    assert report["label_errors"] == [] and report["label_errors_checked"] == 0
    json.dumps(report, allow_nan=False)


# -- label errors ------------------------------------------------------------------------------------
def test_flipped_labels_are_ranked_first_with_the_true_label_suggested():
    X, y, _ = _clusters(800, noise=0.7, seed=4)
    noisy, flipped = _flip(y, 0.05, seed=4)
    ids = [f"t{i}" for i in range(len(y))]
    errors = rank_label_errors(LogisticHead(C=10.0, n_classes=K), X, noisy, ids, NAMES)
    position = {e["task_id"]: i for i, e in enumerate(errors)}
    flagged = np.array([position.get(t) is not None for t in ids])
    precision = (flagged & flipped).sum() / flagged.sum()
    recall = (flagged & flipped).sum() / flipped.sum()
    print(f"\nflagged {flagged.sum()} of {len(y)}, {flipped.sum()} flipped: "
          f"precision {precision:.2f} recall {recall:.2f}")
    # the confident joint's count is conservative on clean clusters (cleanlab's default flags 32 of 40 here)
    assert precision >= 0.8 and recall >= 0.7
    top = errors[:flipped.sum() // 2]  # the most suspicious half are all real errors
    assert all(flipped[ids.index(e["task_id"])] for e in top)
    for e in errors:
        i = ids.index(e["task_id"])
        if flipped[i]:
            assert e["given"] == NAMES[noisy[i]] and e["suggested"] == NAMES[y[i]]
        assert e["confidence"] > e["given_probability"] and e["suspicion"] > 0
    assert [e["rank"] for e in errors] == list(range(1, len(errors) + 1))
    assert [e["suspicion"] for e in errors] == sorted((e["suspicion"] for e in errors), reverse=True)


def test_clean_labels_flag_little_and_lonely_classes_are_not_judged():
    X, y, centres = _clusters(400, noise=0.5, seed=5)
    ids = list(range(len(y)))
    assert len(rank_label_errors(LogisticHead(C=10.0, n_classes=K), X, y, ids, NAMES)) <= 4
    # one item labeled "damson": no fold can learn damson without it, so it is not judged
    lonely = np.where(y == 3, 0, y)
    lonely[np.flatnonzero(y == 3)[0]] = 3
    errors = rank_label_errors(LogisticHead(C=10.0, n_classes=K), X, lonely, ids, NAMES)
    assert all(e["given"] != "damson" for e in errors)
    multi = LogisticHead(C=10.0, multiple=True, n_classes=K)
    assert rank_label_errors(multi, X, np.eye(K, dtype=int)[y], ids, NAMES) == []
    assert rank_label_errors(ZeroShotHead(centres, 10.0), X[:1], y[:1], ids[:1], NAMES) == []


def test_confident_issues_counts_the_confident_joint_and_ranks_by_suspicion():
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.4, 0.6],  # labeled 0: items 2 and 3 look like 1s
                      [0.1, 0.9], [0.2, 0.8], [0.45, 0.55]])  # labeled 1: the last is unsure, not wrong
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    ranked, suggested, score = confident_issues(proba, y, target=None)
    # thresholds: 0.575 for class 0, 0.75 for class 1; only item 2 clears class 1's, so one label is
    # wrong, and item 2 is the most suspicious (item 3 is suspicious but not confidently a 1)
    assert ranked.tolist() == [2]
    # suspicion: 3/4 of 1 - p(given) and 1/4 of p(suggested) - p(given)
    assert suggested[2] == 1 and score[2] == pytest.approx(0.75 * 0.8 + 0.25 * 0.6)
    assert score[3] == pytest.approx(0.75 * 0.6 + 0.25 * 0.2) and score[3] < score[2]
    assert confident_issues(proba, y, checkable=np.arange(7) != 2, target=None)[0].tolist() == []
    assert confident_issues(proba, y)[0].tolist() == [2]  # the held-out check vouches for it


def test_suspicion_weighs_a_label_no_class_supports_above_a_close_call_between_two():
    proba = np.array([[0.05, 0.50, 0.45],  # labeled 0: the model spreads it over two other classes
                      [0.30, 0.70, 0.00]])  # labeled 0: a close call between 0 and 1
    labels = np.array([0, 0])
    score, suggested = suspicion(proba, labels)
    assert suggested.tolist() == [1, 1]
    # margins 0.45 and 0.40 are close; self-confidence (0.95 vs 0.70) tells them apart
    assert score.tolist() == pytest.approx([0.75 * 0.95 + 0.25 * 0.45, 0.75 * 0.70 + 0.25 * 0.40])
    assert score[0] > score[1]


def test_neighbours_vote_without_their_own_label_and_the_blend_takes_them_only_when_they_explain_the_labels():
    X, y, _ = _clusters(300, noise=0.5, seed=8)
    noisy, flipped = _flip(y, 0.05, seed=8)
    votes = neighbour_proba(X, noisy, K)
    assert votes.shape == (300, K) and np.allclose(votes.sum(axis=1), 1.0)
    # a wrong label never votes for itself: its neighbours (right labels) outvote it
    assert (votes[flipped].argmax(axis=1) == y[flipped]).mean() >= 0.9
    # a bounded reference sample still gives every item its votes (the cost stays O(n x reference))
    few = neighbour_proba(X, noisy, K, reference=50)
    assert few.shape == (300, K) and (few.argmax(axis=1) == y).mean() >= 0.8
    checkable = np.ones(300, dtype=bool)
    uninformed = np.full((300, K), 1.0 / K)  # a head that knows nothing: the votes are worth taking
    assert not np.allclose(with_neighbours(uninformed, X, noisy, checkable), uninformed)
    # votes on shuffled embeddings explain nothing: the head's probabilities are kept as they are
    head = np.full((300, K), 0.1 / (K - 1))
    head[np.arange(300), noisy] = 0.9
    shuffled = X[np.random.default_rng(0).permutation(300)]
    assert np.array_equal(with_neighbours(head, shuffled, noisy, checkable), head)


def test_the_flagged_list_is_cut_where_injected_errors_say_it_stops_being_precise():
    """A weak head (it gives the true class p ~ Beta(4, 1.5): often under 0.5) and 30 wrong labels of 400
    on random items: confident learning's count flags many correct labels; the calibrated cut keeps a
    prefix of the same ranking whose precision is near the target, most suspicious first."""
    loose_hits, cut_hits, cut_sizes = [], [], []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        n, wrong = 400, rng.choice(400, 30, replace=False)
        y = rng.integers(0, 2, n)
        p_true = rng.beta(4, 1.5, n)
        proba = np.zeros((n, 2))
        proba[np.arange(n), y], proba[np.arange(n), 1 - y] = p_true, 1 - p_true
        given = y.copy()
        given[wrong] = 1 - y[wrong]
        loose = confident_issues(proba, given, target=None)[0]
        cut = confident_issues(proba, given)[0]
        assert cut.tolist() == loose[:len(cut)].tolist()  # a prefix of the same ranking
        loose_hits.append(np.isin(loose, wrong).mean())
        cut_hits += np.isin(cut, wrong).tolist()
        cut_sizes.append(len(cut))
    assert np.mean(loose_hits) < 0.75  # the confident joint's count: a quarter or more are correct labels
    # precise (0.75 measured: the bound's standard error trades a few points of it for not cutting on a lucky
    # handful), and still half the errors
    assert np.mean(cut_hits) >= 0.73 and sum(cut_hits) >= 0.4 * 8 * 30
    assert min(cut_sizes) > 0


def test_train_and_select_reports_label_errors_on_all_items_audit_included(tmp_path):
    X, y, centres = _clusters(600, noise=1.0, seed=6)
    ids = [f"task-{i}" for i in range(len(y))]
    audit = ids[::10]
    noisy, flipped = _flip(y, 0.05, seed=6)
    _, report = _select(X, noisy, ids, centres, audit_ids=audit, version="e1")
    assert report["label_errors_checked"] == len(y)
    assert report["label_errors_flagged"] == len(report["label_errors"]) > 0
    flagged_ids = {e["task_id"] for e in report["label_errors"]}
    true_ids = {t for t, f in zip(ids, flipped) if f}
    assert len(flagged_ids & true_ids) >= 0.8 * len(flagged_ids)
    assert flagged_ids & set(audit) & true_ids  # audit annotations are reviewed too

    write_report(report, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert page.index("Audit") < page.index("Summary") < page.index("Candidates")
    assert "audit set too small" in page and "Suspected label errors" in page
    assert report["label_errors"][0]["task_id"] in page
    images = page.split('src="data:image/png;base64,')[1:]
    assert len(images) == 2
    assert all(base64.b64decode(img.split('"', 1)[0])[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
