"""The audit set: labeled items drawn uniformly at random from the pool and never trained on.

Active learning chooses the hardest items, so a test split taken from them understates accuracy
and is small; the audit sample is the honest test set. Every number here comes with its 95%
interval, and the summary says plainly when the sample is still too small to trust.

- audit_size_for(half_width, accuracy): items needed for a Wilson interval of +/- half_width;
- audit_wanted(audit, half_width): whether a report's audit set still needs more items;
- audit_summary(head, zero_shot, X, Y, label_names, multiple): the report's "audit" section;
- effective_share(audit_labeled, labels, share): how many of the labels are audit items, in words;
- accuracy_headline(report): a report's accuracy with its interval and its "too small" message, for
  every place that shows one (report page, /reports, /status).
"""
from __future__ import annotations

import numpy as np

from .intervals import Estimate, bootstrap, proportion, wilson_interval
from .metrics import indicator

TARGET_HALF_WIDTH = 0.03  # +/- 3 accuracy points: enough to tell versions a few points apart


def _wilson_half_width(accuracy: float, n: int) -> float:
    low, high = wilson_interval(accuracy * n, n)
    return (high - low) / 2


def audit_size_for(half_width: float = TARGET_HALF_WIDTH, accuracy: float = 0.5) -> int:
    """Smallest number of audit items whose 95% Wilson interval around accuracy is at most +/- half_width.

    accuracy 0.5 is the worst case (about 1,070 items for +/- 3 points); near 0 or 1 fewer suffice.
    """
    if not 0 < half_width < 0.5:
        raise ValueError(f"half_width must be in (0, 0.5), not {half_width}")
    accuracy = float(np.clip(accuracy, 0.0, 1.0))
    high = 1
    while _wilson_half_width(accuracy, high) > half_width:  # the half-width shrinks as n grows
        high *= 2
    low = high // 2
    while high - low > 1:
        mid = (low + high) // 2
        if _wilson_half_width(accuracy, mid) > half_width:
            low = mid
        else:
            high = mid
    return high


def audit_wanted(audit: dict | None, half_width: float = TARGET_HALF_WIDTH) -> bool:
    """Whether to keep drawing audit items: until a report's audit accuracy (its "audit" section) is
    known to +/- half_width at the accuracy measured so far."""
    accuracy = ((audit or {}).get("accuracy") or {}).get("value")
    if accuracy is None:
        return True
    return int(audit.get("n") or 0) < audit_size_for(half_width, float(accuracy))


def _macro_f1(true: np.ndarray, pred: np.ndarray) -> float:
    """Macro F1 over the classes present in true (as metrics.evaluate: absent classes do not count)."""
    tp = (true & pred).sum(axis=0)
    wrong = (true ^ pred).sum(axis=0)  # false positives + false negatives
    present = true.any(axis=0)
    if not present.any():
        return 0.0
    denom = 2 * tp + wrong
    f1 = np.divide(2 * tp, denom, out=np.zeros(len(tp)), where=denom > 0)
    return float(f1[present].mean())


def _message(n: int, accuracy: Estimate, enough: bool, needed: int) -> str:
    if n == 0:
        return (f"no audit items yet: a 95% interval of +/-{TARGET_HALF_WIDTH * 100:g} points on accuracy "
                f"needs up to about {needed} items")
    figures = f"{n} items, accuracy {accuracy.value:.2f} (95% CI {accuracy.low:.2f}-{accuracy.high:.2f})"
    if enough:
        return f"audit set: {figures}"
    return (f"audit set too small: {figures}; the interval narrows to +/-{TARGET_HALF_WIDTH * 100:g} points "
            f"at about {needed} items")


def audit_summary(head, zero_shot, X: np.ndarray, Y: np.ndarray, label_names: list[str], multiple: bool,
                  seed: int = 0) -> dict:
    """Accuracy, macro-F1, per-class recall (each with a 95% interval) of a fitted head on the audit
    items, the zero-shot head's accuracy on the same items, and whether the sample is big enough.

    Multiple choice: accuracy is exact match (every label right), recall is per class.
    """
    K = len(label_names)
    true = indicator(Y, K, multiple).astype(bool)
    n = len(true)

    pred = np.zeros((0, K), dtype=bool)
    if n:
        proba = head.predict_proba(X)
        pred = (head.decisions(proba) if multiple else indicator(proba.argmax(axis=1), K, False)).astype(bool)
    exact = int((pred == true).all(axis=1).sum())
    accuracy = proportion(exact, n)
    macro_f1 = (bootstrap(lambda idx: _macro_f1(true[idx], pred[idx]), n, seed=seed)
                if true.any() else Estimate(None, None, None, n))
    recall = [{"label": name, **proportion(int((true[:, k] & pred[:, k]).sum()), int(true[:, k].sum())).as_dict()}
              for k, name in enumerate(label_names)]
    enough = n > 0 and accuracy.half_width <= TARGET_HALF_WIDTH
    needed = audit_size_for(TARGET_HALF_WIDTH, 0.5 if n == 0 else accuracy.value)
    return {
        "n": n,
        "accuracy": accuracy.as_dict(),
        "accuracy_metric": "exact match" if multiple else "accuracy",
        "macro_f1": macro_f1.as_dict(),
        "per_class_recall": recall,
        "zero_shot_accuracy": accuracy_on(zero_shot, X, Y, multiple),
        "target_half_width": TARGET_HALF_WIDTH,
        "enough": bool(enough),
        "needed": needed,
        "message": _message(n, accuracy, enough, needed),
    }


def accuracy_on(head, X: np.ndarray, Y: np.ndarray, multiple: bool) -> dict:
    """A head's accuracy (exact match for multiple choice) on labeled items, with its 95% interval."""
    if len(X) == 0:
        return proportion(0, 0).as_dict()
    proba = head.predict_proba(X)
    if multiple:
        correct = (head.decisions(proba) == np.asarray(Y).reshape(proba.shape)).all(axis=1)
    else:
        correct = proba.argmax(axis=1) == np.asarray(Y)
    return proportion(int(correct.sum()), len(X)).as_dict()


def effective_share(audit_labeled: int, labels: int, share: float | None = None) -> dict:
    """How many of the labels are audit items: {"audit": n, "labels": m, "share": n/m, "target": share,
    "text": "n audit items of m labels, p%"}."""
    value = audit_labeled / labels if labels else None
    percent = "–" if value is None else f"{value * 100:.1f}%"
    return {"audit": int(audit_labeled), "labels": int(labels), "share": None if value is None else round(value, 4),
            "target": share, "text": f"{audit_labeled} audit items of {labels} labels, {percent}"}


def accuracy_headline(report: dict | None) -> dict:
    """The accuracy a report stands for, never without its 95% interval and a message saying whether to
    trust it: the audit sample's (value, low, high, n, enough, message) or, without an audit set, the
    hash split's, marked biased."""
    report = report or {}
    audit = report.get("audit")
    if isinstance(audit, dict) and isinstance(audit.get("accuracy"), dict):
        acc = audit["accuracy"]
        return {"value": acc.get("value"), "low": acc.get("low"), "high": acc.get("high"), "n": acc.get("n"),
                "test_set": "audit sample", "enough": bool(audit.get("enough")), "message": audit.get("message")}
    test = report.get("test") or {}
    n = int(test.get("n") or 0)
    value = test.get("accuracy")
    est = proportion(round(value * n), n) if value is not None and n else proportion(0, 0)
    message = ("no test items yet" if not n else
               f"hash split of {n} actively chosen items: biased (usually low), too small to trust on its own "
               f"(95% CI {est.low:.2f}-{est.high:.2f})")
    return {"value": est.value, "low": est.low, "high": est.high, "n": n, "test_set": "hash split", "enough": False,
            "message": message}
