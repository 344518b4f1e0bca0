"""The pool's φ features cached on disk: written once and atomically, reused, keyed by data and φ, through trainer.predict."""

import json
import numpy as np
import pytest

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


def _trainer(**kwargs):
    import pytorch_lightning as pl

    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, deterministic=True,
                      enable_progress_bar=False, **kwargs)


@pytest.mark.parametrize("make_phi", [_phi, lambda: PCAPixels(n_components=8, seed=0)], ids=["timm", "pca"])
def test_trainer_predict_writes_the_cache_bit_identical(tmp_path, images, make_phi):
    """One process: trainer.predict in batches of phi.batch_rows gives exactly phi.transform(pool); every row once."""
    from ecos_pl.feature_predict import predict_pool_features

    phi = make_phi().fit(images)
    phi.progress = True  # Lightning's bar is the display during predict; restored afterwards
    path, meta = fc.cache_entry(tmp_path, phi, "toy", "auto")
    counting = Counting(phi)
    info = predict_pool_features(_trainer(), counting, images, path, meta)
    assert info["via"] == "trainer.predict" and info["rows_per_rank"] == [len(images)] and info["path"] == str(path)
    assert counting.rows == len(images) + 1  # each row once, plus one probe row for d
    assert phi.progress is True
    z = fc.open_features(path)
    np.testing.assert_array_equal(z, phi.transform(images))
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["n_ranks"] == 1 and side["rows_per_rank"] == [len(images)] and side["phi"] == phi.fingerprint()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.with_suffix(".json").name, path.name]
    # and the in-process path then finds it
    again = Counting(phi)
    z2, hit = fc.cached_features(tmp_path, again, images, data_id="toy")
    assert hit["hit"] and again.calls == 0 and hit["path"] == str(path)


def test_trainer_predict_that_misses_rows_writes_nothing(tmp_path, images):
    from ecos_pl.feature_predict import predict_pool_features

    phi = _phi()
    path, meta = fc.cache_entry(tmp_path, phi, "toy", "auto")
    with pytest.raises(RuntimeError, match=r"wrote 32 rows \(\[32\] per rank\) for a pool of 100, 68 of them never written"):
        predict_pool_features(_trainer(limit_predict_batches=2), phi, images, path, meta)
    assert list(path.parent.iterdir()) == []


def test_datamodule_selection_is_unchanged_by_the_cache(tmp_path, isolated_cache):
    """digits_lite, PCA φ, ECOS: the cached paths (in process, or trainer.predict) select exactly what the uncached path selects."""
    from datamodules import ECOSDataModule
    from ecos_pl.data.digits_lite import DigitsLite
    from ecos_pl.protocol.samplers import ECOSSampler

    def run(cache_dir, cache_features=True, predict=False):
        dm = ECOSDataModule.from_parts(
            DigitsLite(seed=1, cache_dir=str(isolated_cache / "data")), PCAPixels(n_components=32, seed=1),
            ECOSSampler(n_centroids=16), budget=100, seed=1, cache_dir=cache_dir, reuse_selection=False,
            cache_features=cache_features,
        )
        if predict:
            dm.predict_pool_features(_trainer())
        dm.setup("fit")
        return dm

    plain = run(None)
    miss = run(str(tmp_path / "c"))
    hit = run(str(tmp_path / "c"))
    predicted = run(str(tmp_path / "p"), predict=True)
    assert not miss.pipeline.feature_cache_info["hit"] and hit.pipeline.feature_cache_info["hit"]
    assert predicted.pipeline.feature_cache_info["via"] == "trainer.predict" and not predicted.pipeline.feature_cache_info["hit"]
    assert run(str(tmp_path / "p"), predict=True).pipeline.feature_cache_info["hit"]  # cached: predict does not run again
    assert plain.pipeline.feature_cache_info is None and run(str(tmp_path / "c"), cache_features=False).pipeline.feature_cache_info is None
    for dm in (miss, hit, predicted):
        np.testing.assert_array_equal(dm.selection.indices, plain.selection.indices)
        np.testing.assert_array_equal(dm.pipeline.pool_features, plain.pipeline.pool_features)


def test_phi_is_fitted_once_and_before_predict(tmp_path, images):
    """predict_pool_features fits φ (every rank does); setup() then neither refits it nor recomputes the features."""
    from datamodules import ECOSDataModule
    from ecos_pl.data.base import DomainSplit, ECOSData
    from ecos_pl.protocol.samplers import RandomSampler

    def split(rows):
        return DomainSplit(images[rows], np.zeros(len(rows)), np.zeros(len(rows)))

    class Source:
        def load(self):
            return ECOSData("toy", split(np.arange(60)), split(np.arange(60, 80)), split(np.arange(80, 100)), ["d"], ["c"], "d")

    fits = []

    class Fits(PCAPixels):
        def fit(self, pool_images):
            fits.append(len(pool_images))
            return super().fit(pool_images)

    phi = Counting(Fits(n_components=4, seed=0))
    dm = ECOSDataModule.from_parts(Source(), phi, RandomSampler(), budget=10, seed=3, cache_dir=str(tmp_path))
    dm.predict_pool_features(_trainer())
    rows = phi.rows
    dm.setup("fit")
    assert fits == [60] and rows == 60 + 1  # one fit; each pool row once (plus the probe row)
    assert phi.rows == rows  # setup runs no φ: the pool's features come from the file, and random asks the client nothing
    np.testing.assert_array_equal(dm.pipeline.pool_features, phi.transform(images[:60]))
