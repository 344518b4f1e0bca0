"""digits_lite must give ECOS a small client whose domain is a minority of the pool, with no digit leaking across splits."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from ecos_pl.atomic import CacheWarning
from ecos_pl.data import NONE_LABEL, ECOSData
from ecos_pl.data import digits_lite as dl
from ecos_pl.data.digits_lite import DigitsLite, build_digits_lite

SPLITS = ("pool", "client_train", "client_test")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[ECOSData, object]:
    cache = tmp_path_factory.mktemp("cache")
    return build_digits_lite(seed=1, cache_dir=cache), cache


@pytest.fixture(scope="module")
def data(built) -> ECOSData:
    return built[0]


def _split(data: ECOSData, name: str):
    return getattr(data, name)


def _saturation(images: np.ndarray) -> float:
    f = images.astype(np.float64) / 255
    mx, mn = f.max(-1), f.min(-1)
    return float(np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-9), 0).mean())


def test_shapes_and_dtypes(data):
    for name in SPLITS:
        s = _split(data, name)
        assert s.images.dtype == np.uint8
        assert s.images.ndim == 4 and s.images.shape[1:] == (32, 32, 3)
        assert s.labels.dtype == np.int64 and s.domains.dtype == np.int64
        assert len(data.meta["source_index"][name]) == len(s)
    assert data.domain_names == ["plain", "inverted", "photo", "svhn_like", "thick_rotated", "crops"]
    assert data.class_names == [str(i) for i in range(10)]
    assert data.client_domain == "photo" and data.name == "digits_lite"


def test_client_splits_are_client_domain_and_large_enough(data):
    assert len(data.client_test) >= 200
    assert len(data.client_train) > 0
    for s in (data.client_train, data.client_test):
        assert (s.domains == data.client_domain_index).all()
        assert s.labels.min() >= 0 and s.labels.max() <= 9
        assert len(np.unique(s.labels)) == 10


def test_pool_holds_all_domains_with_client_a_minority(data):
    assert set(np.unique(data.pool.domains)) == set(range(6))
    share = data.pool_in_domain().mean()
    assert 0.05 <= share <= 0.15
    counts = data.meta["counts"]
    assert counts["pool"]["total"] == len(data.pool)
    assert counts["client_test"]["photo"] == len(data.client_test)


def test_only_crops_are_out_of_class(data):
    crops = data.domain_names.index("crops")
    is_crop = data.pool.domains == crops
    assert is_crop.sum() > 0
    assert (data.pool.labels[is_crop] == NONE_LABEL).all()
    assert (data.pool.labels[~is_crop] >= 0).all()
    for s in (data.client_train, data.client_test):
        assert (s.labels != NONE_LABEL).all() and (s.domains != crops).all()


def test_no_underlying_digit_shared_between_splits_or_domains(data):
    src = data.meta["source_index"]
    crops = data.domain_names.index("crops")
    assert (src["pool"][data.pool.domains == crops] == -1).all()
    assert (src["pool"][data.pool.domains != crops] >= 0).all()
    sets = {name: set(src[name][src[name] >= 0].tolist()) for name in SPLITS}
    assert not sets["pool"] & sets["client_train"]
    assert not sets["pool"] & sets["client_test"]
    assert not sets["client_train"] & sets["client_test"]
    # each underlying digit belongs to exactly one domain, and keeps its label in every render
    owner: dict[int, tuple[int, int]] = {}
    for name in SPLITS:
        s = _split(data, name)
        for i, d, y in zip(src[name].tolist(), s.domains.tolist(), s.labels.tolist()):
            if i < 0:
                continue
            assert owner.setdefault(i, (d, y)) == (d, y), f"digit {i} appears in two domains"
    assert len(owner) <= 1797


def _assert_same(a: ECOSData, b: ECOSData) -> None:
    for name in SPLITS:
        sa, sb = _split(a, name), _split(b, name)
        assert np.array_equal(sa.images, sb.images)
        assert np.array_equal(sa.labels, sb.labels)
        assert np.array_equal(sa.domains, sb.domains)
        assert np.array_equal(a.meta["source_index"][name], b.meta["source_index"][name])


def test_same_seed_is_deterministic_and_other_seed_differs(data, tmp_path):
    again = build_digits_lite(seed=1, cache_dir=tmp_path / "a")  # fresh directory: really rebuilt
    _assert_same(data, again)
    other = build_digits_lite(seed=2, cache_dir=tmp_path / "b")
    assert not np.array_equal(other.client_test.images, data.client_test.images)
    assert not np.array_equal(other.meta["source_index"]["client_test"], data.meta["source_index"]["client_test"])


def test_second_call_loads_from_cache(built, monkeypatch):
    data, cache = built
    files = sorted(p.name for p in cache.iterdir())
    assert files == [f"digits_lite-v{dl.VERSION}-seed1-photo-32-ct4.npz"]  # no temp file left behind

    def boom(*a, **k):
        raise AssertionError("rebuilt although a valid cache exists")

    monkeypatch.setattr(dl, "_build_arrays", boom)
    loaded = DigitsLite(seed=1, cache_dir=cache).load()
    _assert_same(data, loaded)
    assert loaded.meta["counts"] == data.meta["counts"]


def test_corrupt_cache_is_moved_aside_and_rebuilt_with_a_warning(data, tmp_path):
    path = tmp_path / f"digits_lite-v{dl.VERSION}-seed1-photo-32-ct4.npz"
    path.write_bytes(b"not an npz file")
    with pytest.warns(CacheWarning, match="moved aside"):
        rebuilt = build_digits_lite(seed=1, cache_dir=tmp_path)
    _assert_same(data, rebuilt)
    np.load(path)  # the rebuilt file is valid again
    (aside,) = tmp_path.glob(f"{path.name}.damaged-*")  # the damaged one is kept, not deleted unseen
    assert aside.read_bytes() == b"not an npz file"


def test_the_cache_file_follows_the_umask(built):
    data, cache = built
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(data.meta["cache_path"]).st_mode) == 0o666 & ~mask  # not mkstemp's 0600
    assert not [p.name for p in cache.iterdir() if p.name.endswith(".tmp")]  # no temporary left


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"client_domain": "foo"}, "client_domain"),
        ({"client_domain": "crops"}, "client_domain"),
        ({"seed": 1.5}, "seed"),
        ({"seed": -1}, "seed"),
        ({"image_size": 4}, "image_size"),
    ],
)
def test_bad_inputs_fail_clearly_and_write_nothing(tmp_path, kwargs, word):
    with pytest.raises(ValueError, match=word):
        build_digits_lite(cache_dir=tmp_path, **kwargs)
    with pytest.raises(ValueError, match=word):
        DigitsLite(cache_dir=tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_other_client_domain_and_image_size(tmp_path):
    d = build_digits_lite(seed=3, client_domain="plain", cache_dir=tmp_path, image_size=16)
    assert d.client_domain == "plain"
    assert d.client_train.images.shape[1:] == (16, 16, 3)
    assert (d.client_test.domains == d.domain_names.index("plain")).all()
    assert len(d.client_test) >= 200
    assert 0.05 <= d.pool_in_domain().mean() <= 0.15
    assert (d.pool.domains == d.domain_names.index("photo")).sum() > 500  # photo is now an ordinary pool domain


def test_photo_domain_differs_in_colour_from_plain(data):
    plain = data.pool.images[data.pool.domains == data.domain_names.index("plain")]
    photo = data.client_train.images
    assert _saturation(plain) < 0.05  # grey digits
    assert _saturation(photo) > 0.3
    # per-image mean colour varies far more across photo images than across plain ones
    assert photo.mean((1, 2)).std(0).mean() > 2 * plain.mean((1, 2)).std(0).mean()


def test_client_train_renders_is_a_parameter(tmp_path):
    from ecos_pl.data.digits_lite import build_digits_lite

    two = build_digits_lite(seed=1, cache_dir=tmp_path, client_train_renders=2)
    four = build_digits_lite(seed=1, cache_dir=tmp_path)
    assert len(four.client_train) == 2 * len(two.client_train)
    assert set(two.meta["source_index"]["client_train"]) == set(four.meta["source_index"]["client_train"])
    np.testing.assert_array_equal(two.client_test.images, four.client_test.images)
    with pytest.raises(ValueError, match="client_train_renders"):
        build_digits_lite(seed=1, cache_dir=tmp_path, client_train_renders=0)
