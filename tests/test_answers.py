"""The cloud's checks on a round's answers (issue 29, item 4): a malformed, stale or repeated answer is dropped with a
warning and the round goes on while min_answers remain."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ecos_pl.protocol.answers import Answer, screen_answers
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.messages import CentroidsMessage, ScoresMessage, answer_tag

R = 8


def _centroids(seed=0) -> CentroidsMessage:
    c = np.random.default_rng(seed).normal(size=(R, 4))
    return CentroidsMessage((c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32))


def _scores(message, value=1.0, n=R, epsilon=0.58, tag="right") -> ScoresMessage:
    tag = answer_tag(message) if tag == "right" else tag
    return ScoresMessage(np.full(n, value, dtype=np.float32), epsilon, tag=tag)


def test_screen_answers_keeps_good_answers_and_says_why_each_other_is_dropped():
    message, other = _centroids(0), _centroids(1)
    answers = [
        Answer(1, _scores(message, 1.0), 0, 0),
        Answer(2, _scores(message, 2.0, n=R - 1), 1, 0),  # 7 scores for R = 8
        Answer(3, _scores(message, 3.0, tag=answer_tag(other)), 2, 0),  # for other centroids
        Answer(4, _scores(message, 4.0), 3, 1),  # echoes another round
        Answer(5, _scores(message, 5.0), 4, 0), Answer(5, _scores(message, 5.5), 4, 0),  # twice
        Answer(6, _scores(message, 1.0), 5, 0),  # node 1's noisy answer, byte for byte
        Answer(7, _scores(message, 7.0, tag=None), 6, None),  # untagged (a program without tags): kept
    ]
    kept, dropped = screen_answers(message, answers, round_id=0)
    assert [a.node for a in kept] == [1, 7]
    assert dropped[2] == "7 scores for R=8 centroids"
    assert "answers other centroids or another φ" in dropped[3] and "stale" in dropped[3]
    assert dropped[4] == "it answers round 1, not round 0: stale"
    assert dropped[5] == "2 answers from the same node (one per node)"
    assert dropped[6] == "the same bytes as node 1's answer (a replay)"
    # exact counts may coincide between honest devices: not a replay
    same = [Answer(1, _scores(message, 2.0, epsilon=None), 0, 0), Answer(2, _scores(message, 2.0, epsilon=None), 1, 0)]
    assert [a.node for a in screen_answers(message, same, 0)[0]] == [1, 2]


@pytest.fixture
def fake_run(monkeypatch):
    pytest.importorskip("flwr", reason="the flower extra is not installed (uv sync --extra flower)")
    from flower_fakes import fake_task_identity

    fake_task_identity(monkeypatch)


class _Grid:
    """Nodes whose replies come from `answer(node, message, round)`, a list of replies each (several: a node answering
    twice)."""

    def __init__(self, nodes, answer):
        self.nodes, self.answer = nodes, answer

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        from ecos_pl.flower.exchange import round_of

        return [r for m in messages for r in self.answer(m.metadata.dst_node_id, m, round_of(m.content))]


def test_a_flower_round_drops_malformed_stale_and_repeated_answers_and_finishes(caplog, fake_run):
    from ecos_pl.flower import FlowerExchange, encode
    from ecos_pl.protocol.parties import ECOSClient
    from flower_fakes import Reply as _Reply

    message = _centroids()

    def answer(node, m, round_id):
        # a fresh device each round: a device spends its whole budget on one answer (its ledger refuses a second);
        # this test is about what the cloud screens out
        device = ECOSClient(np.random.default_rng(node).normal(size=(30, 4)).astype(np.float32), epsilon=0.58)
        good = device.handle(message)
        if node == 2:  # 7 scores for R = 8: aborted the whole round before
            return [_Reply(node, encode(ScoresMessage(good.scores[:-1], 0.58, tag=good.tag), client=1, round=round_id))]
        if node == 3:  # scores tagged for other centroids (stale)
            return [_Reply(node, encode(_scores(_centroids(9), 2.0), client=2, round=round_id))]
        if node == 4:  # an answer from an earlier round
            return [_Reply(node, encode(good, client=3, round=round_id - 1))]
        if node == 5:  # answers twice: was logged "dropped" yet counted
            return [_Reply(node, encode(good, client=4, round=round_id)), _Reply(node, encode(good, client=4, round=round_id))]
        if node == 6:  # replays node 1's answer of this round
            return [_Reply(node, encode(_replayed[-1], client=5, round=round_id))]
        reply = _Reply(node, encode(good, client=node - 1, round=round_id))
        if node == 1:
            _replayed.append(good)
        return [reply]

    _replayed: list = []
    exchange = FlowerExchange(_Grid([1, 2, 3, 4, 5, 6, 7], answer), min_answers=2)
    with caplog.at_level(logging.WARNING):
        exchange.send_and_receive(message)  # round 0
        got = exchange.send_and_receive(message)  # round 1: the same, and the round still finishes
    assert len(got) == 2 and exchange.rounds[-1].n_clients == 2
    dropped = exchange.dropped[-1]
    assert sorted(dropped) == [2, 3, 4, 5, 6]
    assert dropped[2] == "7 scores for R=8 centroids" and "answers round 0, not round 1" in dropped[4]
    assert "one per node" in dropped[5] and "replay" in dropped[6] and "stale" in dropped[3]
    assert caplog.text.count("the round goes on without it") == 10
    # the kept answers select as usual
    from ecos_pl.protocol.parties import ECOSCloud

    cloud = ECOSCloud(np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32), R, seed=0)
    cloud.compress()
    assert len(cloud.select([ScoresMessage(a.scores) for a in got], 20)) == 20
    strict = FlowerExchange(_Grid([1, 2, 3, 4, 5, 6, 7], answer), min_answers=3)
    with pytest.raises(ECOSInputError, match=r"only 2 of 7 clients answered .*min_answers=3"):
        strict.send_and_receive(message)
