"""The on-disk sources (folders, digits5, domainnet) on tiny trees of 8x8 PNGs: layout, split, determinism, every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ecos_pl.data import NONE_LABEL, ECOSData
from ecos_pl.data.digits5 import DOMAINS as DIGITS5, Digits5, split_digits5
from ecos_pl.data.domainnet import DOMAINS as DOMAINNET, DomainNet, split_domainnet
from ecos_pl.data.folders import Folders, split_folders
from ecos_pl.protocol.errors import ECOSInputError

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("pool", "client_train", "client_test")


def write_pngs(folder: Path, n: int, seed: int = 0, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, len(str(folder)), n])
    out = []
    for i in range(n):
        path = folder / f"{prefix}{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def all_images(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.png")}


def paths(data: ECOSData, split: str) -> list[str]:
    return data.meta[f"{split}_paths"]


def check_consistent(data: ECOSData) -> None:
    """Shapes, dtypes, and that each sample's label and domain agree with its file's place in the tree."""
    for split in SPLITS:
        s = getattr(data, split)
        size = data.meta["image_size"]
        assert s.images.dtype == np.uint8 and s.images.shape == (len(s), size, size, 3)
        assert s.labels.dtype == np.int64 and s.domains.dtype == np.int64
        assert len(paths(data, split)) == len(s)
        for p, label, domain in zip(paths(data, split), s.labels, s.domains):
            parts = p.split("/")
            assert data.domain_names[domain] == parts[0]
            if label == NONE_LABEL:
                assert parts[-2] in (parts[0], "train", "test")  # directly in a domain (or train/test) folder
            else:
                assert data.class_names[label] == parts[-2]
    for split in ("client_train", "client_test"):
        s = getattr(data, split)
        assert (s.labels != NONE_LABEL).all() and (s.domains == data.client_domain_index).all()
    train, test, pool = (set(paths(data, s)) for s in ("client_train", "client_test", "pool"))
    assert not (test & train) and not (test & pool) and not (train & pool)


# --------------------------------------------------------------------------- folders


@pytest.fixture
def tree(tmp_path) -> Path:
    """Domains a, b, c with classes x, y, z (10 images each); 2 out-of-class images in a, 1 in c."""
    root = tmp_path / "tree"
    for k, d in enumerate("abc"):
        for c in "xyz":
            write_pngs(root / d / c, 10, seed=k)
    write_pngs(root / "a", 2, prefix="loose")
    write_pngs(root / "c", 1, prefix="loose")
    (root / "a" / "notes.txt").write_text("not an image")  # ignored: not an image extension
    return root


def test_folders_shapes_labels_domains_and_split(tree):
    data = Folders(tree, "a", image_size=16).load()
    check_consistent(data)
    assert data.name == "folders" and data.client_domain == "a"
    assert data.domain_names == ["a", "b", "c"] and data.class_names == ["x", "y", "z"]
    # of a's 30 in-class images: 20% test, 50% train, the rest (9) and a's 2 out-of-class images to the pool
    assert (len(data.client_test), len(data.client_train), len(data.pool)) == (6, 15, 9 + 2 + 30 + 31)
    assert np.bincount(data.client_test.labels).tolist() == [2, 2, 2]  # class-stratified
    assert np.bincount(data.client_train.labels).tolist() == [5, 5, 5]
    assert data.meta["counts"]["pool"] == {"a": 11, "b": 30, "c": 31, "total": 72}
    # every image is in exactly one split
    assert sorted(p for s in SPLITS for p in paths(data, s)) == sorted(all_images(tree))
    # out-of-class images (directly in a domain folder) are NONE_LABEL and in the pool
    none = {p for p, lab in zip(paths(data, "pool"), data.pool.labels) if lab == NONE_LABEL}
    assert none == {"a/loose000.png", "a/loose001.png", "c/loose000.png"}


def test_folders_pixels_are_the_files(tree):
    data = Folders(tree, "a", image_size=8).load()
    for split in SPLITS:
        for p, img in list(zip(paths(data, split), getattr(data, split).images))[:5]:
            assert np.array_equal(img, np.asarray(Image.open(tree / p).convert("RGB")))


def test_folders_deterministic_and_seeded(tree):
    a, b = Folders(tree, "a", seed=1).load(), Folders(tree, "a", seed=1).load()
    for split in SPLITS:
        assert paths(a, split) == paths(b, split)
        sa, sb = getattr(a, split), getattr(b, split)
        assert np.array_equal(sa.images, sb.images) and np.array_equal(sa.labels, sb.labels)
    c = Folders(tree, "a", seed=2).load()
    assert paths(c, "pool") != paths(a, "pool") and paths(c, "client_test") != paths(a, "client_test")
    assert sorted(p for s in SPLITS for p in paths(c, s)) == sorted(p for s in SPLITS for p in paths(a, s))
    # the CLI's path-only split gives the same files in the same order, without decoding
    split = split_folders(tree, "a", 0.5, 0.2, seed=2)
    for s in SPLITS:
        assert split[s] == paths(c, s)
        assert np.array_equal(split.labels[s], getattr(c, s).labels)


def test_folders_cache_is_reused_and_invalidated(tree, tmp_path):
    cache = tmp_path / "cache"
    a = Folders(tree, "a", cache_dir=cache).load()
    entry = Path(a.meta["cache_path"])
    assert [f.name for f in cache.iterdir()] == [entry.name] and entry.is_dir()
    assert sorted(f.name for f in entry.iterdir()) == ["arrays.npz", "client_test.npy", "client_train.npy", "pool.npy"]
    b = Folders(tree, "a", cache_dir=cache).load()
    assert b.meta["cache_path"] == a.meta["cache_path"] and np.array_equal(a.pool.images, b.pool.images)
    assert b.meta["data_key"] == a.meta["data_key"] and entry.name.endswith(a.meta["data_key"])
    # a changed file is a different key: a new cache entry, with the new pixels
    changed = tree / paths(a, "pool")[0]
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))
    c = Folders(tree, "a", cache_dir=cache).load()
    assert c.meta["cache_path"] != a.meta["cache_path"] and (c.pool.images[0] == 7).all()
    assert c.meta["data_key"] != a.meta["data_key"]
    assert not list(cache.glob("*.tmp")) and not list(cache.glob(".*"))


def test_cached_pool_is_a_read_only_memory_map_read_in_batches(tree, tmp_path):
    """The decoded pool lives on disk as uint8 .npy memory maps; subsets copy only their rows."""
    cache = tmp_path / "cache"
    fresh = Folders(tree, "a", cache_dir=cache).load()  # decoded straight into the cache
    again = Folders(tree, "a", cache_dir=cache).load()  # opened from it
    plain = Folders(tree, "a").load()  # no cache: in memory
    for data in (fresh, again):
        for split in SPLITS:
            images = getattr(data, split).images
            assert isinstance(images, np.memmap) and not images.flags.writeable and images.dtype == np.uint8
            np.testing.assert_array_equal(images, getattr(plain, split).images)
    assert not isinstance(plain.pool.images, np.memmap)
    part = again.pool.subset(np.array([3, 0, 5]))
    assert not isinstance(part.images, np.memmap) and part.images.flags.writeable
    np.testing.assert_array_equal(part.images, plain.pool.images[[3, 0, 5]])
    check_consistent(again)


def test_skipped_files_are_compacted_out_of_the_cached_memory_map(tree, tmp_path):
    (tree / "b" / "y" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.warns(UserWarning, match="broken.png"):
        cached = Folders(tree, "a", cache_dir=tmp_path / "cache").load()
    with pytest.warns(UserWarning, match="broken.png"):
        plain = Folders(tree, "a").load()
    assert isinstance(cached.pool.images, np.memmap) and cached.meta["skipped"] == ["b/y/broken.png"]
    np.testing.assert_array_equal(cached.pool.images, plain.pool.images)
    assert paths(cached, "pool") == paths(plain, "pool")
    entry = Path(cached.meta["cache_path"])
    assert sorted(f.name for f in entry.iterdir()) == ["arrays.npz", "client_test.npy", "client_train.npy", "pool.npy"]
    check_consistent(cached)


def test_folders_max_per_domain(tree):
    data = Folders(tree, "a", max_per_domain=12).load()
    check_consistent(data)
    assert data.meta["counts"]["pool"]["b"] == 12 and data.meta["counts"]["pool"]["c"] == 12
    assert len(data.client_test) + len(data.client_train) + data.meta["counts"]["pool"]["a"] == 12


def test_undecodable_file_is_skipped_with_a_warning_naming_it(tree):
    (tree / "b" / "y" / "broken.png").write_bytes(b"\x89PNG not really")
    (tree / "a" / "x" / "empty.jpg").write_bytes(b"")
    with pytest.warns(UserWarning) as record:
        data = Folders(tree, "a").load()
    messages = " ".join(str(w.message) for w in record)
    assert "b/y/broken.png" in messages and "a/x/empty.jpg" in messages
    assert sorted(data.meta["skipped"]) == ["a/x/empty.jpg", "b/y/broken.png"]
    assert not {"a/x/empty.jpg", "b/y/broken.png"} & {p for s in SPLITS for p in paths(data, s)}
    check_consistent(data)


def test_nothing_decodable_is_the_no_images_error(tmp_path):
    root = tmp_path / "r"
    for d in "ab":
        (root / d / "x").mkdir(parents=True)
        for i in range(4):
            (root / d / "x" / f"{i}.png").write_bytes(b"garbage")
    cache = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ECOSInputError, match="data.root=.* holds no images that can be decoded"):
            Folders(root, "a", cache_dir=cache).load()
    assert not cache.exists()  # nothing written


# --------------------------------------------------------------------------- folders: bad inputs


def test_root_missing(tmp_path):
    with pytest.raises(ECOSInputError, match=r"data\.root=.* does not exist"):
        Folders(tmp_path / "nope", "a").load()
    with pytest.raises(ECOSInputError, match=r"data\.root is not set"):
        Folders(None, "a").load()


def test_root_without_images(tmp_path):
    (tmp_path / "empty" / "a" / "x").mkdir(parents=True)
    write_pngs(tmp_path / "empty", 2)  # images directly in the root belong to no domain
    with pytest.raises(ECOSInputError, match=r"data\.root=.* holds no images"):
        Folders(tmp_path / "empty", "a").load()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ECOSInputError, match=r"data\.root=.* is not a folder"):
        Folders(tmp_path / "file", "a").load()


def test_client_domain_not_a_folder(tree):
    with pytest.raises(ECOSInputError, match=r"data\.client_domain='d' is not one of the domains .*: a, b, c\."):
        Folders(tree, "d").load()


@pytest.mark.parametrize("name", ["client_fraction", "test_fraction"])
@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan"), "half", True, None])
def test_fraction_out_of_range(tree, name, bad):
    kwargs = {"client_fraction": 0.5, "test_fraction": 0.2, name: bad}
    with pytest.raises(ECOSInputError, match=rf"data\.{name} must be a number strictly between 0 and 1"):
        Folders(tree, "a", **kwargs)
    with pytest.raises(ECOSInputError, match=rf"data\.{name}"):
        split_folders(tree, "a", **kwargs)


def test_fractions_summing_to_one(tree):
    with pytest.raises(ECOSInputError, match=r"data\.client_fraction \+ data\.test_fraction must be below 1"):
        Folders(tree, "a", client_fraction=0.8, test_fraction=0.2)


def test_client_domain_without_class_folders(tree):
    write_pngs(tree / "d", 3)
    with pytest.raises(ECOSInputError, match=r"data\.client_domain='d' has no class folders"):
        Folders(tree, "d").load()


def test_pool_class_absent_from_client_label_space(tree):
    write_pngs(tree / "b" / "w", 2)
    with pytest.raises(ECOSInputError, match=r"class folder b/w/ is in the pool but not in the label space of data\.client_domain='a'"):
        Folders(tree, "a").load()
    # once the client's domain has a w folder too, w is in its label space and the tree is fine
    write_pngs(tree / "a" / "w", 6)
    write_pngs(tree / "c" / "w", 1)
    assert Folders(tree, "a").load().class_names == ["w", "x", "y", "z"]


def test_too_few_client_images(tmp_path):
    write_pngs(tmp_path / "a" / "x", 1)
    write_pngs(tmp_path / "b" / "x", 3)
    with pytest.raises(ECOSInputError, match=r"data\.client_domain='a' has 1 in-class image\(s\), too few"):
        Folders(tmp_path, "a").load()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"seed": -1}, "seed must be at least 0"),
    ({"image_size": 4}, r"data\.image_size must be at least 8"),
    ({"image_size": 4096}, r"data\.image_size=4096 is larger than"),
    ({"max_per_domain": 0}, r"data\.max_per_domain must be at least 1"),
])
def test_other_parameters(tree, kwargs, match):
    with pytest.raises(ECOSInputError, match=match):
        Folders(tree, "a", **kwargs)


# --------------------------------------------------------------------------- digits5


@pytest.fixture
def digits5_tree(tmp_path) -> Path:
    """Each domain: train/<0,1,2>/ with 4 images and test/<0,1,2>/ with 2; one out-of-class image in mnist/train."""
    root = tmp_path / "digits5"
    for k, d in enumerate(DIGITS5):
        for digit in "012":
            write_pngs(root / d / "train" / digit, 4, seed=k)
            write_pngs(root / d / "test" / digit, 2, seed=k + 10)
    write_pngs(root / "mnist" / "train", 1, prefix="loose")
    return root


def test_digits5_train_test_layout(digits5_tree):
    data = Digits5(digits5_tree, client_domain="mnist", image_size=8).load()
    check_consistent(data)
    assert data.name == "digits5" and data.domain_names == list(DIGITS5) and data.class_names == ["0", "1", "2"]
    assert all(p.startswith("mnist/train/") for p in paths(data, "client_train")) and len(data.client_train) == 12
    assert all(p.startswith("mnist/test/") for p in paths(data, "client_test")) and len(data.client_test) == 6
    # the pool: the other four domains' training parts (the paper's), and mnist's out-of-class image
    assert data.meta["counts"]["pool"] == {"svhn": 12, "usps": 12, "syn": 12, "mnistm": 12, "mnist": 1, "total": 49}
    assert {p for p, lab in zip(paths(data, "pool"), data.pool.labels) if lab == NONE_LABEL} == {"mnist/train/loose000.png"}
    others_test = {p for p in all_images(digits5_tree) if "/test/" in p and not p.startswith("mnist/")}
    assert sorted(p for s in SPLITS for p in paths(data, s)) == sorted(all_images(digits5_tree) - others_test)
    assert split_digits5(digits5_tree, "mnist")["pool"] == paths(data, "pool")


def test_digits5_flat_client_domain_carves_its_test_split(digits5_tree):
    import shutil

    shutil.rmtree(digits5_tree / "usps")
    for digit in "012":
        write_pngs(digits5_tree / "usps" / digit, 5, seed=3)
    data = Digits5(digits5_tree, client_domain="usps", test_fraction=0.2).load()
    check_consistent(data)
    assert (len(data.client_test), len(data.client_train)) == (3, 12)  # 20% of 15, the rest is client train
    assert "usps" not in data.meta["counts"]["pool"] and data.meta["layout"]["usps"] == "all"
    other = Digits5(digits5_tree, client_domain="usps", seed=2).load()
    assert paths(other, "client_test") != paths(data, "client_test")


def test_digits5_missing_folder_says_what_to_put_where(digits5_tree):
    import shutil

    shutil.rmtree(digits5_tree / "svhn")
    with pytest.raises(ECOSInputError, match=r"data\.root=.* lacks the Digits-5 folder\(s\) svhn/; put each domain's images at <root>/<domain>/train/<digit>/<image>"):
        Digits5(digits5_tree).load()
    with pytest.raises(ECOSInputError, match=r"data\.root=.* does not exist"):
        Digits5(digits5_tree / "nope").load()


def test_digits5_bad_inputs(digits5_tree):
    with pytest.raises(ECOSInputError, match=r"data\.client_domain='mnist_m' is not one of the domains of Digits-5: mnist, svhn"):
        Digits5(digits5_tree, client_domain="mnist_m")
    with pytest.raises(ECOSInputError, match=r"data\.test_fraction"):
        Digits5(digits5_tree, test_fraction=1.0)
    write_pngs(digits5_tree / "syn" / "test" / "7", 1)
    with pytest.raises(ECOSInputError, match=r"class folder syn/test/7/ is in the pool"):
        Digits5(digits5_tree).load()


# --------------------------------------------------------------------------- domainnet


@pytest.fixture
def domainnet_tree(tmp_path) -> Path:
    """Six domains with classes bird, zebra (5 images each) and cat (2, not requested unless classes='all')."""
    root = tmp_path / "domainnet"
    for k, d in enumerate(DOMAINNET):
        write_pngs(root / d / "bird", 5, seed=k)
        write_pngs(root / d / "zebra", 5, seed=k + 10)
        write_pngs(root / d / "cat", 2, seed=k + 20)
    return root


def test_domainnet_split(domainnet_tree):
    data = DomainNet(domainnet_tree, client_domain="sketch", classes=["zebra", "bird"], image_size=8, client_fraction=0.4, test_fraction=0.2).load()
    check_consistent(data)
    assert data.name == "domainnet" and data.domain_names == list(DOMAINNET) and data.class_names == ["bird", "zebra"]
    assert (len(data.client_test), len(data.client_train)) == (2, 4)  # of sketch's 10: 20% test, 40% train
    assert data.meta["counts"]["pool"] == {**{d: 10 for d in DOMAINNET if d != "sketch"}, "sketch": 4, "total": 54}
    assert not any("/cat/" in p for s in SPLITS for p in paths(data, s))  # classes not asked for are not read
    assert split_domainnet(domainnet_tree, "sketch", classes=["bird", "zebra"], client_fraction=0.4, test_fraction=0.2)["pool"] == paths(data, "pool")


def test_domainnet_official_test_lists_give_the_papers_split(domainnet_tree):
    """With `<domain>_test.txt`: the client is tested on its listed images, trains on half of the rest; no listed image is pooled."""
    listed = {}
    for d in DOMAINNET:
        files = sorted(f"{d}/{c}/{p.name}" for c in ("bird", "zebra") for p in (domainnet_tree / d / c).iterdir())[::4]
        (domainnet_tree / f"{d}_test.txt").write_text("".join(f"{f} {i}\n" for i, f in enumerate(files)))
        listed[d] = set(files)
    data = DomainNet(domainnet_tree, client_domain="sketch", classes=["bird", "zebra"], image_size=8).load()
    check_consistent(data)
    assert set(paths(data, "client_test")) == listed["sketch"]
    assert not set(paths(data, "pool")) & set().union(*listed.values())
    assert len(paths(data, "client_train")) == (10 - len(listed["sketch"])) // 2
    assert len(paths(data, "pool")) == sum(10 - len(listed[d]) for d in DOMAINNET) - len(paths(data, "client_train"))
    (domainnet_tree / "sketch_test.txt").unlink()
    with pytest.raises(ECOSInputError, match=r"has the official test lists of .* but not sketch_test.txt for data.client_domain='sketch'"):
        DomainNet(domainnet_tree, client_domain="sketch", classes=["bird", "zebra"], image_size=8).load()


def test_domainnet_defaults_give_the_client_half_its_domain(domainnet_tree):
    data = DomainNet(domainnet_tree, classes="all").load()
    check_consistent(data)
    assert data.client_domain == "clipart" and data.class_names == ["bird", "cat", "zebra"]
    assert data.pool.images.shape[1:] == (64, 64, 3)  # DomainNet's default image_size
    assert len(data.client_test) + len(data.client_train) == 6 == data.meta["counts"]["pool"]["clipart"]  # 12 in-class: half each


def test_domainnet_missing_folders(domainnet_tree):
    with pytest.raises(ECOSInputError, match=r"data\.root=.* lacks class folders with images for data\.classes='fl10': clipart/feather/, clipart/headphones/, clipart/ice_cream/ \(and 45 more\); put"):
        DomainNet(domainnet_tree).load()
    import shutil

    shutil.rmtree(domainnet_tree / "quickdraw")
    with pytest.raises(ECOSInputError, match=r"lacks the DomainNet folder\(s\) quickdraw/; put each domain's images at <root>/<domain>/<class>/<image>"):
        DomainNet(domainnet_tree, classes="all").load()


@pytest.mark.parametrize("bad", ["fl11", [], ["bird", "bird"], ["../x"], 3])
def test_domainnet_bad_classes(domainnet_tree, bad):
    with pytest.raises(ECOSInputError, match=r"data\.classes must be 'fl10', 'all' or a non-empty list"):
        DomainNet(domainnet_tree, classes=bad)


def test_domainnet_bad_client_domain(domainnet_tree):
    with pytest.raises(ECOSInputError, match=r"data\.client_domain='photo' is not one of the domains of DomainNet"):
        DomainNet(domainnet_tree, client_domain="photo")


# --------------------------------------------------------------------------- the data-source interface


def _conf_sources() -> dict[str, str]:
    """{conf/data file: its source's `_target_`}."""
    import yaml

    out = {}
    for path in sorted((ROOT / "conf" / "data").glob("*.yaml")):
        out[path.stem] = yaml.safe_load(path.read_text())["source"]["_target_"]
    return out


def _target_class(target: str) -> type:
    import importlib

    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_every_conf_data_source_declares_the_data_source_interface():
    from ecos_pl.data.base import DataSource

    sources = _conf_sources()
    assert {"digits_lite", "digits5_lite", "digits5", "domainnet", "folders"} <= set(sources)
    for config, target in sources.items():
        cls = _target_class(target)
        assert issubclass(cls, DataSource), f"conf/data/{config}.yaml: {target} does not declare DataSource"
        assert isinstance(cls.name, str) and cls.name == config, (config, cls.name)


def test_data_sources_are_instances_and_load_an_ecos_data(tree, digits5_tree, domainnet_tree, tmp_path):
    from ecos_pl.data.base import DataSource
    from ecos_pl.data.digits5_lite import Digits5Lite
    from ecos_pl.data.digits_lite import DigitsLite

    on_disk = [
        Folders(tree, client_domain="a", image_size=8),
        Digits5(digits5_tree, client_domain="mnist", image_size=8),
        DomainNet(domainnet_tree, client_domain="sketch", classes=["zebra", "bird"], image_size=8),
    ]
    for source in [*on_disk, DigitsLite(cache_dir=tmp_path), Digits5Lite(cache_dir=tmp_path)]:  # built only when loaded
        assert isinstance(source, DataSource)
    for source in on_disk:
        data = source.load()
        assert isinstance(data, ECOSData) and data.name == source.name and data.meta["data_key"]
        assert source.load() is data  # decoded once


def test_a_data_source_must_name_itself():
    from ecos_pl.data.base import DataSource

    with pytest.raises(TypeError, match="must name itself"):
        class Nameless(DataSource):  # noqa: F841 - the class statement is what fails
            def load(self):
                raise AssertionError

    with pytest.raises(TypeError):  # load() is abstract
        type("NoLoad", (DataSource,), {"name": "no_load"})()


# --------------------------------------------------------------------------- end to end


def test_train_py_on_a_folders_tree(tmp_path):
    """`python train.py data=folders data.root=DIR data.client_domain=NAME`, tiny, gives the usual results."""
    root = tmp_path / "tree"
    for k, d in enumerate("abc"):
        for c in "xyz":
            write_pngs(root / d / c, 8, seed=k)
    write_pngs(root / "b", 3, prefix="loose")
    results = tmp_path / "results.json"
    cmd = [
        sys.executable, "train.py", "data=folders", f"data.root={root}", "data.client_domain=a", "data.image_size=16",
        "scenario.epochs=1", "scenario.teacher.epochs=1", "backbone.teacher=test_resnet", "backbone.student=test_resnet",
        "+trainer.limit_train_batches=2", "trainer.check_val_every_n_epoch=1", "trainer=cpu",
        "phi=pca", "phi.n_components=8", "budget=20", "n_centroids=6", "logger=none", "callbacks=none",
        f"hydra.run.dir={tmp_path / 'run'}", f"results_file={results}",
    ]
    before = set(ROOT.glob("checkpoints/*"))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert set(ROOT.glob("checkpoints/*")) == before  # with no logger, checkpoints go to the run folder, not the cwd
    res = json.loads(results.read_text())
    assert {"scenario", "sampler", "data", "seed", "budget", "n_centroids", "n_selected", "client_test_acc", "teacher_test_acc",
            "in_domain_fraction", "bytes_down", "bytes_up", "epsilon", "timings", "proxy_set_sha1"} <= res.keys()
    assert res["data"] == "folders" and res["n_selected"] == 20 and res["n_centroids"] == 6
    # a: 24 in-class images -> 5 test, 12 train (of which data.val_fraction = 0.2 validates), 7 to the pool; b and c: 24 + 3 and 24
    assert (res["n_client_test"], res["n_client_train"], res["n_client_val"], res["n_pool"]) == (5, 10, 2, 7 + 27 + 24)
    assert set(res["composition_by_domain"]) == {"a", "b", "c"}
    assert 0.0 <= res["client_test_acc"] <= 1.0
