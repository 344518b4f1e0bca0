"""label_outsourcing's semi-supervised training (`scenario.ssl=fixmatch`): the loss, the unlabelled set, the views, runs."""

import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ecos_pl.config_schema import FixMatchSettings
from ecos_pl.data.base import NONE_LABEL, DomainSplit, ECOSData
from ecos_pl.protocol import Selection
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.scenarios.fixmatch import FixMatchData, FixMatchModule, FixMatchViews, fixmatch_unlabelled_loss
from ecos_pl.unlabelled import unlabelled_indices, unlabelled_report
from runs import call_main

LABELLED = ("save_outputs=false", "callbacks=none")
#: the tiny FixMatch run: every step logged (the smoke config trains 2 steps), the student written to compare weights
FIXMATCH = ("scenario=label_outsourcing", "sampler=ecos", "callbacks=none", "trainer.log_every_n_steps=1")


def test_mask_keeps_only_pseudo_labels_at_or_above_the_threshold():
    # softmax maxima: ~1.0, 0.58, ~1.0 (class 1), 0.95 exactly at the threshold
    p = 0.95
    at_threshold = [np.log(p / ((1 - p) / 2)), 0.0, 0.0]
    weak = torch.tensor([[10.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 10.0, 0.0], at_threshold], requires_grad=True)
    strong = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss, mask, pseudo = fixmatch_unlabelled_loss(strong, weak, 0.95 - 1e-6)
    assert mask.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert pseudo.tolist() == [0, 0, 1, 0]
    kept = F.cross_entropy(strong[[0, 2, 3]], torch.tensor([0, 1, 0]), reduction="sum")
    torch.testing.assert_close(loss, kept / 4)  # FixMatch divides by every unlabelled sample, not by the kept ones
    loss.backward()
    assert weak.grad is None  # the pseudo-label is a target: no gradient flows into the weak view
    assert strong.grad[1].abs().sum() == 0 and strong.grad[0].abs().sum() > 0  # a masked sample does not train
    assert fixmatch_unlabelled_loss(strong, weak, 1.0)[1].sum() == 0  # nothing is that sure: nothing is used
    everything, mask_all, _ = fixmatch_unlabelled_loss(strong, weak, 0.0)
    assert mask_all.sum() == 4
    torch.testing.assert_close(everything, F.cross_entropy(strong, torch.tensor([0, 0, 1, 0])))


def _selection(indices, scores=None, assignments=None):
    diagnostics = {} if assignments is None else {"assignments": np.asarray(assignments)}
    if scores is not None:
        diagnostics["scores"] = np.asarray(scores, dtype=np.float32)
    return Selection(indices=np.asarray(indices, dtype=np.int64), sampler="x", diagnostics=diagnostics)


def test_unlabelled_set_is_the_scored_clusters_members_minus_the_proxy_set():
    assignments = [0, 1, 2, 3, 0, 1, 2, 3, 0, 2, 2, 1]
    # clusters 0 and 2 scored (noisy scores are clipped at zero: a zero cluster is not scored)
    indices, origin = unlabelled_indices(_selection([0, 2, 5], [3.0, 0.0, 1.5, 0.0], assignments), 12)
    assert origin == "scored_clusters"
    np.testing.assert_array_equal(indices, [4, 6, 8, 9, 10])  # members of 0 and 2 are 0 2 4 6 8 9 10; 0 and 2 labelled
    assert not set(indices) & {0, 2, 5}
    # samplers without scores (random, kcenter, full, oracle_central, client_data; uniform_cluster has clusters only)
    for sel in (_selection([0, 2, 5]), _selection([0, 2, 5], assignments=assignments)):
        indices, origin = unlabelled_indices(sel, 12)
        assert origin == "pool"
        np.testing.assert_array_equal(indices, [1, 3, 4, 6, 7, 8, 9, 10, 11])
    np.testing.assert_array_equal(unlabelled_indices(_selection([]), 4)[0], [0, 1, 2, 3])  # client_data selects nothing


def test_unlabelled_from_pool_gives_every_sampler_the_whole_pool():
    assignments = [0, 1, 2, 3, 0, 1, 2, 3, 0, 2, 2, 1]
    ecos = _selection([0, 2, 5], [3.0, 0.0, 1.5, 0.0], assignments)
    indices, origin = unlabelled_indices(ecos, 12, "pool")
    assert origin == "pool"
    np.testing.assert_array_equal(indices, [1, 3, 4, 6, 7, 8, 9, 10, 11])  # as random's with the same proxy set
    with pytest.raises(ECOSInputError, match=r"^scenario.unlabelled_from must be one of scores, pool \(.*got 'all'\.$"):
        unlabelled_indices(ecos, 12, "all")


def _data(n=40, size=8):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, n)
    labels[:4] = NONE_LABEL
    pool = DomainSplit(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), labels, np.arange(n) % 2)
    return ECOSData("toy", pool, pool.subset(np.arange(8)), pool.subset(np.arange(8)), ["a", "b"], ["0", "1", "2"], "b")


def test_unlabelled_report_counts_the_client_domain_and_out_of_class_samples():
    data = _data()
    report = unlabelled_report(np.array([0, 1, 2, 3, 10, 11]), "pool", data)
    assert report == {"n_unlabelled": 6, "unlabelled_from": "pool", "unlabelled_in_domain_fraction": 0.5,
                      "unlabelled_out_of_class_fraction": pytest.approx(4 / 6)}


def test_views_are_seeded_and_the_strong_one_is_randaugmented():
    split = _data().pool
    views = FixMatchViews(split, FixMatchSettings(randaugment_ops=2, randaugment_magnitude=9))

    def draw(seed):
        torch.manual_seed(seed)
        return torch.stack([views[i]["strong"] for i in range(len(views))])

    weak = views[5]["weak"]
    torch.testing.assert_close(weak, torch.from_numpy(split.images[5]).permute(2, 0, 1).float() / 255)  # weak: no RandAugment
    a, b, c = draw(1), draw(1), draw(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, torch.stack([views[i]["weak"] for i in range(len(views))]))
    # hflip: some draws mirror the image, some do not (RandAugment off, so the strong view is only flipped)
    flipping = FixMatchViews(split, FixMatchSettings(randaugment_ops=0, hflip=True))
    torch.manual_seed(0)
    draws = [flipping[5][key] for _ in range(20) for key in ("weak", "strong")]
    assert {torch.equal(d, weak.flip(-1)) for d in draws} == {True, False}
    assert all(torch.equal(d, weak) or torch.equal(d, weak.flip(-1)) for d in draws)


def test_each_labelled_batch_gets_mu_times_as_many_unlabelled_samples_for_a_whole_epoch():
    data = _data()
    mu, batch = 3, 4
    dm = SimpleNamespace(data=data, selection=_selection([0, 1, 2, 3, 4, 5]), batch_size=batch, seed=1, num_workers=0)
    fixmatch = FixMatchData(FixMatchSettings(unlabelled_ratio=mu))
    labelled = DomainSplit(data.pool.images[:10], data.pool.labels[:10] % 3, data.pool.domains[:10])
    loader = fixmatch.train_loader(dm, labelled, np.arange(10) % 3)
    batches = list(loader)
    assert len(batches) == 10 // batch  # the labelled epoch (short last batch dropped): the unlabelled stream fits it
    for b, *_ in batches:
        assert b["labelled"]["image"].shape[0] == batch and b["unlabelled"]["strong"].shape[0] == mu * batch
    assert fixmatch.report["n_unlabelled"] == 34 and fixmatch.report["unlabelled_from"] == "pool"
    with pytest.raises(Exception, match="the unlabelled set is empty"):
        FixMatchData(FixMatchSettings()).train_loader(
            SimpleNamespace(**{**vars(dm), "selection": _selection(np.arange(40))}), labelled, None)


def test_fixmatch_step_trains_the_strong_view_towards_confident_weak_predictions():
    from torch import nn

    class Probe(nn.Module):  # logits from the mean of the first channel; records the batches it sees
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(1, 3)
            self.sizes = []

        def forward(self, x):
            self.sizes.append((len(x), torch.is_grad_enabled()))
            return self.head(x[:, :1].mean(dim=(1, 2, 3))[:, None]) * 50

    torch.manual_seed(0)
    module = FixMatchModule(Probe(), threshold=0.5, unlabelled_weight=2.0, augment_pad=0)
    logged = {}
    module.log = lambda name, value, **k: logged.__setitem__(name, float(value.detach()))
    image = torch.rand(6, 3, 4, 4)
    batch = {"labelled": {"image": image[:2], "target": torch.tensor([0, 1])},
             "unlabelled": {"weak": image[2:], "strong": image[2:].flip(0), "label": torch.tensor([0, 1, 2, NONE_LABEL])}}
    loss = module.training_step(batch, 0)
    assert module.model.sizes == [(4, False), (6, True)]  # weak without gradient; labelled and strong in one pass
    assert set(logged) >= {"train/loss", "train/sup_loss", "train/unsup_loss", "train/mask_rate"}
    assert loss.item() == pytest.approx(logged["train/sup_loss"] + 2.0 * logged["train/unsup_loss"], rel=1e-5)
    assert 0 <= logged["train/mask_rate"] <= 1


# ------------------------------------------------------------------ end to end (tiny config, conftest.tiny_run)


def _metrics(run) -> list[dict]:
    path = next(run.folder.glob("csv/version_*/metrics.csv"))
    with open(path) as f:
        return list(csv.DictReader(f))


def _student(run):
    from safetensors.torch import load_file

    return load_file(run.folder / "student.safetensors")


def test_label_outsourcing_trains_fixmatch_by_default_on_the_scored_clusters(tiny_run):
    run = tiny_run(*FIXMATCH)
    res = run.results
    assert res["ssl"] == "fixmatch" and res["fixmatch"]["threshold"] == 0.95 and res["fixmatch"]["unlabelled_weight"] == 1.0
    assert res["unlabelled_from"] == "scored_clusters"
    assert 0 < res["n_unlabelled"] <= res["n_pool"] - res["n_selected"]
    # exactly the members of the clusters with a positive released score (the run's selection artifact), minus the proxy set
    from ecos_pl.protocol.store import load_selection

    selection, _ = load_selection(res["selection_artifact"])
    scored = np.flatnonzero(selection.diagnostics["scores"][selection.diagnostics["assignments"]] > 0)
    assert (selection.diagnostics["scores"] == 0).any()  # some clusters were not scored, so the rule excludes samples
    assert res["n_unlabelled"] == len(np.setdiff1d(scored, selection.indices)) < res["n_pool"] - res["n_selected"]
    assert 0.0 <= res["unlabelled_in_domain_fraction"] <= 1.0
    assert "unlabelled pool samples (FixMatch)" in run.stdout
    rows = _metrics(run)
    for key in ("train/sup_loss", "train/unsup_loss", "train/mask_rate"):
        values = [float(r[key]) for r in rows if r.get(key)]
        assert len(values) == res["train_steps"], key
    # equal steps: FixMatch changes the work per step, not the number of steps
    plain = tiny_run("scenario=label_outsourcing", "sampler=ecos", "scenario.ssl=none", *LABELLED).results
    assert res["train_steps"] == plain["train_steps"] == 2
    assert "n_unlabelled" not in plain and "ssl" not in plain


def test_random_sampler_gets_the_whole_pool_minus_its_proxy_set_unlabelled(tiny_run):
    res = tiny_run("scenario=label_outsourcing", "sampler=random", *LABELLED).results
    assert res["unlabelled_from"] == "pool" and res["n_unlabelled"] == res["n_pool"] - res["n_selected"]
    assert res["unlabelled_in_domain_fraction"] == pytest.approx(res["pool_in_domain_fraction"], abs=0.02)


def test_same_seed_same_fixmatch_numbers(tiny_run):
    a = tiny_run(*FIXMATCH)
    b = tiny_run(*FIXMATCH, "datamodule.pipeline.reuse_selection=false")
    assert b.results["selection_reused"] is False
    assert a.results["client_test_acc"] == b.results["client_test_acc"]
    wa, wb = _student(a), _student(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["train/unsup_loss"] for r in _metrics(a)] == [r["train/unsup_loss"] for r in _metrics(b)]
    other = tiny_run(*FIXMATCH, "seed=3")
    assert not all(torch.equal(wa[k], v) for k, v in _student(other).items())


def test_ssl_none_is_the_supervised_module_unchanged(tiny_run):
    from omegaconf import OmegaConf

    from ecos_pl.scenarios import SupervisedModule, build_module

    cfg = OmegaConf.create({"seed": 1, "scenario": {"_target_": "ecos_pl.scenarios.labelled.Labelled", "name": "label_outsourcing",
                                                    "lr": 0.1, "ssl": "none", "fixmatch": {"threshold": 0.5}},
                            "backbone": {"student": "test_resnet"}})
    dm = SimpleNamespace(data=SimpleNamespace(num_classes=3))
    module, _ = build_module(cfg, dm, make_trainer=None)
    assert type(module) is SupervisedModule and dm.unlabelled is None
    cfg.scenario.ssl = "fixmatch"
    module, _ = build_module(cfg, dm, make_trainer=None)
    assert type(module) is FixMatchModule and module.hparams.threshold == 0.5 and isinstance(dm.unlabelled, FixMatchData)
    # end to end: ssl=none trains exactly what the configuration without the ssl keys trains (the old one)
    keep = ("scenario=label_outsourcing", "sampler=ecos", "callbacks=none")
    none = tiny_run(*keep, "scenario.ssl=none")
    old = tiny_run(*keep, "~scenario.ssl", "~scenario.fixmatch")
    assert none.results["client_test_acc"] == old.results["client_test_acc"]
    wn, wo = _student(none), _student(old)
    assert wn.keys() == wo.keys() and all(torch.equal(wn[k], wo[k]) for k in wn)


@pytest.mark.parametrize("override, sentence", [
    ("scenario.ssl=semi", "train.py: error: scenario.ssl='semi' is not one of: fixmatch, none."),
    ("scenario.fixmatch.threshold=1.5", "train.py: error: scenario.fixmatch.threshold must be a finite number in [0, 1], got 1.5."),
    ("scenario.fixmatch.unlabelled_ratio=0", "train.py: error: scenario.fixmatch.unlabelled_ratio must be at least 1, got 0."),
])
def test_bad_ssl_settings_are_one_sentence(tmp_path, override, sentence):
    run = call_main("train", tmp_path, "debug=smoke", "logger=csv", "callbacks=none", "scenario=label_outsourcing", override)
    assert run.code == 2
    assert run.stderr.strip().splitlines() == [sentence]
    assert run.results is None and not list(tmp_path.iterdir())
