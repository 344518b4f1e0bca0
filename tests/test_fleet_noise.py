"""A fleet's noise (issue 29, items 2 and 3): Skellam shares under a secure sum, calibrated by dp-accounting's RDP
conversion; local noise; the unit of privacy (sample or device) with its bound C."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ecos_pl.protocol.device import bound_counts, fleet_report, share_variance
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.messages import CentroidsMessage
from ecos_pl.protocol.parties import ECOSClient
from ecos_pl.protocol.privacy import NoiseSource, ScoreMechanism, gaussian_sigma, skellam_epsilon, skellam_noise, skellam_variance
from ecos_pl.protocol.secure_sum import SecureSumExchange


def _rdp_gaussian_epsilon(sigma: float, delta: float, sensitivity: float = 1.0) -> float:
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    from ecos_pl.protocol.privacy import SKELLAM_ORDERS

    acc = rdp_privacy_accountant.RdpAccountant(orders=SKELLAM_ORDERS)  # the Skellam bound's orders (integers)
    acc.compose(dp_accounting.GaussianDpEvent(sigma / sensitivity))
    return acc.get_epsilon(delta)


def test_skellam_epsilon_is_the_gaussians_plus_a_vanishing_surcharge_by_dp_accounting():
    for variance in (10.0, 45.0, 1e3, 1e5):
        gauss = _rdp_gaussian_epsilon(math.sqrt(variance), 1e-5)
        sk = skellam_epsilon(variance, 1e-5)
        assert sk >= gauss - 1e-9  # the surcharge is never negative
        assert sk <= gauss * (1 + 2.0 / variance**0.5)  # and vanishes as the variance grows
    assert skellam_epsilon(1e5, 1e-5) == pytest.approx(_rdp_gaussian_epsilon(math.sqrt(1e5), 1e-5), rel=1e-3)
    # a device's vector clipped to C: sensitivities (min(C², √R·C), C) cost as a Gaussian of sensitivity C would
    assert skellam_epsilon(1e5, 1e-5, l1=min(16, 8 * 4), l2=4) == pytest.approx(_rdp_gaussian_epsilon(math.sqrt(1e5), 1e-5, 4), rel=1e-2)


def test_the_calibrated_skellam_variance_is_the_least_that_meets_epsilon():
    v = skellam_variance(0.58, 1e-5)
    assert skellam_epsilon(v, 1e-5) <= 0.58 < skellam_epsilon(v * 0.995, 1e-5)
    assert v > gaussian_sigma(0.58, 1e-5) ** 2  # the analytic Gaussian (σ = 6.137) is tighter than any RDP bound
    assert math.sqrt(v) == pytest.approx(6.76, abs=0.02)
    with pytest.raises(ECOSInputError, match="epsilon must be a positive"):
        skellam_variance(0.0, 1e-5)


def test_skellam_sampler_has_its_mean_and_variance_and_sums_to_skellam():
    rng = NoiseSource(3)
    x = skellam_noise(3.0, 200_000, rng)
    assert x.dtype == np.int64
    assert abs(x.mean()) < 0.02 and x.var() == pytest.approx(3.0, rel=0.03)
    # 100 devices' shares of variance 45/100 sum to Skellam(45): the empirical CDF within 0.01 of scipy's (DKW: a
    # correct sampler fails this with probability 2·e^-10)
    from scipy.stats import skellam

    s = sum(skellam_noise(0.45, 50_000, rng) for _ in range(100))
    assert s.var() == pytest.approx(45.0, rel=0.03)
    grid = np.arange(-40, 41)
    empirical = np.searchsorted(np.sort(s), grid, side="right") / len(s)
    assert np.abs(empirical - skellam.cdf(grid, 22.5, 22.5)).max() < 0.01
    assert np.abs(empirical - skellam.cdf(grid, 30.0, 30.0)).max() > 0.02  # the test can tell variance 45 from 60
    # without a seed: from the OS's entropy, never the same twice
    assert not np.array_equal(skellam_noise(45.0, 64, NoiseSource(None)), skellam_noise(45.0, 64, NoiseSource(None)))


def _message(r=8, d=5, seed=0):
    c = np.random.default_rng(seed).normal(size=(r, d))
    return CentroidsMessage((c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32))


def _devices(n, per, *, noise, unit="sample", eps=0.58, min_answers=None, clip_norm=10.0, seed=0):
    rng = np.random.default_rng(seed)
    return [ECOSClient(rng.normal(size=(per, 5)).astype(np.float32), epsilon=eps, seed=100 + i, noise=noise, unit=unit,
                       clip_norm=clip_norm, min_answers=min_answers or n) for i in range(n)]


def test_distributed_shares_sum_to_the_exact_counts_plus_one_calibrated_skellam():
    message = _message()
    devices = _devices(20, 15, noise="distributed")
    exact = sum(ECOSClient(d.upload_features(), epsilon=None).score(message).scores.astype(np.int64) for d in devices)
    shares = [d.share(message) for d in devices]
    share_var, total_var = share_variance(devices[0].privacy, "sample", 10.0, 8, 20)
    assert share_var == pytest.approx(total_var / 20) and total_var == pytest.approx(skellam_variance(0.58, 1e-5))
    # the same fleet again (each device spends its whole budget on one answer; its ledger refuses a second)
    (summed,) = SecureSumExchange(_devices(20, 15, noise="distributed")).send_and_receive(message)
    np.testing.assert_array_equal(summed.scores, np.maximum(sum(shares), 0))  # seeded shares: the same again
    with pytest.raises(ECOSInputError, match="only 0 is left"):
        devices[0].share(message)
    assert np.abs(sum(shares) - exact).max() < 8 * math.sqrt(total_var)
    # a share alone is not private: a device refuses to answer one in the clear
    with pytest.raises(ECOSInputError, match="client.noise=distributed needs a secure sum"):
        _devices(1, 15, noise="distributed")[0].score(message)
    # the dropout margin: shares sized for min_answers=10 put twice the variance per device
    assert share_variance(devices[0].privacy, "sample", 10.0, 8, 10)[0] == pytest.approx(2 * share_var)


def test_local_noise_puts_sqrt_n_sigma_in_the_sum_and_distributed_noise_sigma_once():
    mech = ScoreMechanism("gaussian", 0.58, 1e-5)
    local = fleet_report(mech, "local", "sample", 10.0, 100, 100, 8)
    dist = fleet_report(mech, "distributed", "sample", 10.0, 100, 100, 8)
    assert local["sum_sigma"] == pytest.approx(10 * gaussian_sigma(0.58, 1e-5))
    assert dist["sum_sigma"] == pytest.approx(math.sqrt(skellam_variance(0.58, 1e-5)))
    assert dist["device_sigma"] == pytest.approx(dist["sum_sigma"] / 10)


def test_device_unit_clips_each_device_to_c_and_scales_sigma_by_c():
    counts = np.array([30.0, 40.0, 0.0, 1.0])
    bounded = bound_counts(counts, 71, "device", 10.0)
    assert np.linalg.norm(bounded) <= 10.0 and np.all(bounded == np.floor(bounded)) and bounded[0] < bounded[1]
    np.testing.assert_array_equal(bound_counts(counts, 71, "sample"), counts)  # an honest device: untouched
    np.testing.assert_array_equal(bound_counts(np.array([500.0, 2.0]), 20, "sample"), [20.0, 2.0])  # no count above n
    device = _devices(1, 200, noise="local", unit="device", clip_norm=4.0)[0]
    assert device.privacy.noise_scale == pytest.approx(4.0 * gaussian_sigma(0.58, 1e-5))
    report = fleet_report(device.privacy, "local", "device", 4.0, 1, 1, 8)
    assert report["clip_norm"] == 4.0 and report["device_sigma"] == pytest.approx(4 * 6.137, rel=1e-3)
    assert device.privacy.report()["sensitivity"] == 4.0
    # the dp-accounting event is the Gaussian of multiplier σ/C, so its ε is the asked one
    from ecos_pl.protocol.privacy import composed_epsilon

    assert composed_epsilon([device.privacy.dp_event()], 1e-5, "pld") == pytest.approx(0.58, abs=0.01)
    with pytest.raises(ECOSInputError, match=r"client.unit='user' is not one of: sample, device"):
        ECOSClient(np.ones((3, 5), np.float32), unit="user")


def test_train_pipeline_with_distributed_noise_keeps_the_one_device_in_domain_share(tmp_path):
    from ecos_pl.data.digits_lite import DigitsLite
    from ecos_pl.phi import PCAPixels
    from ecos_pl.pipeline import ProtocolPipeline
    from ecos_pl.protocol.samplers import ECOSSampler
    from ecos_pl.protocol.settings import Allocation, Clustering, ScorePrivacy

    source = DigitsLite(seed=1, client_domain="photo", cache_dir=str(tmp_path / "data"))

    def run(clients, noise):
        p = ProtocolPipeline(source, PCAPixels(n_components=16, seed=1), ECOSSampler(Clustering(n_centroids=32), Allocation()),
                             budget=100, seed=1, score_privacy=ScorePrivacy(noise=noise), clients=clients)
        return p.select()[1]

    one, local, dist = run(1, "local"), run(30, "local"), run(30, "distributed")
    assert dist.score_privacy["noise"] == "distributed" and dist.score_privacy["sum_sigma"] == pytest.approx(6.76, abs=0.02)
    assert local.score_privacy["sum_sigma"] == pytest.approx(math.sqrt(30) * 6.137, rel=1e-3)
    assert dist.bytes_up == 30 * (32 + 4 * 32)
    assert dist.in_domain_fraction > local.in_domain_fraction + 0.1
    assert dist.in_domain_fraction >= one.in_domain_fraction - 0.15


def test_flower_secagg_with_distributed_noise_unmasks_the_in_process_secure_sum(tmp_path, monkeypatch, caplog):
    """Three devices add Skellam shares under Flower's SecAgg+: the cloud unmasks exactly the in-process secure sum
    (seeded simulation devices), so the proxy set is train.py's `clients=3 client.noise=distributed` one."""
    pytest.importorskip("flwr", reason="the flower extra is not installed (uv sync --extra flower)")
    import json
    import logging

    from ecos_pl.data.digits_lite import DigitsLite
    from ecos_pl.flower import simulate, simulation_apps
    from ecos_pl.phi import PCAPixels
    from ecos_pl.pipeline import ProtocolPipeline
    from ecos_pl.protocol.samplers import ECOSSampler
    from ecos_pl.protocol.settings import Allocation, Clustering, ScorePrivacy

    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    pipeline = ProtocolPipeline(
        DigitsLite(seed=1, client_domain="photo", cache_dir=str(tmp_path / "data")), PCAPixels(n_components=16, seed=1),
        ECOSSampler(Clustering(n_centroids=12), Allocation(client_cap=None)), budget=60, seed=3,
        score_privacy=ScorePrivacy(noise="distributed"), clients=3)
    selection, report = pipeline.select()
    server, client = simulation_apps(pipeline, tmp_path / "flower", secagg={"clip": 4096})
    backend = {"init_args": {"num_cpus": 1, "include_dashboard": False, "log_to_driver": False},
               "client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
    with caplog.at_level(logging.INFO):
        simulate(server, client, 3, backend, timeout=150.0)
    summary = json.loads((tmp_path / "flower" / "proxy_set.json").read_text())
    assert summary["proxy_set_sha1"] == report.proxy_set_sha1 and summary["n_clients"] == 3
    assert "the cloud received only masked vectors from 3 of 3 clients" in caplog.text
    assert report.score_privacy["noise"] == "distributed"


@pytest.mark.parametrize("settings, match", [
    ({"noise": "shared"}, r"client.noise='shared' is not one of: local, distributed"),
    ({"unit": "user"}, r"client.unit='user' is not one of: sample, device"),
    ({"clip_norm": 0}, r"client.clip_norm"),
    ({"min_answers": 0}, r"client.min_answers must be at least 1"),
    ({"noise": "distributed", "mechanism": "laplace"}, r"client.mechanism=laplace goes with noise=local and unit=sample"),
])
def test_fleet_settings_errors_name_the_key(settings, match):
    from ecos_pl.protocol.settings import ScorePrivacy

    with pytest.raises(ECOSInputError, match=match):
        ScorePrivacy(**settings)
