"""ECOS over Flower (`uv sync --extra flower`): the simulation picks the in-process pipeline's proxy set."""

import json
import logging
import os

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the flower extra is not installed (uv sync --extra flower)")

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ecos_pl.protocol.errors import ECOSInputError  # noqa: E402
from ecos_pl.protocol.messages import CentroidsMessage, ScoresMessage  # noqa: E402
from ecos_pl.protocol.samplers import ECOSSampler  # noqa: E402
from ecos_pl.protocol.settings import Clustering, ScorePrivacy  # noqa: E402

#: the lightest Ray settings: one CPU for the whole simulation, no dashboard, one actor at a time
BACKEND = {"init_args": {"num_cpus": 1, "include_dashboard": False, "log_to_driver": False},
           "client_resources": {"num_cpus": 1, "num_gpus": 0.0}}


def _pipeline(tmp_path, clients, epsilon):
    from ecos_pl.data.digits_lite import DigitsLite
    from ecos_pl.phi import PCAPixels
    from ecos_pl.pipeline import ProtocolPipeline

    return ProtocolPipeline(
        DigitsLite(seed=1, client_domain="photo", cache_dir=str(tmp_path / "data")), PCAPixels(n_components=16, seed=1),
        ECOSSampler(Clustering(n_centroids=12)), budget=60, seed=3, score_privacy=ScorePrivacy(epsilon=epsilon),
        clients=clients,
    )


def test_flower_simulation_selects_the_in_process_proxy_set(tmp_path, monkeypatch):
    from flwr.simulation import run_simulation

    from ecos_pl.flower import simulation_apps

    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    pipeline = _pipeline(tmp_path, 3, epsilon=4.0)  # noisy scores: each client's seed must match too
    selection, report = pipeline.select()
    server, client = simulation_apps(pipeline, tmp_path / "flower")
    run_simulation(server_app=server, client_app=client, num_supernodes=3, backend_config=BACKEND)
    summary = json.loads((tmp_path / "flower" / "proxy_set.json").read_text())
    assert summary["proxy_set_sha1"] == report.proxy_set_sha1
    np.testing.assert_array_equal(np.load(tmp_path / "flower" / "proxy_set.npz")["indices"], selection.indices)
    assert summary["bytes_up"] == report.bytes_up == 3 * (4 * 12 + 32)


class _Reply:
    def __init__(self, node, content=None, error=None):
        from flwr.app import Metadata

        self.metadata = Metadata(run_id=0, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="",
                                 group_id="", created_at=0.0, ttl=60.0, message_type="query.ecos")
        self.content, self._error = content, error

    def has_error(self):
        return self._error is not None

    @property
    def error(self):
        return self._error


class _Grid:
    """A grid whose nodes answer from a function (node -> reply or None for no answer)."""

    def __init__(self, nodes, answer):
        self.nodes, self.answer = nodes, answer

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        replies = [self.answer(m.metadata.dst_node_id, m) for m in messages]
        return [r for r in replies if r is not None]


def test_flower_exchange_drops_malformed_and_missing_answers(caplog):
    from flwr.app import Error

    from ecos_pl.flower import FlowerExchange, encode

    scores = ScoresMessage(np.ones(4, dtype=np.float32))

    def answer(node, message):
        if node == 1:
            return _Reply(node, encode(scores, client=0))
        if node == 2:
            return _Reply(node, encode(CentroidsMessage(np.eye(4, dtype=np.float32)), client=1))  # wrong kind
        if node == 3:
            return _Reply(node, error=Error(code=1, reason="boom"))
        return None  # node 4: never answers

    exchange = FlowerExchange(_Grid([1, 2, 3, 4], answer), min_answers=1)
    with caplog.at_level(logging.WARNING):
        (got,) = exchange.send_and_receive(CentroidsMessage(np.eye(4, dtype=np.float32)))
    np.testing.assert_array_equal(got.scores, scores.scores)
    assert exchange.rounds[-1].n_clients == 1 and sorted(exchange.dropped[-1]) == [2, 3, 4]
    assert caplog.text.count("dropped the answer of node") == 3
    strict = FlowerExchange(_Grid([1, 2, 3, 4], answer), min_answers=2)
    with pytest.raises(ECOSInputError, match=r"only 1 of 4 clients answered .*min_answers=2"):
        strict.send_and_receive(CentroidsMessage(np.eye(4, dtype=np.float32)))
