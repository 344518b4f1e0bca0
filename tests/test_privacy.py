"""Privacy of both client releases: calibrated mechanisms, Private-kNN subsampling, accounting, budgets."""

import math

import numpy as np
import pytest
from scipy import stats

from ecos_pl.protocol import ECOSClient, compress
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.label import PseudoLabeller, knn_votes, label_epsilon, query_dp_event, subsample_masks
from ecos_pl.protocol.messages import ProxyFeaturesMessage
from ecos_pl.protocol.privacy import NoiseSource, ScoreMechanism, check_budget, gaussian_sigma
from ecos_pl.protocol.score import coverage_scores


def released_noise(mechanism: str, epsilon: float, seed, n_draws: int = 600, mixture=None):
    """Released minus exact scores over many independent releases, on the counts far from zero."""
    pool = mixture["pool"]
    client = pool[::2]  # spread over every cluster: eight large counts per release
    message, _ = compress(pool, 8, seed=0)
    exact = coverage_scores(client, message, epsilon=None).scores.astype(np.float64)
    assert (exact == 0).sum() < len(exact)
    rows = []
    for i in range(n_draws):
        s = None if seed is None else seed + i
        rows.append(coverage_scores(client, message, epsilon=epsilon, mechanism=mechanism, delta=1e-5, seed=s).scores - exact)
    # clipping at zero moves only the noise of counts near zero: keep the counts that are far from it
    far = exact > 60
    return np.concatenate([r[far] for r in rows])


@pytest.mark.parametrize("seed", [7, None], ids=["seeded", "csprng"])
def test_gaussian_scores_have_the_calibrated_sigma(mixture, seed):
    sigma = gaussian_sigma(1.0, 1e-5)
    noise = released_noise("gaussian", 1.0, seed, mixture=mixture)
    assert stats.kstest(noise / sigma, "norm").pvalue > 1e-3
    assert stats.kstest(noise / (1.2 * sigma), "norm").pvalue < 1e-3  # a σ off by 20 % is rejected


@pytest.mark.parametrize("seed", [7, None], ids=["seeded", "csprng"])
def test_laplace_scores_have_scale_one_over_epsilon(mixture, seed):
    noise = released_noise("laplace", 0.5, seed, mixture=mixture)
    assert stats.kstest(noise, "laplace", args=(0, 2.0)).pvalue > 1e-3
    assert stats.kstest(noise, "laplace", args=(0, 2.4)).pvalue < 1e-3


def test_gaussian_sigma_is_dp_accountings_calibration():
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    sigma = gaussian_sigma(0.58, 1e-5)
    # independently: the PLD accountant's ε of one Gaussian release at that σ is the target ε
    accountant = pld_privacy_accountant.PLDAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(sigma))
    assert accountant.get_epsilon(1e-5) == pytest.approx(0.58, abs=0.01)
    assert sigma == pytest.approx(6.137, abs=0.01)
    assert sigma < math.sqrt(2 * math.log(1.25 / 1e-5)) / 0.58  # tighter than the classic bound


def test_seeded_noise_is_reproducible_and_csprng_noise_is_not(mixture):
    message, _ = compress(mixture["pool"], 8, seed=0)
    a = ECOSClient(mixture["client"], epsilon=0.58, seed=3).score(message).scores
    b = ECOSClient(mixture["client"], epsilon=0.58, seed=3).score(message).scores
    np.testing.assert_array_equal(a, b)
    c = ECOSClient(mixture["client"], epsilon=0.58).score(message).scores
    d = ECOSClient(mixture["client"], epsilon=0.58).score(message).scores
    assert not np.array_equal(c, d)
    assert NoiseSource(None).secure and not NoiseSource(1).secure


def test_exact_counts_are_an_explicit_choice(mixture):
    message, _ = compress(mixture["pool"], 8, seed=0)
    client = ECOSClient(mixture["client"], epsilon=None)
    assert client.privacy.mechanism == "none" and client.privacy.report()["noise_sigma"] == 0.0
    assert client.score(message).epsilon is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mechanism": "gaussian", "epsilon": 0.0}, "epsilon must be a positive"),
        ({"mechanism": "gaussian", "epsilon": -1.0}, "epsilon must be a positive"),
        ({"mechanism": "gaussian", "epsilon": 1.0, "delta": 0.0}, r"delta must lie in \(0, 1\)"),
        ({"mechanism": "gaussian", "epsilon": 1.0, "delta": 1.5}, r"delta must lie in \(0, 1\)"),
        ({"mechanism": "uniform", "epsilon": 1.0}, "mechanism='uniform' is not one of"),
        ({"mechanism": "none", "epsilon": 1.0}, "epsilon must be null"),
        ({"mechanism": "gaussian", "epsilon": 1e-12, "delta": 1e-12}, "gives no usable Gaussian noise"),
    ],
)
def test_bad_mechanism_settings_are_one_sentence(kwargs, match):
    with pytest.raises(ECOSInputError, match=match):
        ScoreMechanism(**kwargs)


def test_a_query_depends_only_on_its_subsample():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(300, 16)).astype(np.float32)
    labels = rng.integers(0, 3, size=300)
    queries = rng.normal(size=(5, 16)).astype(np.float32)
    masks = subsample_masks(5, 300, 0.3, np.random.default_rng(11))
    votes = knn_votes(feats, labels, queries, 10, 3, 0.3, np.random.default_rng(11))
    # change every client sample outside query 0's subsample: its votes stay the same
    outside = ~masks[0]
    changed_feats, changed_labels = feats.copy(), labels.copy()
    changed_feats[outside] = rng.normal(size=(int(outside.sum()), 16))
    changed_labels[outside] = (labels[outside] + 1) % 3
    again = knn_votes(changed_feats, changed_labels, queries, 10, 3, 0.3, np.random.default_rng(11))
    np.testing.assert_array_equal(votes[0], again[0])
    assert votes[0].sum() == 10
    # ... and the labeller's answers for that query too (same seed: same subsamples, same noise)
    down = ProxyFeaturesMessage(queries)
    a = PseudoLabeller(feats, labels, 3, k=10, sigma=1.0, threshold=None, sampling_rate=0.3, seed=4).label(down).labels
    b = PseudoLabeller(changed_feats, changed_labels, 3, k=10, sigma=1.0, threshold=None, sampling_rate=0.3, seed=4)
    assert a[0] == b.label(down).labels[0]


def test_subsample_rate_is_the_poisson_rate():
    masks = subsample_masks(200, 1000, 0.2, np.random.default_rng(0))
    assert masks.mean() == pytest.approx(0.2, abs=0.005)
    assert len({m.tobytes() for m in masks}) == 200  # a fresh subsample per query


def test_label_epsilon_is_dp_accountings_composition_and_grows_with_b():
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    scores = ScoreMechanism("gaussian", 0.58, 1e-5)
    eps = label_epsilon(4.0, 400, 1e-5, [scores], sampling_rate=0.2)
    accountant = rdp_privacy_accountant.RdpAccountant()
    query = dp_accounting.PoissonSampledDpEvent(0.2, dp_accounting.GaussianDpEvent(4.0 / math.sqrt(2)))
    accountant.compose(dp_accounting.SelfComposedDpEvent(query, 400))
    accountant.compose(dp_accounting.GaussianDpEvent(scores.noise_scale))
    assert eps == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert eps <= 8.0  # the default's exchange at B = 400 (issue: ≤ 8)
    grow = [label_epsilon(4.0, b, 1e-5, sampling_rate=0.2) for b in (100, 200, 400, 800)]
    assert grow == sorted(grow) and grow[0] < grow[-1]
    assert label_epsilon(4.0, 400, 1e-5, sampling_rate=1.0) > 3 * label_epsilon(4.0, 400, 1e-5, sampling_rate=0.2)  # amplification
    # screening is accounted: it costs something
    assert label_epsilon(4.0, 400, 1e-5, sampling_rate=0.2, screen_sigma=8.0) > label_epsilon(4.0, 400, 1e-5, sampling_rate=0.2)
    assert isinstance(query_dp_event(4.0, 1.0), dp_accounting.GaussianDpEvent)
    assert label_epsilon(None, 400, 1e-5) == math.inf
    assert label_epsilon(4.0, 400, 1e-5, [ScoreMechanism("none", None)]) == math.inf


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5])
def test_bad_sampling_rate_is_one_sentence(rate):
    with pytest.raises(ECOSInputError, match=r"sampling_rate must lie in \(0, 1\]"):
        label_epsilon(4.0, 10, 1e-5, sampling_rate=rate)


def test_epsilon_budget_exceeded_stops_with_one_sentence():
    check_budget(3.0, None, "x")
    check_budget(3.0, 5.0, "x")
    with pytest.raises(ECOSInputError, match=r"client.max_epsilon=2 would be exceeded: labelling costs ε = 3"):
        check_budget(3.0, 2.0, "labelling")


def test_replace_one_epsilon_is_the_gaussian_at_sensitivity_root_two():
    """Replacing a sample moves two counts by one: the release is a Gaussian mechanism of L2 sensitivity √2, so the
    calibration of that ε at sensitivity √2 must give back the σ the client adds (0.58 add/remove -> 0.85 replace-one)."""
    m = ScoreMechanism()
    eps = m.report()["epsilon_replace_one"]
    assert 0.8 < eps < 0.9
    assert gaussian_sigma(eps, m.delta, sensitivity=math.sqrt(2.0)) == pytest.approx(m.noise_scale, rel=2e-3)
    assert ScoreMechanism("laplace", 0.5).report()["epsilon_replace_one"] == 1.0
    assert ScoreMechanism.from_settings(None).report()["epsilon_replace_one"] is None


def test_pld_is_tighter_than_rdp_and_reaches_the_papers_range_at_b_3000():
    """The whole exchange (scores at 0.58 + B Private-kNN answers) by both accountants: PLD never above RDP; at
    B = 3000 with γ = 0.05, σ = 4 it is within the paper's ε ≤ 5.4; replace-one costs more than add/remove."""
    scores = [ScoreMechanism()]
    rdp = label_epsilon(4.0, 3000, 1e-5, scores, sampling_rate=0.05)
    pld = label_epsilon(4.0, 3000, 1e-5, scores, sampling_rate=0.05, accountant="pld")
    replace = label_epsilon(4.0, 3000, 1e-5, scores, sampling_rate=0.05, accountant="pld", adjacency="replace_one")
    assert pld < rdp and pld <= 5.4 < rdp + 1.0
    assert replace > pld


@pytest.mark.parametrize("kwargs, match", [({"accountant": "moments"}, "accountant='moments' is not one of"),
                                           ({"adjacency": "swap"}, "adjacency='swap' is not one of"),
                                           ({"adjacency": "replace_one"}, "replace_one' is accounted by the pld accountant only")])
def test_bad_accounting_choices_are_one_sentence(kwargs, match):
    with pytest.raises(ECOSInputError, match=match):
        label_epsilon(4.0, 10, 1e-5, [ScoreMechanism()], sampling_rate=0.2, **kwargs)
