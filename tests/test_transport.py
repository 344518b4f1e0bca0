"""One strategy, any transport: the driver's rounds, and the same proxy set (and labels) in process, over the programs'
message files and over Flower's simulation."""

import numpy as np
import pytest

from ecos_pl.protocol import ECOSClient, driver
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.exchange import InProcessExchange
from ecos_pl.protocol.messages import CentroidsMessage, ScoresMessage, parse_message
from ecos_pl.protocol.samplers import ECOSSampler, OracleCentralSampler
from ecos_pl.protocol.settings import Clustering, Labelling, ScorePrivacy
from ecos_pl.protocol.transport import Files, FilesExchange, InProcess


class Rounds(driver.Strategy):
    """A strategy that asks `n` rounds, each with the previous round's summed scores as its centroids' first entry."""

    def __init__(self, n):
        self.n = n

    def configure(self, *, dim):
        return CentroidsMessage(np.eye(dim, dtype=np.float32)), {"left": self.n - 1, "seen": []}

    def aggregate(self, state, answers):
        total = np.sum([a.scores for a in answers], axis=0)
        state["seen"].append((len(answers), answers.cost.kind, total))
        if state["left"] == 0:
            return state["seen"]
        state["left"] -= 1
        return driver.Ask(CentroidsMessage(np.eye(len(total), dtype=np.float32)), state)


def test_driver_runs_as_many_rounds_as_the_strategy_asks(mixture):
    clients = [ECOSClient(np.eye(4, dtype=np.float32)[[i]], epsilon=None) for i in range(3)]
    exchange = InProcessExchange(clients)
    seen = driver.run(Rounds(3), exchange, dim=4)
    assert len(seen) == 3 and len(exchange.rounds) == 3
    for n, kind, total in seen:
        assert (n, kind) == (3, "CentroidsMessage")
        np.testing.assert_array_equal(total, [1, 1, 1, 0])  # each client votes for its own centroid


def test_driver_refuses_a_strategy_that_never_ends_and_a_message_without_exchange(monkeypatch):
    monkeypatch.setattr(driver, "MAX_ROUNDS", 5)
    exchange = InProcessExchange([ECOSClient(np.eye(4, dtype=np.float32)[:1], epsilon=None)])
    with pytest.raises(ECOSInputError, match=r"^Rounds asked for more than 5 rounds; a strategy must end\.$"):
        driver.run(Rounds(10), exchange, dim=4)
    with pytest.raises(ECOSInputError, match=r"^exchange is None, but Rounds sends the clients a CentroidsMessage"):
        driver.run(Rounds(1), None, dim=4)


def test_files_exchange_carries_the_programs_message_files(tmp_path, mixture):
    client = ECOSClient(mixture["client"], epsilon=None, seed=0)
    sampler = ECOSSampler(Clustering(n_centroids=20))
    exchange = FilesExchange([client], tmp_path)
    via_files = sampler.sample(mixture["pool"], exchange, 100, seed=0)
    in_process = sampler.sample(mixture["pool"], client, 100, seed=0)
    np.testing.assert_array_equal(via_files.indices, in_process.indices)
    down = parse_message((tmp_path / "round-0" / "centroids.ecos").read_bytes(), CentroidsMessage)
    up = parse_message((tmp_path / "round-0" / "client-0" / "scores.ecos").read_bytes(), ScoresMessage)
    assert down.n_centroids == 20 and up.nbytes == via_files.bytes_up == 4 * 20 + 32
    assert (via_files.bytes_down, via_files.bytes_up) == (in_process.bytes_down, in_process.bytes_up)
    with pytest.raises(ECOSInputError, match=r"^transport=files carries the programs' messages, not a FeaturesRequest"):
        OracleCentralSampler().sample(mixture["pool"], FilesExchange([client], tmp_path / "oracle"), 50, seed=0)
    with pytest.raises(ECOSInputError, match=r"^folder is None; a FilesExchange needs"):
        FilesExchange([client])


def _pipeline(tmp_path, transport, clients=3, noise="local"):
    from ecos_pl.data.digits_lite import DigitsLite
    from ecos_pl.phi import HOGFeatures, PCAPixels
    from ecos_pl.pipeline import ProtocolPipeline
    from ecos_pl.protocol.labels import ClientKNNLabels

    return ProtocolPipeline(
        DigitsLite(seed=1, client_domain="photo", cache_dir=str(tmp_path / "data")), PCAPixels(n_components=16, seed=1),
        ECOSSampler(Clustering(n_centroids=12)), budget=60, seed=3, score_privacy=ScorePrivacy(epsilon=4.0, noise=noise),
        proxy_labels=ClientKNNLabels(HOGFeatures(n_components=16, seed=1), Labelling(k=5, sigma=1.0, sampling_rate=0.5)),
        clients=clients, transport=transport,
    )


def _select_and_label(pipeline):
    selection, report = pipeline.select()
    targets, labels = pipeline.label(selection)
    return report, labels


def test_files_transport_gives_the_in_process_proxy_set_and_labels(tmp_path):
    report, labels = _select_and_label(_pipeline(tmp_path, InProcess()))
    kept = tmp_path / "messages"
    files_report, files_labels = _select_and_label(_pipeline(tmp_path, Files(str(kept))))
    assert files_report.proxy_set_sha1 == report.proxy_set_sha1
    assert files_labels["proxy_targets_sha1"] == labels["proxy_targets_sha1"]
    assert (files_report.bytes_down, files_report.bytes_up) == (report.bytes_down, report.bytes_up)
    assert files_labels["label_bytes_up"] == labels["label_bytes_up"] == 3 * (2 * 60 + 32)
    # each strategy's rounds in a folder of its own: the selection's, then the label round's
    assert sorted(p.name for p in (kept / "ecos" / "round-0").iterdir()) == ["centroids.ecos", "client-0", "client-1", "client-2"]
    assert sorted(p.name for p in (kept / "client_knn" / "round-0").iterdir()) == ["client-0", "client-1", "client-2",
                                                                                   "proxy_features.ecos"]
    assert (kept / "client_knn" / "round-0" / "client-2" / "labels.ecos").stat().st_size == 2 * 60 + 32


def test_train_py_transport_files_gives_the_in_process_proxy_set_and_labels(tiny_run):
    args = ("scenario=pseudo_label", "sampler=ecos", "clients=2", "callbacks=none", "save_outputs=false")
    inprocess = tiny_run(*args).results
    files = tiny_run(*args, "transport=files", "datamodule.pipeline.reuse_selection=false").results
    assert files["selection_reused"] is False
    for key in ("proxy_set_sha1", "proxy_targets_sha1", "bytes_up", "label_bytes_up"):
        assert files[key] == inprocess[key], key


def test_flower_transport_gives_the_in_process_proxy_set_and_labels(tmp_path, monkeypatch):
    pytest.importorskip("flwr", reason="the flower extra is not installed (uv sync --extra flower)")
    from ecos_pl.flower.transport import FlowerSimulation

    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    report, labels = _select_and_label(_pipeline(tmp_path, InProcess()))
    flower = FlowerSimulation(num_cpus=1, timeout=150.0, round_timeout=60.0)  # each simulation takes 10-30 s on 2 cores
    flower_report, flower_labels = _select_and_label(_pipeline(tmp_path, flower))
    assert flower_report.proxy_set_sha1 == report.proxy_set_sha1
    assert flower_labels["proxy_targets_sha1"] == labels["proxy_targets_sha1"]
    assert flower_report.bytes_up == report.bytes_up == 3 * (4 * 12 + 32)


def test_flower_transport_sums_distributed_shares_by_secagg_to_the_in_process_secure_sum(tmp_path, monkeypatch):
    """client.noise=distributed over Flower: SecAgg+ unmasks exactly the sum the in-process secure sum computes."""
    pytest.importorskip("flwr", reason="the flower extra is not installed (uv sync --extra flower)")
    from ecos_pl.flower.transport import FlowerSimulation

    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    _, report = _pipeline(tmp_path, InProcess(), noise="distributed").select()
    assert report.proxy_set_sha1 != _pipeline(tmp_path, InProcess()).select()[1].proxy_set_sha1  # the noise differs
    flower = FlowerSimulation(num_cpus=1, timeout=200.0, round_timeout=60.0)
    _, secagg_report = _pipeline(tmp_path, flower, noise="distributed").select()
    assert secagg_report.proxy_set_sha1 == report.proxy_set_sha1
    with pytest.raises(ECOSInputError, match=r"client.noise=distributed needs a secure sum, which transport=files has not"):
        _pipeline(tmp_path, Files(str(tmp_path / "m")), noise="distributed").select()
