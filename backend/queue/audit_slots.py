"""Where the audit items go in a batch, so that the configured share of what annotators actually label is
audit items, whatever their pace.

A training run replaces the batch every few labels, so annotators mostly take a batch's first positions:
audit items spread evenly through a 50-task batch are mostly never reached (a share of 0.1 became ~3%).
The audit items therefore take their share of the *first* positions, in two ways at once (each slot is
the earlier of the two):

- at the audit share's rate from position 0: any prefix of length L holds at least floor(L x share)
  audit items (while enough are pending);
- as a running quota (a sigma-delta modulator): ``owed`` = share x labels since the audit started -
  audit items labeled since; the next audit item comes as soon as annotators owe half of one. A pace
  that takes 2 labels per batch still gets its share, and being ahead delays the next one.

``owed`` is clipped to [-0.5, 1]: labels made while the audit was not drawing, or imported with the
project, never start a burst of audit items (at most the first position of one batch).

- audit_slots(length, share, owed): the positions of the audit items in a batch of ``length``;
- place_audit(picked, audit, slots): the batch in order, audit items at their slots.
"""
from __future__ import annotations

import math

OWED_RANGE = (-0.5, 1.0)


def audit_slots(length: int, share: float, owed: float = 0.0, at_least_one: bool = False) -> list[int]:
    """Increasing positions (0-based) of the audit items in a batch of ``length``. ``at_least_one``: a
    batch too short to reach its next slot (round(5 x 0.1) = 0) still carries one audit item, last, unless
    the annotators are already ahead by more than the batch's share (so that taking whole short batches
    still labels the share, not one audit item per batch)."""
    if length <= 0 or share <= 0:
        return []
    carry = at_least_one and owed >= -share * length
    owed = min(max(float(owed), OWED_RANGE[0]), OWED_RANGE[1])
    slots: list[int] = []
    j = 0
    while True:
        by_rate = math.ceil((j + 1) / share - 1e-9) - 1
        by_quota = math.ceil((j + 0.5 - owed) / share - 1e-9) - 1
        slot = max(min(by_rate, by_quota), slots[-1] + 1 if slots else 0)
        if slot >= length:
            break
        slots.append(slot)
        j += 1
    if not slots and carry:
        slots = [length - 1]
    return slots


def place_audit(picked: list[int], audit: list[int], slots: list[int]) -> list[int]:
    """The batch in order: ``audit`` items (those not among ``picked``) at ``slots``, the queue's picks in
    order around them. Audit items beyond the slots given are left out (they wait for a later batch)."""
    chosen = set(picked)
    audit = [t for t in audit if t not in chosen][:len(slots)]
    order, queue, audit_iter = [], iter(picked), iter(audit)
    taken = set(slots[:len(audit)])
    for position in range(len(picked) + len(audit)):
        item = next(audit_iter) if position in taken else next(queue, None)
        if item is None:  # fewer picks than the slots assume: the remaining audit items follow
            order.extend(audit_iter)
            break
        order.append(item)
    return order
