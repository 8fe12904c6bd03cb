"""Vectors + labels -> a classifier head and a verdict on it.

- heads: the candidate heads (zero-shot and the prompt-prior family; logistic and prompt-anchored for
  versions saved before it), scikit-learn estimators;
- metrics: evaluation of a fitted head on a labeled set;
- intervals: 95% intervals (Wilson for proportions, bootstrap otherwise);
- audit: the audit sample's figures with intervals, and how many items a given precision needs;
- folds: cross-validation folds that tolerate singleton classes and multi-label rows;
- label_errors: suspected label errors (confident learning on out-of-fold probabilities);
- selection: train_and_select (fit the candidates, choose by cross-validation, evaluate);
- report: report.json / report.html / figures of a trained version.

Imports nothing outside backend.learn (and no other sibling package).
"""
