"""The labelled scenarios: the client's k-NN noisy max, the annotators, their privacy accounting, and end-to-end runs."""

import math

import numpy as np
import pytest

from ecos_pl.data.base import NONE_LABEL, DomainSplit
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.label import CLOUD_VOTE_K, PseudoLabeller, knn_votes, label_epsilon, neighbour_vote, noisy_argmax
from ecos_pl.protocol.messages import HEADER_BYTES, LabelsMessage, ProxyFeaturesMessage
from ecos_pl.protocol.privacy import laplace_epsilon
from ecos_pl.protocol.labels import AnnotatorLabels, ClientKNNLabels, LabelRequest


def two_blobs(n=200, d=8, seed=0):
    """Two well separated classes; queries drawn from the same two blobs."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((2, d))
    centres[0, 0], centres[1, 1] = 5.0, 5.0
    labels = rng.integers(0, 2, n)
    feats = centres[labels] + rng.normal(size=(n, d))
    q_labels = rng.integers(0, 2, 50)
    queries = centres[q_labels] + rng.normal(size=(50, d))
    return feats, labels, queries, q_labels


def test_knn_votes_count_k_neighbours_and_find_the_class():
    feats, labels, queries, q_labels = two_blobs()
    votes = knn_votes(feats, labels, queries, k=7, num_classes=3)
    assert votes.shape == (50, 3)
    np.testing.assert_array_equal(votes.sum(axis=1), 7)
    assert (votes[:, 2] == 0).all()  # no client sample has class 2
    assert np.mean(votes.argmax(1) == q_labels) > 0.95


def test_noisy_argmax_exact_without_noise_and_threshold_abstains():
    votes = np.array([[9.0, 1.0], [5.0, 5.0], [2.0, 8.0]])
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(noisy_argmax(votes, None, None, 10, rng), [0, 0, 1])
    np.testing.assert_array_equal(noisy_argmax(votes, 0.0, 0.6, 10, rng), [0, -1, 1])
    # heavy noise changes answers: the noise is really added
    noisy = np.stack([noisy_argmax(votes, 50.0, None, 10, np.random.default_rng(s)) for s in range(50)])
    assert (noisy[:, 0] == 1).any()


@pytest.mark.parametrize("kwargs, match", [
    ({"sigma": -1.0}, "sigma"), ({"sigma": math.nan}, "sigma"), ({"threshold": 1.5}, "threshold"),
])
def test_noisy_argmax_bad_inputs(kwargs, match):
    args = {"sigma": 1.0, "threshold": None, **kwargs}
    with pytest.raises(ECOSInputError, match=match):
        noisy_argmax(np.ones((2, 2)), args["sigma"], args["threshold"], 2, np.random.default_rng(0))


def test_knn_votes_bad_inputs_name_the_parameter():
    feats, labels, queries, _ = two_blobs()
    with pytest.raises(ECOSInputError, match="dimension"):
        knn_votes(feats, labels, queries[:, :4], 5, 2)
    with pytest.raises(ECOSInputError, match="k=201 is larger"):
        knn_votes(feats, labels, queries, len(feats) + 1, 2)
    with pytest.raises(ECOSInputError, match="client_labels"):
        knn_votes(feats, labels[:-1], queries, 5, 2)
    with pytest.raises(ECOSInputError, match="proxy_features"):
        knn_votes(feats, labels, np.full_like(queries, np.nan), 5, 2)


def test_label_epsilon_is_accounted_not_hand_summed():
    eps = label_epsilon(8.0, 400, 1e-5)
    assert 0 < eps < math.inf
    assert label_epsilon(16.0, 400, 1e-5) < eps  # more noise, less privacy spent
    assert label_epsilon(8.0, 100, 1e-5) < eps  # fewer answers, less privacy spent
    with_scores = label_epsilon(8.0, 400, 1e-5, [1.0])
    assert eps < with_scores < eps + laplace_epsilon([1.0])  # composition is tighter than the sum
    assert label_epsilon(None, 400, 1e-5) == math.inf  # exact votes are not private
    assert label_epsilon(8.0, 400, 1e-5, [None]) == math.inf  # exact scores were already released
    with pytest.raises(ECOSInputError, match="delta"):
        label_epsilon(8.0, 10, 0.0)


def test_label_round_messages_carry_one_label_per_proxy_sample_and_nothing_else():
    feats, labels, queries, q_labels = two_blobs()
    down = ProxyFeaturesMessage(queries)
    assert down.nbytes == len(down.to_bytes()) == HEADER_BYTES + 4 * queries.size
    up = PseudoLabeller(feats, labels, 2, k=7, sigma=None, threshold=None, seed=1).label(down)
    assert up.nbytes == len(up.to_bytes()) == HEADER_BYTES + 2 * len(queries)
    back = LabelsMessage.from_bytes(up.to_bytes())
    np.testing.assert_array_equal(back.labels, up.labels)
    assert np.mean(back.labels == q_labels) > 0.95
    np.testing.assert_array_equal(ProxyFeaturesMessage.from_bytes(down.to_bytes()).features, down.features)
    with pytest.raises(ECOSInputError, match="labels"):
        LabelsMessage(np.array([0, -2]))


def test_pseudo_labeller_same_seed_same_labels():
    feats, labels, queries, _ = two_blobs()
    a = PseudoLabeller(feats, labels, 2, k=7, sigma=3.0, seed=4).label(ProxyFeaturesMessage(queries))
    b = PseudoLabeller(feats, labels, 2, k=7, sigma=3.0, seed=4).label(ProxyFeaturesMessage(queries))
    c = PseudoLabeller(feats, labels, 2, k=7, sigma=3.0, seed=5).label(ProxyFeaturesMessage(queries))
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)


def _request(proxy_labels, feats=None, labels=None, queries=None, settings=None):
    """A label round with one client in this process, holding `feats` and `labels` (the exchange is its only way in)."""
    from ecos_pl.protocol import ECOSClient
    from ecos_pl.protocol.exchange import InProcessExchange

    client = ECOSClient(np.ones((1, 2), np.float32), labeller=None if feats is None else (
        lambda: PseudoLabeller.from_settings(feats, labels, 2, settings, seed=0)))
    return LabelRequest(truth=np.asarray(proxy_labels), proxy_features=lambda: queries, seed=0, score_releases=[]), InProcessExchange([client])


def test_annotators_drop_none_and_count_every_label_bought():
    targets, report = AnnotatorLabels().assign(*_request([0, 1, NONE_LABEL, 1, NONE_LABEL]))
    np.testing.assert_array_equal(targets, [0, 1, -1, 1, -1])
    assert report == {"labels_bought": 5, "labels_none": 2}


def test_client_knn_labels_report_accuracy_drops_bytes_and_epsilon():
    feats, labels, queries, q_labels = two_blobs()
    labeller = ClientKNNLabels(k=7, sigma=1.0, threshold=0.5, sampling_rate=1.0)
    targets, report = labeller.assign(*_request(q_labels, feats, labels, queries, labeller.settings))
    assert report["pseudo_label_acc"] > 0.9
    assert report["labels_dropped"] == int((targets < 0).sum())
    assert report["label_bytes_down"] == HEADER_BYTES + 4 * queries.size
    assert report["label_bytes_up"] == HEADER_BYTES + 2 * len(queries)
    assert 0 < report["label_epsilon"] == report["exchange_epsilon"] < math.inf


def test_neighbour_vote_outvotes_wrong_labels_and_keeps_abstentions():
    feats, labels, _, _ = two_blobs(n=100, seed=1)
    noisy = labels.copy()
    flipped = np.arange(0, 100, 10)  # one label in ten wrong
    noisy[flipped] = 1 - noisy[flipped]
    noisy[5] = -1  # an abstention stays one, and is no one's neighbour
    cleaned = neighbour_vote(feats, noisy, 10)
    assert cleaned[5] == -1
    assert np.mean(cleaned[flipped] == labels[flipped]) > 0.9  # the wrong ones are outvoted
    kept = noisy >= 0
    assert np.mean(cleaned[kept] == labels[kept]) > np.mean(noisy[kept] == labels[kept])
    # k = 1: its own label (1.5 votes) against one neighbour's: kept
    np.testing.assert_array_equal(neighbour_vote(feats, noisy, 1), noisy)


def test_client_knn_labels_cloud_vote_reports_both_accuracies():
    feats, labels, queries, q_labels = two_blobs()
    plain = ClientKNNLabels(k=7, sigma=8.0, threshold=None, sampling_rate=1.0, cloud_vote_k=0)  # noisy enough to be wrong at times
    voted = ClientKNNLabels(k=7, sigma=8.0, threshold=None, sampling_rate=1.0)  # the default: CLOUD_VOTE_K
    _, before = plain.assign(*_request(q_labels, feats, labels, queries, plain.settings))
    _, after = voted.assign(*_request(q_labels, feats, labels, queries, voted.settings))
    assert after["pseudo_label_acc_released"] == before["pseudo_label_acc"] < 1.0
    assert after["pseudo_label_acc"] > before["pseudo_label_acc"]
    assert after["label_epsilon"] == before["label_epsilon"]  # post-processing costs no privacy
    with pytest.raises(ECOSInputError, match="scenario.labels.cloud_vote_k must be at least 0"):
        ClientKNNLabels(cloud_vote_k=-1)


# ------------------------------------------------------------------ end to end (tiny config, conftest.tiny_run)

#: what the labelled runs share: the run's outputs are tests/test_outputs.py's, not written here
LABELLED = ("save_outputs=false", "callbacks=none")
PSEUDO = ("scenario=pseudo_label", "scenario.labels.sigma=1.0", *LABELLED)


def test_label_outsourcing_end_to_end(tiny_run):
    res = tiny_run("scenario=label_outsourcing", "sampler=ecos", *LABELLED).results
    assert res["scenario"] == "label_outsourcing" and res["teacher_test_acc"] is None
    assert res["labels_bought"] == res["n_selected"] == 120
    # "none" answers are dropped: the crops in the proxy set are not trained on
    assert res["n_trained"] == res["labels_bought"] - res["labels_none"]
    assert res["n_trained"] == 120 - res["composition_by_domain"]["crops"]


def test_pseudo_label_end_to_end_and_equal_steps_for_full(tiny_run):
    run = tiny_run(*PSEUDO, "sampler=ecos", "scenario.labels.threshold=null")
    res = run.results
    assert res["labels_dropped"] + res["n_trained"] == res["n_selected"] == 120
    assert 0.0 <= res["pseudo_label_acc"] <= 1.0
    assert res["label_bytes_up"] == HEADER_BYTES + 2 * 120
    # the vote is taken in the labelling φ (HOG, 64 components), which labels far better than the protocol's style φ
    assert res["label_phi"] == "hog" and res["label_feature_dim"] == 64
    # the config's neighbour vote is the library's and the programs' default (ecos-cloud labels --cloud-vote-k)
    assert res["label_cloud_vote_k"] == CLOUD_VOTE_K
    assert res["label_bytes_down"] == HEADER_BYTES + 120 * 4 * 64
    # by default the scores were Gaussian at ε = 0.58: the exchange costs a little more than the labels alone
    assert res["score_privacy"]["mechanism"] == "gaussian" and res["epsilon"] == 0.58
    assert 0 < res["label_epsilon"] < res["exchange_epsilon"] < res["label_epsilon"] + 2.0
    assert "pseudo-label accuracy" in run.stdout
    same_phi = tiny_run(*PSEUDO, "sampler=ecos", "scenario.labels.threshold=null", "scenario.labels.phi=null", "client.epsilon=null").results
    assert same_phi["label_phi"] == "protocol"
    assert res["pseudo_label_acc"] > same_phi["pseudo_label_acc"] + 0.2
    assert same_phi["exchange_epsilon"] is None  # exact scores were released: the exchange is not private
    # under the default budget schedule the whole pool (70 batches an epoch here) gets the steps of a proxy set
    full = tiny_run(*PSEUDO, "sampler=full", "trainer.limit_train_batches=1.0").results
    assert full["n_selected"] == full["n_pool"] and full["train_steps"] == res["train_steps"] == 2


def test_training_steps_budget_schedule():
    from omegaconf import OmegaConf

    from ecos_pl.experiment import training_steps

    cfg = OmegaConf.create({"budget": 400, "datamodule": {"batch_size": 64}, "scenario": {"epochs": 40, "train_length": "budget"}})
    assert training_steps(cfg) == 40 * 7
    assert training_steps(cfg, world_size=2) == 40 * 4  # each step sees a batch on every rank
    cfg.scenario.train_length = "epochs"
    assert training_steps(cfg) is None
    cfg.scenario.train_length = "steps"
    with pytest.raises(ValueError, match="scenario.train_length"):
        training_steps(cfg)


def test_local_reference_trains_on_the_client(tiny_run):
    res = tiny_run("scenario=label_outsourcing", "sampler=local", *LABELLED).results
    assert res["n_selected"] == res["n_trained"] == res["n_client_train"]
    assert res["in_domain_fraction"] == 1.0
    assert res["bytes_up"] == res["bytes_down"] == 0 and "labels_bought" not in res


def test_backbone_settings_reach_the_trained_model():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from ecos_pl.scenarios import build_module

    cfg = OmegaConf.create({"seed": 1, "scenario": {"_target_": "ecos_pl.scenarios.labelled.Labelled", "name": "pseudo_label", "lr": 0.1},
                            "backbone": {"student": "test_resnet", "pretrained": False, "input_size": 48}})
    dm = SimpleNamespace(data=SimpleNamespace(num_classes=3))
    module, extra = build_module(cfg, dm, make_trainer=None)
    assert module.model.input_size == (48, 48) and module.model.num_classes == 3
    assert extra == {"teacher_test_acc": None}
    cfg.backbone.pretrained = "/nonexistent/weights.safetensors"
    with pytest.raises(FileNotFoundError, match="backbone.pretrained="):
        build_module(cfg, dm, make_trainer=None)


def test_training_batches_are_full_and_every_sample_is_seen_across_epochs():
    # labels dropped by a scenario leave any size: a short last batch (1 breaks batch-norm, 2 made seed 2 of
    # pseudo_label diverge) is dropped; shuffling each epoch still reaches the samples it held
    from datamodules.ecos_datamodule import ImageArrayDataset, make_loader

    def split(n):
        return DomainSplit(np.zeros((n, 4, 4, 3), np.uint8), np.arange(n), np.zeros(n, np.int64))

    def loader(n, train=True):
        return make_loader(ImageArrayDataset(split(n)), batch_size=4 if train else 8, train=train, seed=1)

    for n in (9, 10):
        batches = loader(n)  # one loader: each epoch reshuffles
        assert [len(b["image"]) for b in batches] == [4, 4]
        seen = {int(i) for _ in range(6) for b in batches for i in b["index"]}
        assert seen == set(range(n))
    assert [len(b["image"]) for b in loader(3)] == [3]  # one batch: kept
    assert [len(b["image"]) for b in loader(10, train=False)] == [8, 2]


def test_mixup_trains_on_convex_mixes_of_two_samples_and_their_targets():
    import itertools

    import torch
    import torch.nn.functional as F
    from torch import nn

    from ecos_pl.scenarios.base import SupervisedModule

    class Probe(nn.Module):  # logits from the mean pixel, and a record of what the model was shown
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(1, 3)
            self.seen = []

        def forward(self, x):
            self.seen.append(x.detach().clone())
            return self.head(x.mean(dim=(1, 2, 3))[:, None])

    values = torch.tensor([0.1, 0.4, 0.9])
    batch = {"image": values[:, None, None, None].expand(3, 3, 4, 4).clone(), "target": torch.tensor([0, 1, 2])}
    torch.manual_seed(0)
    module = SupervisedModule(Probe(), mixup_alpha=1.0, augment_pad=0)
    module.log = lambda *a, **k: None
    loss = module.training_step(batch, 0)
    shown = module.model.seen[-1]
    mixed = shown.mean(dim=(1, 2, 3))
    assert not torch.allclose(shown, batch["image"])
    # some λ in [0, 1] and permutation explain every row, and the loss is the same mix of the two cross-entropies
    fits = []
    for perm in itertools.permutations(range(3)):
        other = values[list(perm)]
        if torch.allclose(other, values):
            continue
        lam = float(((mixed - other) @ (values - other)) / ((values - other) @ (values - other)))
        if 0 <= lam <= 1 and torch.allclose(lam * values + (1 - lam) * other, mixed, atol=1e-6):
            logits = module.model.head(mixed[:, None])
            expected = lam * F.cross_entropy(logits, batch["target"]) + (1 - lam) * F.cross_entropy(logits, batch["target"][list(perm)])
            fits.append(torch.allclose(loss, expected, atol=1e-5))
    assert fits and all(fits)
    plain = SupervisedModule(Probe(), mixup_alpha=0.0, augment_pad=0)
    plain.log = lambda *a, **k: None
    plain.training_step(batch, 0)
    assert torch.equal(plain.model.seen[-1], batch["image"])


@pytest.mark.parametrize("kwargs, match", [
    ({"label_smoothing": 1.0}, "scenario.label_smoothing=1.0"),
    ({"label_smoothing": -0.1}, "scenario.label_smoothing=-0.1"),
    ({"mixup_alpha": -1.0}, "scenario.mixup_alpha=-1.0"),
])
def test_supervised_recipe_bad_inputs_name_the_parameter(kwargs, match):
    from torch import nn

    from ecos_pl.scenarios.base import SupervisedModule

    with pytest.raises(ValueError, match=match):
        SupervisedModule(nn.Identity(), **kwargs)


# ------------------------------------------------------------------ the labelling φ


def _digit_images(n=40, seed=0):
    """Random bright strokes on a coloured background: enough structure for gradients."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 16, 16, 3), dtype=np.uint8)
    images[:] = rng.integers(0, 256, size=(n, 1, 1, 3), dtype=np.uint8)
    for i in range(n):
        r, c = rng.integers(2, 12, size=2)
        images[i, r : r + 4, c : c + 2] = 255 - images[i, 0, 0]
    return images


def test_hog_phi_ignores_colour_and_polarity_and_is_fitted_deterministically():
    from ecos_pl.phi import HOGFeatures, PCAPixels

    images = _digit_images()
    phi = HOGFeatures(n_components=8, seed=3).fit(images)
    feats = phi.transform(images)
    assert feats.shape == (len(images), 8)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    # an inverted image has the same unsigned gradients: the same HOG features, while PCA pixels differ
    np.testing.assert_allclose(phi.transform(255 - images), feats, atol=1e-4)
    pixels = PCAPixels(n_components=8, seed=3).fit(images)
    assert not np.allclose(pixels.transform(255 - images), pixels.transform(images), atol=1e-2)
    # same seed and settings, same φ; other settings, another fingerprint
    assert HOGFeatures(n_components=8, seed=3).fit(images).fingerprint() == phi.fingerprint()
    assert HOGFeatures(n_components=8, seed=3, pixels_per_cell=8).fit(images).fingerprint() != phi.fingerprint()


def test_pca_phi_fits_on_a_seeded_subsample_of_a_large_pool(monkeypatch):
    from ecos_pl.phi import PCAPixels

    images = _digit_images(60)
    monkeypatch.setattr(PCAPixels, "fit_rows", 30)
    a, b = PCAPixels(n_components=4, seed=1).fit(images), PCAPixels(n_components=4, seed=1).fit(images)
    assert a.fingerprint() == b.fingerprint()
    np.testing.assert_array_equal(a._pca.mean_, b._pca.mean_)
    assert not np.allclose(PCAPixels(n_components=4, seed=2).fit(images)._pca.mean_, a._pca.mean_)  # another subsample
    monkeypatch.setattr(PCAPixels, "fit_rows", 100_000)
    whole = PCAPixels(n_components=4, seed=1).fit(images)._pca.mean_
    np.testing.assert_allclose(whole, images.reshape(60, -1).mean(0) / 255.0, rtol=1e-5)
    assert not np.allclose(whole, a._pca.mean_)


def test_compression_teacher_is_the_clouds_own_by_default(tiny_run):
    """The paper's compression: the cloud trains the teacher on its labelled pool; the client has no labels to give."""
    res = tiny_run().results
    assert res["scenario"] == "compression" and res["teacher_source"] == "pool"
    assert res["teacher_val_acc"] is not None and res["teacher_test_acc"] is not None
    client_side = tiny_run("scenario.teacher.source=client").results
    assert client_side["teacher_source"] == "client" and client_side["teacher_path"] != res["teacher_path"]


def test_concat_phi_is_its_weighted_unit_parts_side_by_side():
    from ecos_pl.phi import ConcatFeatures, HOGFeatures, PCAPixels

    images = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    phi = ConcatFeatures({"style": PCAPixels(8), "shape": HOGFeatures(8)}, weights={"shape": 0.5}).fit(images)
    style, shape = PCAPixels(8).fit(images).transform(images), HOGFeatures(8).fit(images).transform(images)
    expected = np.concatenate([style, 0.5 * shape], axis=1)
    np.testing.assert_allclose(phi.transform(images), expected / np.linalg.norm(expected, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    other = ConcatFeatures({"style": PCAPixels(8), "shape": HOGFeatures(8)}).fit(images)
    assert other.fingerprint() != phi.fingerprint()
    with pytest.raises(ECOSInputError, match=r"^phi\.weights\.shape must be"):
        ConcatFeatures({"shape": HOGFeatures(8)}, weights={"shape": 0})
    with pytest.raises(ECOSInputError, match=r"^phi\.weights names colour, which phi\.parts does not \(shape\)\."):
        ConcatFeatures({"shape": HOGFeatures(8)}, weights={"colour": 1.0})


def test_concat_phi_round_trips_through_a_phi_file_and_refuses_bad_specs(tmp_path):
    from safetensors.torch import load_file, save_file

    from ecos_pl.phi import ConcatFeatures, HOGFeatures, PCAPixels, phi_from_spec
    from ecos_pl.phi_file import load_phi_file, phi_file_bytes

    images = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    phi = ConcatFeatures({"style": PCAPixels(8), "shape": HOGFeatures(8)}, weights={"shape": 0.5}).fit(images)
    path = tmp_path / "phi.safetensors"
    path.write_bytes(phi_file_bytes(phi, 16))
    back, size = load_phi_file(path)
    assert isinstance(back, ConcatFeatures) and size == 16 and back.fingerprint() == phi.fingerprint()
    np.testing.assert_allclose(back.transform(images), phi.transform(images), rtol=1e-5, atol=1e-6)
    assert sorted({k.split(".")[0] for k in load_file(path)} - {"probe"}) == ["shape", "style"]

    spec = phi.spec()
    bad = [({**spec, "code": "x"}, "fields parts and weights only"),
           ({**spec, "parts": {"inner": spec}}, "cannot themselves be concat"),
           ({**spec, "parts": {"Bad.Name": spec["parts"]["shape"]}, "weights": {}}, "not a lower-case identifier"),
           ({**spec, "parts": {f"p{i}": spec["parts"]["shape"] for i in range(5)}, "weights": {}}, "1 to 4 parts"),
           ({**spec, "weights": {"shape": "1"}}, "must be a number"),
           ({**spec, "parts": {"style": {"kind": "numpy.savetxt"}}}, "is not one this program builds")]
    for wrong, sentence in bad:
        with pytest.raises(ECOSInputError, match=sentence):
            phi_from_spec(wrong)
    # a tensor that belongs to no part is refused before anything is built
    tensors = load_file(path)
    save_file({**tensors, "stray.x": tensors["probe.features"].clone()}, str(tmp_path / "stray.safetensors"),
              metadata=__import__("safetensors").safe_open(str(path), "pt").metadata())
    with pytest.raises(ECOSInputError, match="belongs to none of its parts"):
        load_phi_file(tmp_path / "stray.safetensors")
    with pytest.raises(ECOSInputError, match="'style' belongs to none of its parts"):  # a key without its part's prefix
        ConcatFeatures.from_spec(spec, state_shapes={"style": [1]})
