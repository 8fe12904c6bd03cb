"""One <Choices> tag's training result, typed: what the flows and the web app read of the report that
train_and_select (selection.py) returns. The whole report stays a JSON document (report.json, rendered by
report.py); code reads it through this type, not by key."""
from __future__ import annotations

from dataclasses import dataclass, field

from .audit import accuracy_headline


@dataclass(frozen=True)
class TrainingResult:
    version: str | None
    head: str | None  # the chosen head's name
    test_accuracy: float | None  # on the test set (the audit sample, once there is one)
    audit: dict | None  # the audit sample's figures with their intervals (audit.py); None before there is one
    label_errors: list[dict]  # suspected label errors (label_errors.py), most suspicious first
    report: dict = field(repr=False)  # the whole report, as written to report.json

    @property
    def accuracy(self) -> dict:
        """The accuracy with its 95% interval and whether to trust it (audit.accuracy_headline)."""
        return accuracy_headline(self.report)

    @classmethod
    def from_report(cls, report: dict) -> "TrainingResult":
        return cls(version=report.get("version"), head=report.get("head"),
                   test_accuracy=(report.get("test") or {}).get("accuracy"), audit=report.get("audit"),
                   label_errors=report.get("label_errors") or [], report=report)
