"""Deterministic assignment of customers to experiment arms.

Every customer gets a fixed point ``u`` in [0, 1) from SHA-256 of the experiment id and the
customer id. The unit interval is cut into contiguous buckets in a fixed order: the control
group first (``[0, control_share)``), then each variant in the order given, with widths
proportional to its weight. The customer's arm is the bucket that holds ``u``.

Why this layout:

* **Stable**: the same (experiment, customer) always lands in the same arm, in any process,
  on any machine and any Python version (SHA-256 of UTF-8 bytes, integer arithmetic, one
  exact division; ``hash()`` is salted per process and never used). Retries, restarts,
  replays and re-entry therefore see the same arm without consulting storage.
* **Independent across experiments**: the experiment id is part of the hashed key, so a
  customer's arm in one experiment says nothing about their arm in another.
* **Minimal movement when weights change** (the property we guarantee): a customer's point
  never moves, only the bucket edges do, so a customer changes arm only if an edge crossed
  their point. The share of customers who change arm is at most the sum of the distances the
  edges moved; with two arms it is exactly the weight that changed hands, which is the least
  any scheme can move. Changing variant weights while the control share stays the same never
  moves anyone into or out of the control group.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Mapping

# Part of the hashed key: a different scheme would reassign every running experiment, so a
# future change must come with a new version tag and keep this one for old experiments.
_SCHEME = b"cascade.assignment.v1"
# 53 bits: every value k / 2**53 is an exact double, so the point is the same on every platform.
_MANTISSA_BITS = 53
_SEED_BITS = 63

DEFAULT_CONTROL = "control"


def _digest(*parts: str) -> bytes:
    """SHA-256 of length-prefixed parts, so ("a:b", "c") and ("a", "b:c") never collide."""
    h = hashlib.sha256(_SCHEME)
    for part in parts:
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.digest()


def unit_point(experiment_id: str, customer_id: str) -> float:
    """The customer's fixed point in [0, 1) for this experiment (uniform over customers).

    Method: the first 53 bits of SHA-256 over the versioned, length-prefixed ids, divided
    by 2**53.
    """
    value = int.from_bytes(_digest(experiment_id, customer_id)[:8], "big") >> (64 - _MANTISSA_BITS)
    return value / float(1 << _MANTISSA_BITS)


def stable_seed(*parts: str) -> int:
    """A non-negative 63-bit seed derived from the given strings, the same in every process.

    Use it to seed ``numpy.random.default_rng`` for a decision that must replay identically,
    e.g. ``stable_seed(experiment_id, "bandit", str(round_number))``.
    """
    return int.from_bytes(_digest("seed", *parts)[:8], "big") >> (64 - _SEED_BITS)


def bucket_edges(
    variants: Mapping[str, float],
    control_share: float = 0.0,
    control: str = DEFAULT_CONTROL,
) -> list[tuple[str, float, float]]:
    """The arms' buckets as ``(name, low, high)`` in layout order, covering [0, 1) exactly.

    ``variants`` maps each variant name to a non-negative relative weight (they need not sum
    to 1; they share ``1 - control_share`` in proportion). The control bucket comes first
    and is present only when ``control_share > 0``. Raises ``ValueError`` naming the bad
    input: empty or duplicate-with-control names, negative or non-finite weights, weights
    that are all zero, or a control share outside [0, 1).
    """
    if not variants:
        raise ValueError("an experiment needs at least one variant")
    if not (math.isfinite(control_share) and 0.0 <= control_share < 1.0):
        raise ValueError(f"control_share must be in [0, 1), got {control_share!r}")
    if control_share > 0.0 and control in variants:
        raise ValueError(f"variant name {control!r} is reserved for the control group")
    for name, weight in variants.items():
        if not name:
            raise ValueError("variant names must be non-empty")
        if not (math.isfinite(weight) and weight >= 0.0):
            raise ValueError(f"weight of variant {name!r} must be a finite number >= 0, got {weight!r}")
    total = math.fsum(variants.values())
    if total <= 0.0:
        raise ValueError("at least one variant needs a positive weight")

    edges: list[tuple[str, float, float]] = []
    low = 0.0
    if control_share > 0.0:
        edges.append((control, 0.0, control_share))
        low = control_share
    span = 1.0 - control_share
    running = 0.0
    names = list(variants)
    for i, name in enumerate(names):
        running += variants[name]
        # The last edge is pinned to 1.0 so rounding can never leave a gap at the top.
        high = 1.0 if i == len(names) - 1 else control_share + span * (running / total)
        edges.append((name, low, high))
        low = high
    return edges


def arm_for_point(u: float, edges: list[tuple[str, float, float]]) -> str:
    """The arm whose bucket ``[low, high)`` holds ``u`` (empty buckets hold nothing)."""
    if not 0.0 <= u < 1.0:
        raise ValueError(f"point must be in [0, 1), got {u!r}")
    highs = [high for _, _, high in edges]
    return edges[bisect_right(highs, u)][0]


def assign_variant(
    experiment_id: str,
    customer_id: str,
    variants: Mapping[str, float],
    control_share: float = 0.0,
    control: str = DEFAULT_CONTROL,
) -> str:
    """The arm (a variant name, or ``control``) this customer sees in this experiment.

    For a marketer: who gets which version is decided by a fixed coin for each customer, so
    the same person always sees the same version and the split matches the weights.
    Method: ``unit_point`` located in ``bucket_edges``; see the module docstring for the
    stability and minimal-movement guarantees.
    """
    return arm_for_point(unit_point(experiment_id, customer_id), bucket_edges(variants, control_share, control))


def assign_bandit_arm(
    experiment_id: str,
    customer_id: str,
    arm_weights: Mapping[str, float],
    control_share: float = 0.0,
    control: str = DEFAULT_CONTROL,
) -> str:
    """The arm for a customer entering a bandit experiment under the current arm weights.

    ``arm_weights`` is the latest allocation (e.g. ``BanditAllocation.weights``, summing to
    1 over the variants); the control group keeps its fixed share outside the bandit, so
    the hold-out stays the same customers however the bandit moves traffic. The answer is
    deterministic for given weights, so a retried or replayed entry gets the same arm; when
    the weights change, only customers near a moved edge would get another arm, which is
    why the arm is recorded at entry and not recomputed.
    """
    total = math.fsum(arm_weights.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ValueError(f"bandit arm weights must sum to 1 (an allocation, not counts), got {total!r}")
    return assign_variant(experiment_id, customer_id, arm_weights, control_share, control)
