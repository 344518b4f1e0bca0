"""The protocol core on arrays: compress, coverage_scores, select, samplers."""

import subprocess
import sys

import numpy as np
import pytest

from ecos_pl.protocol import (
    CentroidsMessage,
    ECOSClient,
    ECOSCloud,
    allocate_budget,
    compress,
    coverage_scores,
    kcenter_greedy,
    make_sampler,
    scoring_macs,
    select,
)


def in_component(mixture, indices):
    return float(np.mean(mixture["component"][indices] == mixture["client_component"]))


def test_ecos_proxy_set_comes_from_the_client_component(mixture):
    sel = make_sampler("ecos", n_centroids=64).sample(mixture["pool"], ECOSClient(mixture["client"]), 400, seed=1)
    assert sel.n_selected == 400
    assert in_component(mixture, sel.indices) >= 0.9


def test_random_proxy_set_is_near_the_base_rate(mixture):
    sel = make_sampler("random").sample(mixture["pool"], ECOSClient(mixture["client"]), 400, seed=1)
    assert sel.n_selected == 400
    assert abs(in_component(mixture, sel.indices) - mixture["base_rate"]) < 0.04
    assert sel.bytes_up == 0 and sel.bytes_down == 0


def test_full_returns_the_whole_pool(mixture):
    sel = make_sampler("full").sample(mixture["pool"], ECOSClient(mixture["client"]), None, seed=1)
    np.testing.assert_array_equal(sel.indices, np.arange(len(mixture["pool"])))


@pytest.mark.parametrize("name", ["ecos", "random"])
def test_same_seed_same_selection(mixture, name):
    a = make_sampler(name).sample(mixture["pool"], ECOSClient(mixture["client"]), 300, seed=7)
    b = make_sampler(name).sample(mixture["pool"], ECOSClient(mixture["client"]), 300, seed=7)
    np.testing.assert_array_equal(a.indices, b.indices)


def test_selection_is_unique_sorted_and_in_range(mixture):
    sel = make_sampler("ecos", n_centroids=32).sample(mixture["pool"], ECOSClient(mixture["client"]), 450, seed=3)
    assert len(np.unique(sel.indices)) == len(sel.indices) == 450
    assert np.all(np.diff(sel.indices) > 0)
    assert sel.indices.min() >= 0 and sel.indices.max() < len(mixture["pool"])


def test_scores_count_every_client_sample_without_noise(mixture):
    message, _ = compress(mixture["pool"], 50, seed=1)
    reply = coverage_scores(mixture["client"], message)
    assert reply.scores.shape == (50,)
    assert reply.scores.sum() == len(mixture["client"])
    assert reply.epsilon is None


def test_noisy_scores_are_nonnegative_and_of_length_r(mixture):
    message, _ = compress(mixture["pool"], 50, seed=1)
    exact = coverage_scores(mixture["client"], message)
    noisy = coverage_scores(mixture["client"], message, epsilon=0.5, seed=3)
    assert noisy.scores.shape == (50,)
    assert (noisy.scores >= 0).all()
    assert noisy.epsilon == 0.5
    assert not np.array_equal(noisy.scores, exact.scores)
    # same seed, same noise
    np.testing.assert_array_equal(noisy.scores, coverage_scores(mixture["client"], message, epsilon=0.5, seed=3).scores)


def test_radius_stops_far_samples_from_voting(mixture):
    message, _ = compress(mixture["pool"], 20, seed=1, send_radii=True)
    assert message.radii is not None and (message.radii > 0).all()
    far = np.full((5, mixture["pool"].shape[1]), 0.0, dtype=np.float32)
    far[:, 0] = 1.0
    far[:, 1] = np.linspace(-1, 1, 5)
    inside = mixture["pool"][:50]
    with_radii = coverage_scores(np.concatenate([inside, far]), message)
    without = coverage_scores(np.concatenate([inside, far]), message, use_radii=False)
    assert without.scores.sum() == 55
    assert with_radii.scores.sum() < 55


def test_allocation_follows_scores_by_largest_remainder():
    alloc = allocate_budget([1, 1, 1], [100, 100, 100], 10)
    np.testing.assert_array_equal(alloc, [4, 3, 3])
    alloc = allocate_budget([3, 1, 0], [100, 100, 100], 8)
    np.testing.assert_array_equal(alloc, [6, 2, 0])


def test_allocation_caps_at_cluster_size_and_respreads_overflow():
    alloc = allocate_budget([10, 1, 1, 0], [5, 100, 100, 100], 40)
    assert alloc[0] == 5 and alloc[3] == 0
    assert alloc.sum() == 40
    assert alloc[1] + alloc[2] == 35 and abs(alloc[1] - alloc[2]) <= 1


def test_allocation_stops_when_scored_clusters_are_full():
    with pytest.warns(UserWarning, match="budget=50 but the clusters the client scored hold only 7"):
        alloc = allocate_budget([1, 1, 0], [3, 4, 100], 50)
    np.testing.assert_array_equal(alloc, [3, 4, 0])


def test_temperature_sharpens_the_split():
    sharp = allocate_budget([4, 1], [1000, 1000], 100, temperature=0.5)
    flat = allocate_budget([4, 1], [1000, 1000], 100, temperature=2.0)
    np.testing.assert_array_equal(sharp, [94, 6])  # 16:1
    np.testing.assert_array_equal(flat, [67, 33])  # 2:1


def test_kcenter_greedy_starts_at_first_and_goes_farthest_first():
    x = np.array([[0.0], [1.0], [2.0], [10.0], [5.0]], dtype=np.float32)
    picked = kcenter_greedy(x, 3, first=0)
    np.testing.assert_array_equal(picked, [0, 3, 4])
    assert len(kcenter_greedy(x, 10, first=1)) == 5


def test_select_covers_a_cluster_rather_than_its_centre(mixture):
    cloud = ECOSCloud(mixture["pool"], 20, seed=1)
    message = cloud.compress()
    scores = np.zeros(20)
    target = int(np.argmax(cloud.clusters.sizes))
    scores[target] = 1
    indices, alloc = select(cloud.pool_features, cloud.clusters, scores, 30)
    members = cloud.clusters.members(target)
    assert set(indices) <= set(members) and alloc[target] == 30
    # k-center picks are more spread than the 30 members nearest the centroid
    nearest = members[np.argsort(cloud.clusters.sq_distances[members])[:30]]
    spread = lambda idx: np.mean(np.linalg.norm(cloud.pool_features[idx] - message.centroids[target], axis=1))  # noqa: E731
    assert spread(indices) > spread(nearest)


def test_fleet_scores_are_summed(mixture):
    cloud = ECOSCloud(mixture["pool"], 40, seed=1)
    message = cloud.compress()
    a = ECOSClient(mixture["client"][:150]).score(message)
    b = ECOSClient(mixture["client"][150:]).score(message)
    both = ECOSClient(mixture["client"]).score(message)
    np.testing.assert_array_equal(cloud.select([a, b], 200), cloud.select(both, 200))


def test_upload_is_four_bytes_per_centroid_plus_a_small_header(mixture):
    sel = make_sampler("ecos", n_centroids=64).sample(mixture["pool"], ECOSClient(mixture["client"]), 400, seed=1)
    assert sel.bytes_up <= 4 * 64 + 64
    assert sel.bytes_down >= 4 * 64 * mixture["pool"].shape[1]
    assert sel.client_macs == scoring_macs(len(mixture["client"]), CentroidsMessage(np.zeros((64, 32))))


def test_protocol_core_imports_no_lightning():
    code = (
        "import sys, ecos_pl.protocol, ecos_pl.data.digits_lite; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning', 'lightning_fabric')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_oracle_central_uses_the_uploaded_features(mixture):
    sel = make_sampler("oracle_central").sample(mixture["pool"], ECOSClient(mixture["client"]), 400, seed=1)
    assert sel.n_selected == 400 and len(np.unique(sel.indices)) == 400
    assert in_component(mixture, sel.indices) >= 0.9
    assert sel.bytes_up == mixture["client"].size * 4  # every client feature crossed: a reference, not a protocol


def test_baselines_that_ignore_the_client_stay_near_the_base_rate(mixture):
    for name in ("kcenter", "uniform_cluster"):
        sel = make_sampler(name).sample(mixture["pool"], ECOSClient(mixture["client"]), 400, seed=1)
        assert sel.n_selected == 400 and len(np.unique(sel.indices)) == 400
        assert sel.bytes_up == 0
        assert in_component(mixture, sel.indices) < 3 * mixture["base_rate"]
    # uniform_cluster spreads the budget evenly: no cluster gets more than its fair share plus one
    sel = make_sampler("uniform_cluster", n_centroids=40).sample(mixture["pool"], ECOSClient(mixture["client"]), 400, seed=1)
    assert sel.diagnostics["allocation"].max() <= 400 // 40 + 1


def test_kcenter_is_spread_out(mixture):
    kc = make_sampler("kcenter").sample(mixture["pool"], ECOSClient(mixture["client"]), 100, seed=1)
    rnd = make_sampler("random").sample(mixture["pool"], ECOSClient(mixture["client"]), 100, seed=1)
    x = mixture["pool"] / np.linalg.norm(mixture["pool"], axis=1, keepdims=True)

    def min_pairwise(idx):
        d = np.linalg.norm(x[idx][:, None] - x[idx][None], axis=2)
        return d[np.triu_indices(len(idx), 1)].min()

    assert min_pairwise(kc.indices) > min_pairwise(rnd.indices)


def test_laplace_releases_compose():
    from ecos_pl.protocol import laplace_epsilon

    assert laplace_epsilon([1.0, 0.5]) == 1.5  # pure ε-DP adds up
    assert laplace_epsilon([None]) == 0.0  # exact counts spend nothing
    approx = laplace_epsilon([1.0] * 10, delta=1e-5)  # PLD accounting at δ > 0 is no worse than the sum
    assert 0.0 < approx <= 10.0
