"""Which suspected label errors the review tab shows (flows/review.py): a flag stays until someone
re-annotates the task, and a reviewed label is not flagged again while it stays what they left."""
from backend.flows.review import REVIEW_MAX, review_version, to_review
from backend.state.annotations import LabeledTask
from backend.state.project_state import ProjectState


def _row(task, label, event_at=0.0):
    return LabeledTask(task, {"text": str(task)}, {"label": [label]}, False, event_at)


def _errors(*tasks):
    return [{"task_id": t, "given": "ham", "suggested": "spam", "confidence": 0.9, "suspicion": 0.8} for t in tasks]


def test_a_reviewed_label_is_not_flagged_again_until_it_changes(tmp_path):
    state = ProjectState(tmp_path, "5")
    rows = [_row(1, "ham"), _row(2, "ham"), _row(3, "spam")]
    assert [e["task_id"] for e in to_review(state, rows, _errors(1, 2, 99))] == [1, 2]  # 99: not labeled
    # a reviewer re-submits task 1 unchanged (a webhook after the flag): confirmed, no longer flagged
    rows = [_row(1, "ham", event_at=2e9), _row(2, "ham"), _row(3, "spam")]
    assert [e["task_id"] for e in to_review(state, rows, _errors(1, 2))] == [2]
    assert [e["task_id"] for e in to_review(state, rows, _errors(1, 2))] == [2]
    # its label changes later: it may be flagged again
    rows = [_row(1, "spam", event_at=2e9), _row(2, "ham"), _row(3, "spam")]
    assert [e["task_id"] for e in to_review(state, rows, _errors(1, 2))] == [1, 2]


def test_the_tab_shows_at_most_review_max_and_is_named_by_the_encoders(tmp_path):
    rows = [_row(t, "ham") for t in range(REVIEW_MAX + 10)]
    assert len(to_review(ProjectState(tmp_path, "6"), rows, _errors(*range(REVIEW_MAX + 10)))) == REVIEW_MAX
    assert review_version("st-minilm/v3-0123456789") == "st-minilm/label-review"
