"""The cloud's checks on the answers of a round: what it can see of each answer, checked before anything is summed.

A transport (`ecos_pl.flower.FlowerExchange`) hands every reply it received to `screen_answers`, which keeps
the answers that

    parse as the kind expected (a transport drops what does not parse before this),
    have one value per centroid (`R`) or one label per proxy sample (`B`),
    answer *these* centroids (the reply's tag is `answer_tag(message)`: not another compression, not another φ),
    answer *this* round (the round number the cloud sent, echoed by the device),
    are the only answer of their node (a node that answers twice has both answers dropped: which one is honest?),
    are not a byte-for-byte copy of another node's noisy answer (a replay; exact counts may coincide honestly),

and drops each other one with a reason; the caller logs one warning per dropped node and goes on while at
least `min_answers` remain. None of this stops a device that lies within the format (a forged count): that is
bounded by the device's own bound and the cloud's cap (docs/flower.md, "Threat model").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ecos_pl.protocol.messages import CentroidsMessage, ProxyFeaturesMessage, ScoresMessage, answer_tag


@dataclass(frozen=True)
class Answer:
    """One reply as the transport received it: the answering node, the client index it claims, the round it echoes."""

    node: int
    message: object
    client: int | None = None
    round: int | None = None


def _length(request, answer) -> tuple[int, int, str]:
    if isinstance(request, CentroidsMessage):
        return answer.n_centroids, request.n_centroids, "scores for R={} centroids"
    if isinstance(request, ProxyFeaturesMessage):
        return answer.n_samples, request.n_samples, "labels for B={} proxy samples"
    return 0, 0, ""


def why_dropped(request, answer: Answer, round_id: int | None) -> str | None:
    """Why this one answer cannot be used for `request` in round `round_id` (None: it can)."""
    have, want, what = _length(request, answer.message)
    if have != want:
        return f"{have} {what.format(want)}"
    tag = getattr(answer.message, "tag", None)
    if tag is not None and tag != answer_tag(request):
        return f"it answers other centroids or another φ (tag {tag.hex()}, expected {answer_tag(request).hex()}): stale or misrouted"
    if round_id is not None and answer.round is not None and answer.round != round_id:
        return f"it answers round {answer.round}, not round {round_id}: stale"
    return None


def _content_key(message) -> str | None:
    """A noisy answer's content (a copy of one is a replay); None for exact counts, which honest devices may share."""
    if isinstance(message, ScoresMessage) and message.epsilon is None:
        return None
    return hashlib.sha256(message.to_bytes()).hexdigest()


def screen_answers(request, answers: list[Answer], round_id: int | None = None) -> tuple[list[Answer], dict[int, str]]:
    """(the answers kept, in the order received; {node: why} for every node whose answer was dropped)."""
    dropped: dict[int, str] = {}
    per_node: dict[int, int] = {}
    for a in answers:
        per_node[a.node] = per_node.get(a.node, 0) + 1
    kept, seen = [], {}
    for a in answers:
        if per_node[a.node] > 1:
            dropped[a.node] = f"{per_node[a.node]} answers from the same node (one per node)"
            continue
        why = why_dropped(request, a, round_id)
        if why is None and (key := _content_key(a.message)) is not None:
            if key in seen:
                why = f"the same bytes as node {seen[key]}'s answer (a replay)"
            else:
                seen[key] = a.node
        if why is not None:
            dropped[a.node] = why
            continue
        kept.append(a)
    return kept, dropped
