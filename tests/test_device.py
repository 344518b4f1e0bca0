"""A device owns its data, its noise and its privacy floor (issue 29, item 1); the cloud's checks on answers (item 4)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ecos_pl.protocol.device import DeviceConfig, DeviceRefusal, PrivacyFloor
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.messages import CentroidsMessage
from ecos_pl.protocol.privacy import ScoreMechanism


def _centroids(r=8, d=6, seed=0) -> CentroidsMessage:
    c = np.random.default_rng(seed).normal(size=(r, d))
    return CentroidsMessage((c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32))


def _features(n=40, d=6, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


# ---------------------------------------------------------------------- the floor


def test_floor_refuses_weaker_privacy_and_accepts_stronger():
    floor = PrivacyFloor()  # the paper's 0.58 / 1e-5
    assert floor.check(ScoreMechanism("gaussian", 0.58, 1e-5)).epsilon == 0.58
    assert floor.check(ScoreMechanism("gaussian", 0.1, 1e-6)).epsilon == 0.1
    assert floor.check(ScoreMechanism("laplace", 0.5)).mechanism == "laplace"  # pure ε-DP: δ = 0
    with pytest.raises(DeviceRefusal, match=r"asks for epsilon=1, weaker than this device's max-epsilon=0.58; the device refuses"):
        floor.check(ScoreMechanism("gaussian", 1.0, 1e-5))
    with pytest.raises(DeviceRefusal, match=r"asks for exact counts \(epsilon none\)"):
        floor.check(ScoreMechanism("none", None))
    with pytest.raises(DeviceRefusal, match=r"asks for delta=0.001, weaker than this device's max-delta=1e-05"):
        floor.check(ScoreMechanism("gaussian", 0.5, 1e-3))
    assert PrivacyFloor(epsilon=2.0).check(ScoreMechanism("gaussian", 1.0, 1e-5)).epsilon == 1.0


@pytest.mark.parametrize("config, match", [
    ({"client-index": 0, "max-epsilon": "lots"}, r"max-epsilon in the node config must be a number"),
    ({"client-index": 0, "max-epsilon": -1.0}, r"epsilon must be a positive"),
    ({"client-index": 0, "max-delta": 2.0}, r"max-delta must lie in \(0, 1\)"),
    ({"client-index": 0, "seed": 1.5}, r"seed must be a whole number"),
    ({"images": "/tmp"}, r"images in the node config needs phi"),
    ({"phi": "/tmp/phi.safetensors"}, r"phi in the node config goes with images"),
    ({}, r"the node config has neither 'images'"),
])
def test_node_config_errors_name_the_key(config, match):
    with pytest.raises(ECOSInputError, match=match):
        DeviceConfig.from_node_config(config)


# ---------------------------------------------------------------------- the deployed ClientApp's device

flwr = pytest.importorskip("flwr", reason="the flower extra is not installed (uv sync --extra flower)")


class _Context:
    """What a ClientApp reads of Flower's `Context`: its node's id and config, and the cloud's run config."""

    def __init__(self, node_config, run_config, node_id=11):
        self.node_config, self.run_config, self.node_id = dict(node_config), dict(run_config), node_id


def _run_config(**extra):
    from ecos_pl.flower.run_config import fused_run_config

    return fused_run_config({"clients": 2, "min-answers": 1, "seed": 5, **extra})


def _shard(run_config, index):  # a demo device's shard, without building train.py's data
    return _features(seed=10 + index)


def test_a_cloud_that_knows_the_run_config_cannot_reproduce_a_devices_noise():
    from ecos_pl.flower.apps import device_client
    from ecos_pl.protocol.parties import ECOSClient

    run_config, message = _run_config(), _centroids()
    first = device_client(_Context({"client-index": 1}, run_config), _shard)
    again = device_client(_Context({"client-index": 1}, run_config), _shard)
    assert first.seed is None and first.epsilon == 0.58
    a, b = first.score(message).scores, again.score(message).scores
    assert not np.array_equal(a, b)  # the same device twice, the same data: fresh OS noise each time
    # what the cloud can compute from the run config: every seed it could have derived (train.py's seed·1000+i)
    for seed in (5, 5 * 1000 + 1, 1, 0, None):
        guess = ECOSClient(_features(seed=11), epsilon=0.58, seed=seed).score(message).scores
        assert not np.array_equal(guess, a)
    exact = ECOSClient(_features(seed=11), epsilon=None).score(message).scores
    assert np.abs(a - exact).max() > 0.5  # the noise is there (σ = 6.1)
    # the device's own seed (simulations, tests) makes it reproducible, for whoever knows that seed only
    seeded = [device_client(_Context({"client-index": 1, "seed": 77}, run_config), _shard).score(message).scores for _ in range(2)]
    np.testing.assert_array_equal(seeded[0], seeded[1])
    np.testing.assert_array_equal(seeded[0], ECOSClient(_features(seed=11), epsilon=0.58, seed=77).score(message).scores)


def test_a_device_refuses_a_run_config_weaker_than_its_floor_and_the_cloud_sees_a_refusal(caplog, monkeypatch):
    from flwr.app import Context, Message, RecordDict

    from ecos_pl.flower.apps import REFUSED, client_app, device_client
    from ecos_pl.flower.exchange import MESSAGE_TYPE, encode
    from flower_fakes import fake_task_identity

    fake_task_identity(monkeypatch)
    app = client_app(lambda context: device_client(context, _shard))

    def ask(run_config, node_config):
        context = Context(run_id=0, node_id=7, node_config=node_config, state=RecordDict(), run_config=run_config)
        message = Message(encode(_centroids()), dst_node_id=7, message_type=MESSAGE_TYPE)
        return app(message, context)

    with caplog.at_level(logging.WARNING):
        for run_config in (_run_config(epsilon=2.0), _run_config(epsilon="none"),
                           _run_config(overrides="client.epsilon=1e6")):
            reply = ask(run_config, {"client-index": 0})
            assert reply.has_error() and reply.error.code == REFUSED and "refused" in reply.error.reason
    refusals = [r.getMessage() for r in caplog.records if "refuses to answer" in r.getMessage()]
    assert len(refusals) == 3 and all(m.count(".") <= 3 for m in refusals)
    assert "asks for epsilon=2, weaker than this device's max-epsilon=0.58" in refusals[0]
    assert "exact counts" in refusals[1] and "epsilon=1e+06" in refusals[2]
    # a stronger ask is answered; a device whose own floor is weaker answers the weaker ask
    assert not ask(_run_config(epsilon=0.3), {"client-index": 0}).has_error()
    assert not ask(_run_config(epsilon=2.0), {"client-index": 1, "max-epsilon": 4.0}).has_error()


def _image_folder(folder, colour, n, seed):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = np.clip(np.array(colour) + rng.normal(0, 30, size=(16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")


def test_a_deployed_device_reads_its_images_from_its_node_config(tmp_path):
    from ecos_pl.cli.common import decode_images, list_images
    from ecos_pl.flower.apps import device_client
    from ecos_pl.phi import PCAPixels
    from ecos_pl.phi_file import phi_file_bytes
    from ecos_pl.protocol.features import unit_rows
    from ecos_pl.protocol.messages import phi_tag

    phi = PCAPixels(n_components=6, seed=1)
    phi.fit(np.random.default_rng(0).integers(0, 256, size=(30, 16, 16, 3), dtype=np.uint8))
    (tmp_path / "phi.safetensors").write_bytes(phi_file_bytes(phi, 16))
    _image_folder(tmp_path / "mine" / "a", (200, 40, 40), 5, 0)
    _image_folder(tmp_path / "mine", (40, 40, 200), 2, 1)  # images at any depth are the device's
    node = {"images": str(tmp_path / "mine"), "phi": str(tmp_path / "phi.safetensors")}

    def no_shared_data(run_config, index):
        raise AssertionError("a device with its own images must not build the run config's data")

    device = device_client(_Context(node, _run_config()), no_shared_data)
    images, _ = decode_images(tmp_path / "mine", list_images(tmp_path / "mine", "images"), 16, "images")
    assert device.n_samples == 7 and device.seed is None
    np.testing.assert_allclose(device.upload_features(), unit_rows(phi.transform(images), "x"), atol=1e-5)
    tagged = CentroidsMessage(_centroids().centroids, tag=phi_tag(phi.fingerprint()))
    assert device.score(tagged).n_centroids == 8
    with pytest.raises(ECOSInputError, match=r"computed with another φ .* than this device's phi file"):
        device.score(CentroidsMessage(_centroids().centroids, tag=b"\x00\x01\x02\x03"))
    with pytest.raises(ECOSInputError, match=r"images .*nowhere.* is not a folder"):
        device_client(_Context({**node, "images": str(tmp_path / "nowhere")}, _run_config()), no_shared_data)


def test_distributed_noise_needs_secagg_and_reaches_the_device_with_the_runs_min_answers():
    from ecos_pl.flower.apps import device_client
    from ecos_pl.flower.run_config import run_settings

    with pytest.raises(ECOSInputError, match=r"client.noise=distributed needs secagg=true"):
        run_settings(_run_config(overrides="client.noise=distributed"))
    run_config = _run_config(overrides="client.noise=distributed", secagg=True, **{"client-cap": "none", "clients": 3,
                                                                                   "min-answers": 2})
    device = device_client(_Context({"client-index": 0}, run_config), _shard)
    assert device.noise == "distributed" and device.min_answers == 2 and device.seed is None
    share = device.share(_centroids())
    assert share.dtype == np.int64 and share.shape == (8,)
    with pytest.raises(DeviceRefusal, match="epsilon=0.9"):  # the floor holds whatever the noise
        device_client(_Context({"client-index": 0}, {**run_config, "epsilon": 0.9}), _shard)
