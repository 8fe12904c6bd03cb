"""Audit items take their share of the first positions of every batch (queue/audit_slots.py), so the share
of what annotators actually label holds at any pace: taking 1, 2, 3 or all of a batch before the next run
replaces it."""
import math

import pytest

from backend.flows.rank import audit_owed
from backend.learn.audit import effective_share
from backend.queue.audit_slots import audit_slots, place_audit
from backend.state.project_state import ProjectState


@pytest.mark.parametrize("share", [0.05, 0.1, 0.2, 0.35])
@pytest.mark.parametrize("owed", [-0.5, 0.0, 0.3, 1.0])
def test_every_prefix_holds_its_share_of_audit_items(share, owed):
    for length in (1, 3, 5, 12, 50, 200):
        slots = audit_slots(length, share, owed)
        assert slots == sorted(set(slots)) and all(0 <= s < length for s in slots)
        for prefix in range(1, length + 1):
            assert sum(s < prefix for s in slots) >= math.floor(prefix * share + 1e-9), (length, prefix)


def test_slots_come_first_when_owed_and_later_when_ahead():
    assert audit_slots(50, 0.1, owed=1.0)[0] == 0  # annotators owe an audit item: the first position
    assert audit_slots(50, 0.1, owed=0.0)[:3] == [4, 14, 24]  # quota: half an item owed -> the next one
    assert audit_slots(50, 0.1, owed=-0.5)[:3] == [9, 19, 29]  # ahead: the plain rate
    assert audit_slots(50, 0.1, owed=25.0)[:2] == [0, 4]  # a large debt (labels before the audit) is clipped
    assert audit_slots(50, 0.0) == [] and audit_slots(0, 0.1) == []


def test_a_short_batch_still_carries_an_audit_item():
    assert round(5 * 0.1) == 0
    assert audit_slots(5, 0.1, owed=-0.5) == []  # not due within 5 positions ...
    assert audit_slots(5, 0.1, owed=-0.5, at_least_one=True) == [4]  # ... yet carried, last
    assert audit_slots(5, 0.1, owed=-1.0, at_least_one=True) == []  # unless annotators are well ahead
    assert audit_slots(5, 0.1, owed=0.0) == [4] and audit_slots(3, 0.1, owed=0.6) == [0]


def test_place_audit_puts_the_audit_items_at_their_slots():
    picked, audit = [11, 12, 13, 14, 15, 16], [91, 92, 93]
    order = place_audit(picked, audit, [0, 3])
    assert order == [91, 11, 12, 92, 13, 14, 15, 16]  # the third audit item waits for a later batch
    assert place_audit([11, 12], [91, 92], [1, 6]) == [11, 91, 12, 92]  # too few picks: audit items follow
    assert place_audit([11, 91, 12], [91, 92], [0]) == [92, 11, 91, 12]  # one already picked is not doubled


def _simulate(tmp_path, batch: int, share: float, take: int, labels: int) -> tuple[int, int]:
    """An annotator who labels the first ``take`` tasks of every batch before the next run replaces it;
    next_batch's audit logic with a real ProjectState. Returns (audit items labeled, labels)."""
    state = ProjectState(tmp_path, f"pace-{batch}-{take}")
    labeled, drawn, fresh = set(), set(), iter(range(1_000_000, 2_000_000))
    queue_ids = iter(range(1, 1_000_000))
    while len(labeled) < labels:
        audited = len(drawn & labeled)
        slots = audit_slots(batch, share, audit_owed(state, len(labeled), audited, share, True), at_least_one=True)
        audit = sorted(drawn - labeled)[:len(slots)]
        audit += [next(fresh) for _ in range(len(slots) - len(audit))]
        drawn |= set(audit)
        order = place_audit([next(queue_ids) for _ in range(batch - len(audit))], audit, slots)
        labeled |= set(order[:take])
    return len(drawn & labeled), len(labeled)


@pytest.mark.parametrize("batch, take", [(50, 1), (50, 2), (50, 3), (50, 7), (50, 50), (12, 3), (12, 12), (5, 2), (5, 5), (3, 3)])
def test_the_audit_share_holds_at_any_pace(tmp_path, batch, take):
    audited, labels = _simulate(tmp_path, batch, 0.1, take, 150)
    assert labels >= 150
    assert 0.08 <= audited / labels <= 0.12, (audited, labels)  # 15 +- 3 audit items in 150 labels


def test_evenly_spread_draws_would_miss_the_share_the_slots_keep(tmp_path):
    """The issue's failure: 5 draws spread through a 50-task batch, annotators taking 3 per run, see none."""
    spread = [int((j + 0.5) * 50 / 5) for j in range(5)]  # 5, 15, 25, 35, 45: what issue 13 did
    assert not [s for s in spread if s < 3]
    audited, labels = _simulate(tmp_path, 50, 0.1, 3, 150)
    assert audited >= 12 and labels == 150


def test_owed_starts_at_the_first_draw_and_pauses_while_the_audit_does_not_draw(tmp_path):
    state = ProjectState(tmp_path, "owed")
    assert audit_owed(state, 400, 0, 0.1, True) == 0.0  # labels imported before the audit: nothing owed
    assert audit_owed(state, 430, 1, 0.1, True) == pytest.approx(2.0)
    assert audit_owed(state, 500, 5, 0.1, False) == 0.0  # not drawing: the origin follows
    assert audit_owed(state, 520, 5, 0.1, True) == pytest.approx(2.0)


def test_effective_share_says_it_in_words():
    assert effective_share(15, 150, 0.1)["text"] == "15 audit items of 150 labels, 10.0%"
    assert effective_share(0, 0, 0.1)["share"] is None
