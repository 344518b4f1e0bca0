"""The pool's φ features cached on disk: written once and atomically, reused, keyed by data and φ, sharded under DDP."""

import json
import threading

import numpy as np
import pytest
import torch

from ecos_pl import feature_cache as fc
from ecos_pl.phi import FeatureExtractor, PCAPixels, TimmFeatures


class Counting(FeatureExtractor):
    """Wraps a φ and counts the rows it transforms."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner = inner
        self.batch_rows = inner.batch_rows
        self.rows = 0
        self.calls = 0
        self.fail_after = fail_after

    def fit(self, pool_images):
        self.inner.fit(pool_images)
        return self

    def _features(self, images):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("stopped mid-stream")
        self.calls += 1
        self.rows += len(images)
        return self.inner._features(images)

    def fingerprint(self):
        return self.inner.fingerprint()

    def to(self, device):
        self.inner.to(device)
        return self


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(100, 16, 16, 3), dtype=np.uint8)


def _phi(seed=0, model="test_resnet"):
    return TimmFeatures(model, pooling="style", stages=(0, 1), seed=seed, batch_size=16, device="cpu", progress=False)


def test_written_once_then_reused(tmp_path, images):
    phi = Counting(_phi())
    z, info = fc.cached_features(tmp_path, phi, images, data_id="toy")
    assert not info["hit"] and phi.rows == len(images) and phi.calls == 7  # ceil(100 / 16) batches
    assert isinstance(z, np.memmap) and z.dtype == np.float32 and not z.flags.writeable
    np.testing.assert_array_equal(z, _phi().transform(images))  # float32: bit for bit the direct extraction
    again = Counting(_phi())
    z2, info2 = fc.cached_features(tmp_path, again, images, data_id="toy")
    assert info2["hit"] and again.calls == 0 and info2["path"] == info["path"]
    np.testing.assert_array_equal(z2, z)
    files = sorted(p.name for p in (tmp_path / "features").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")  # no temporary left
    side = json.loads((tmp_path / "features" / files[0]).read_text())
    assert side["shape"] == [100, z.shape[1]] and side["dtype"] == "float32" and side["data"] == "toy"
    assert side["phi"] == phi.fingerprint()


def test_key_follows_data_phi_and_dtype(tmp_path, images):
    base = fc.cached_features(tmp_path, _phi(), images, data_id="toy")[1]["path"]
    paths = {
        base,
        fc.cached_features(tmp_path, _phi(seed=1), images, data_id="toy")[1]["path"],
        fc.cached_features(tmp_path, _phi(model="test_efficientnet"), images, data_id="toy")[1]["path"],
        fc.cached_features(tmp_path, _phi(), images, data_id="other")[1]["path"],
        fc.cached_features(tmp_path, _phi(), images, data_id="toy", dtype="float16")[1]["path"],
    }
    assert len(paths) == 5
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    assert fc.array_fingerprint(changed) != fc.array_fingerprint(images)
    assert fc.array_fingerprint(images, rows=7) == fc.array_fingerprint(images, rows=64)  # chunking does not matter


def test_float16_on_disk(tmp_path, images, monkeypatch):
    z32 = _phi().transform(images)
    z16, info = fc.cached_features(tmp_path, _phi(), images, data_id="toy", dtype="float16")
    raw = np.load(info["path"], mmap_mode="r")
    assert isinstance(raw, np.memmap) and raw.dtype == np.float16
    assert info["path"].endswith(".npy")
    np.testing.assert_allclose(z16.astype(np.float32), z32, atol=2e-3)
    np.testing.assert_allclose(fc.as_float32(z16), z32, atol=2e-3)
    # auto: float32 for small pools, float16 from FLOAT16_MIN_BYTES of float32 features
    assert fc.storage_dtype("auto", 1000, 512) == np.float32
    assert fc.storage_dtype("auto", 1_000_000, 512) == np.float16
    monkeypatch.setattr(fc, "FLOAT16_MIN_BYTES", 1)
    assert fc.cached_features(tmp_path / "auto", _phi(), images, data_id="toy")[0].dtype == np.float16
    with pytest.raises(ValueError, match="feature_dtype='float64' must be one of"):
        fc.cached_features(tmp_path, _phi(), images, data_id="toy", dtype="float64")


def test_an_interrupted_write_leaves_nothing(tmp_path, images):
    phi = Counting(_phi(), fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        fc.cached_features(tmp_path, phi, images, data_id="toy")
    assert list((tmp_path / "features").iterdir()) == []
    with pytest.raises(RuntimeError, match="incomplete"), fc.FeatureWriter(tmp_path / "x.npy", (10, 4), np.float16) as w:
        w.write(0, np.ones((5, 4)))
        w.commit()
    assert list(tmp_path.glob("x*")) == []
    # and the next call computes it in full
    z, info = fc.cached_features(tmp_path, _phi(), images, data_id="toy")
    assert not info["hit"] and z.shape[0] == len(images)


def test_pca_is_fitted_first_and_keyed_by_its_components(tmp_path, images):
    a = PCAPixels(n_components=8, seed=0).fit(images)
    b = PCAPixels(n_components=8, seed=0).fit(images[:50])  # another fit: another φ
    za, ia = fc.cached_features(tmp_path, a, images, data_id="toy")
    zb, ib = fc.cached_features(tmp_path, b, images, data_id="toy")
    assert ia["path"] != ib["path"]
    np.testing.assert_array_equal(za, a.transform(images))


class ThreadStrategy:
    """The collectives of a Lightning strategy, for `world` threads of one process."""

    def __init__(self, rank: int, world: int, shared: dict):
        self.global_rank, self.world_size, self.shared = rank, world, shared
        self.root_device = torch.device("cpu")

    def _exchange(self, value):
        self.shared["slots"][self.global_rank] = value
        self.shared["barrier"].wait()
        out = list(self.shared["slots"])
        self.shared["barrier"].wait()
        return out

    def all_gather(self, tensor):
        return torch.stack(self._exchange(tensor))

    def broadcast(self, obj, src=0):
        return self._exchange(obj)[src]

    def barrier(self, name=None):
        self.shared["barrier"].wait()


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_share_the_extraction(tmp_path, images, world):
    shared = {"slots": [None] * world, "barrier": threading.Barrier(world, timeout=60)}
    phis = [Counting(_phi()) for _ in range(world)]
    results, errors = [None] * world, []

    def rank(r):
        try:
            results[r] = fc.cached_features(tmp_path, phis[r], images, data_id="toy", strategy=ThreadStrategy(r, world, shared))
        except BaseException as err:  # noqa: BLE001
            errors.append(err)
            shared["barrier"].abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    direct = _phi().transform(images)
    for z, info in results:
        np.testing.assert_array_equal(z, direct)  # the same batches as one process: the same numbers
        assert not info["hit"]
    # 7 batches of 16 rows shared round-robin (plus one probe row each to learn d)
    rows = [p.rows - 1 for p in phis]
    assert sum(rows) == len(images) and max(rows) <= 16 * -(-7 // world)
    assert len(list((tmp_path / "features").glob("*.npy"))) == 1 and not list((tmp_path / "features").glob("*.tmp"))


def test_datamodule_selection_is_unchanged_by_the_cache(tmp_path):
    """digits_lite, PCA φ, ECOS: the cached path selects exactly what the uncached path selects, on a miss and a hit."""
    from datamodules import ECOSDataModule
    from ecos_pl.data.digits_lite import DigitsLite
    from ecos_pl.protocol.samplers import ECOSSampler

    def run(cache_dir, cache_features=True):
        dm = ECOSDataModule(
            DigitsLite(seed=1, cache_dir=str(tmp_path / "data")), PCAPixels(n_components=32, seed=1),
            ECOSSampler(n_centroids=16), budget=100, seed=1, cache_dir=cache_dir, reuse_selection=False,
            cache_features=cache_features,
        )
        dm.setup("fit")
        return dm

    plain = run(None)
    miss = run(str(tmp_path / "c"))
    hit = run(str(tmp_path / "c"))
    assert not miss.feature_cache_info["hit"] and hit.feature_cache_info["hit"]
    assert plain.feature_cache_info is None and run(str(tmp_path / "c"), cache_features=False).feature_cache_info is None
    for dm in (miss, hit):
        np.testing.assert_array_equal(dm.selection.indices, plain.selection.indices)
        np.testing.assert_array_equal(dm.pool_features, plain.pool_features)
