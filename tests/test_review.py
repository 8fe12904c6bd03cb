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


class RecordingLabelStudio:
    """The few calls publish_review makes, held in memory: which writes reached Label Studio."""

    def __init__(self):
        self.held: dict[str, int] = {}  # model_version -> predictions
        self.writes: list[str] = []

    def model_versions(self, project):
        return dict(self.held)

    def project_model_version(self, project):
        return "clip-al"

    def delete_model_version(self, project, version, shown=None):
        self.writes.append("delete")
        return self.held.pop(version, 0)

    def create_prediction(self, row):
        self.writes.append("create")
        self.held[row["model_version"]] = self.held.get(row["model_version"], 0) + 1

    def ensure_view(self, project, title, ordering, filters=None, renames=None):
        return "exists"


def test_the_review_tab_is_written_only_when_its_flags_change():
    from backend.flows.review import publish_review
    from backend.labelstudio.labelconfig import Target

    api, target, version = RecordingLabelStudio(), Target("label", "text", "text", "text", False, (), False), "st/v1-0"
    first = publish_review(api, "1", target, version, _errors(1, 2))
    assert api.writes == ["delete", "create", "create"] and first["written"] == 2
    same = publish_review(api, "1", target, version, _errors(1, 2), before=first["shows"])
    assert same["written"] == 0 and len(api.writes) == 3  # the same flags: not one write
    api.held.clear()  # someone deleted the review predictions in Label Studio: written again
    again = publish_review(api, "1", target, version, _errors(1, 2), before=first["shows"])
    assert again["written"] == 2
    changed = publish_review(api, "1", target, version, _errors(2, 3), before=again["shows"])
    assert changed["written"] == 2 and api.held == {review_version(version): 2}
