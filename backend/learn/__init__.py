"""Vectors + labels -> a classifier head and a verdict on it.

- heads: the candidate heads (zero-shot, logistic, prompt-anchored), scikit-learn estimators;
- metrics: evaluation of a fitted head on a labeled set;
- selection: deterministic splits and train_and_select (choose, refit, evaluate);
- report: report.json / report.html / figures of a trained version.

Imports nothing outside backend.learn (and no other sibling package).
"""
