"""The exchange boundary: samplers and the label round reach clients only through messages, and the exchange counts them."""

import numpy as np
import pytest

from ecos_pl.protocol import ECOSClient
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.exchange import Exchange, FeaturesRequest, InProcessExchange
from ecos_pl.protocol.label import KeyedSubsamples, PseudoLabeller, content_keys
from ecos_pl.protocol.messages import CentroidsMessage, ProxyFeaturesMessage, ScoresMessage
from ecos_pl.protocol.samplers import ECOSSampler, OracleCentralSampler, RandomSampler
from ecos_pl.protocol.settings import Allocation, Clustering, Labelling


class RecordingExchange(Exchange):
    """An exchange that is not in process: it answers from scores computed elsewhere, and records what was sent."""

    def __init__(self, answers):
        super().__init__()
        self.answers, self.sent = answers, []

    @property
    def n_clients(self):
        return len(self.answers)

    def _deliver(self, message):
        self.sent.append(message)
        return [a(message) for a in self.answers], 0.0, 0


def test_ecos_sampler_talks_only_to_the_exchange_and_the_exchange_counts_bytes(mixture):
    client = ECOSClient(mixture["client"], epsilon=None, seed=0)
    exchange = RecordingExchange([client.score])
    sampler = ECOSSampler(Clustering(n_centroids=40), Allocation(temperature=1.0))
    assert not any(isinstance(v, ECOSClient) for v in vars(sampler).values())
    sel = sampler.sample(mixture["pool"], exchange, 100, seed=0)
    assert [type(m) for m in exchange.sent] == [CentroidsMessage]
    (r,) = exchange.rounds
    assert (r.kind, r.n_clients, r.bytes_down, r.bytes_up) == ("CentroidsMessage", 1, exchange.sent[0].nbytes, 4 * 40 + 32)
    assert (sel.bytes_down, sel.bytes_up) == (r.bytes_down, r.bytes_up)
    # the same selection as the client handed in directly (wrapped in an InProcessExchange)
    np.testing.assert_array_equal(sel.indices, sampler.sample(mixture["pool"], client, 100, seed=0).indices)
    assert np.mean(mixture["component"][sel.indices] == mixture["client_component"]) > 0.8


def test_baselines_send_nothing_and_oracle_upload_is_counted(mixture):
    client = ECOSClient(mixture["client"], epsilon=None)
    exchange = InProcessExchange([client])
    RandomSampler().sample(mixture["pool"], exchange, 50, seed=0)
    assert exchange.rounds == []
    sel = OracleCentralSampler().sample(mixture["pool"], exchange, 50, seed=0)
    (r,) = exchange.rounds
    assert r.kind == "FeaturesRequest" and r.bytes_up == sel.bytes_up == mixture["client"].astype(np.float32).nbytes


def test_many_clients_are_one_exchange_with_summed_scores(mixture):
    halves = np.array_split(mixture["client"], 2)
    clients = [ECOSClient(h, epsilon=None) for h in halves]
    exchange = InProcessExchange(clients)
    sampler = ECOSSampler(Clustering(n_centroids=40), Allocation(temperature=1.0))
    sel = sampler.sample(mixture["pool"], exchange, 100, seed=0)
    (r,) = exchange.rounds
    assert r.n_clients == 2 and r.bytes_up == 2 * (4 * 40 + 32)
    whole = sampler.sample(mixture["pool"], ECOSClient(mixture["client"], epsilon=None), 100, seed=0)
    np.testing.assert_array_equal(sel.indices, whole.indices)  # exact counts: two halves sum to the whole
    np.testing.assert_allclose(sel.diagnostics["scores"], whole.diagnostics["scores"])


def test_a_client_answers_only_what_it_can():
    client = ECOSClient(np.eye(4, dtype=np.float32), epsilon=None)
    assert client.handle(FeaturesRequest()).features.shape == (4, 4)
    with pytest.raises(ECOSInputError, match="labeller is None"):
        client.handle(ProxyFeaturesMessage(np.eye(4, dtype=np.float32)))
    with pytest.raises(ECOSInputError, match="cannot answer a ScoresMessage"):
        client.handle(ScoresMessage(np.ones(3, dtype=np.float32)))
    with pytest.raises(ECOSInputError, match="clients is empty"):
        InProcessExchange([])


def test_keyed_subsamples_do_not_depend_on_the_order_of_the_client_samples():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(60, 8, 8, 3), dtype=np.uint8)
    features = rng.normal(size=(60, 16)).astype(np.float32)
    labels = rng.integers(0, 3, size=60)
    queries = ProxyFeaturesMessage((f := rng.normal(size=(25, 16)).astype(np.float32)) / np.linalg.norm(f, axis=1, keepdims=True))
    settings = Labelling(k=5, sigma=1.0, sampling_rate=0.3, threshold=None)
    order = rng.permutation(60)
    a = PseudoLabeller.from_settings(features, labels, 3, settings, seed=7, sample_keys=content_keys(images)).label(queries)
    b = PseudoLabeller.from_settings(features[order], labels[order], 3, settings, seed=7,
                                     sample_keys=content_keys(images[order])).label(queries)
    np.testing.assert_array_equal(a.labels, b.labels)
    # ... and are Poisson subsamples at the rate asked for, different per query and per seed
    masks = KeyedSubsamples(7, content_keys(images)).masks(0, 400, 0.3)
    assert abs(masks.mean() - 0.3) < 0.02 and len({m.tobytes() for m in masks}) == 400
    assert (masks != KeyedSubsamples(8, content_keys(images)).masks(0, 400, 0.3)).any()


def test_settings_objects_refuse_bad_values_by_the_key_a_user_sets():
    with pytest.raises(ECOSInputError, match=r"sampler\.temperature"):
        Allocation(temperature=0)
    with pytest.raises(ECOSInputError, match=r"scenario\.labels\.sampling_rate"):
        Labelling(sampling_rate=1.5)
    with pytest.raises(ECOSInputError, match=r"sampler\.nitre is not a setting"):
        ECOSSampler(nitre=3)


def test_pipeline_with_two_clients_sums_their_scores_and_labels_through_the_exchange(tmp_path):
    """`clients=2`: two seeded shards of the client's split, one exchange, one proxy set; the label round asks both."""
    from ecos_pl.data.digits_lite import DigitsLite
    from ecos_pl.phi import HOGFeatures, PCAPixels
    from ecos_pl.pipeline import ProtocolPipeline, client_shards
    from ecos_pl.protocol.settings import ScorePrivacy
    from ecos_pl.protocol.labels import ClientKNNLabels

    def pipeline(clients):
        return ProtocolPipeline(
            DigitsLite(seed=1, client_domain="photo", cache_dir=str(tmp_path / "data")), PCAPixels(n_components=16, seed=1),
            ECOSSampler(Clustering(n_centroids=16)), budget=120, seed=1, score_privacy=ScorePrivacy(epsilon=None),
            proxy_labels=ClientKNNLabels(HOGFeatures(n_components=16, seed=1), Labelling(k=5, sigma=1.0, sampling_rate=0.5)),
            clients=clients, cache_dir=str(tmp_path / "cache"),
        )

    one, two = pipeline(1), pipeline(2)
    sel1, report1 = one.select()
    sel2, report2 = two.select()
    assert report2.n_clients == 2 and report2.bytes_up == 2 * report1.bytes_up == 2 * (4 * 16 + 32)
    np.testing.assert_array_equal(sel1.indices, sel2.indices)  # exact counts: the shards' scores sum to the whole's
    assert report1.selection_artifact != report2.selection_artifact  # the number of clients is part of the key
    targets, labels = two.label(sel2)
    assert labels["label_bytes_up"] == 2 * (2 * 120 + 32) and len(targets) == 120 and (targets >= 0).sum() >= 2
    shards = client_shards(len(two.data.client_train), 2, seed=1)
    assert sorted(np.concatenate(shards)) == list(range(len(two.data.client_train)))
