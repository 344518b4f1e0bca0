"""`digits5`: Digits-5 (MNIST, SVHN, USPS, SynthDigits, MNIST-M) from disk; never downloaded.

Layout (the image-folder dump most Digits-5 / FedBN-style preprocessing ends up as)::

    root/
      mnist/  train/<digit>/<image>   test/<digit>/<image>
      svhn/   train/...               test/...
      usps/   train/...               test/...
      syn/    train/...               test/...      (SynthDigits)
      mnistm/ train/...               test/...      (MNIST-M)

`<digit>` folders are named 0 ... 9. A domain may instead be flat, `root/<domain>/<digit>/<image>`
(no train/test folders); a domain with a `train/` folder but no `test/` folder is read from `train/` only.
Images directly in a domain (or train/test) folder are out-of-class (label NONE_LABEL).

Split, as in the paper: one domain is the client, the other four are the pool.
The client trains on its domain's `train/` images and is tested on its `test/` images
(if it has no `test/` folder, or is flat, `test_fraction` of its images are carved out as
the test split, class-stratified and seeded). The pool holds the training parts of the
other four domains (`train/`, or every image of a flat domain); their `test/` images are in
no split, as in the paper. `max_per_domain` caps, by a seeded class-stratified choice,
each pool domain and each of the client's train and test folders.
"""

from __future__ import annotations

import numpy as np

from ecos_pl.data.base import NONE_LABEL
from ecos_pl.data.images import DomainFiles, scan_domain
from ecos_pl.data.on_disk import OnDiskSource
from ecos_pl.data.splits import (
    _KEY_CAP,
    _KEY_CARVE,
    PathSplits,
    SplitBuilder,
    cap_images,
    carve_client,
    check_client_domain,
    check_domain_folders,
    check_fraction,
    check_label_space,
    check_max_per_domain,
    check_seed,
    rng_for,
)
from ecos_pl.protocol.errors import ECOSInputError

DOMAINS = ("mnist", "svhn", "usps", "syn", "mnistm")

LAYOUT = (
    "put each domain's images at <root>/<domain>/train/<digit>/<image> and <root>/<domain>/test/<digit>/<image> "
    f"(domains {', '.join(DOMAINS)}; digit folders 0 to 9), or flat at <root>/<domain>/<digit>/<image>"
)


def _scan(root, domain: str) -> list[tuple[str, DomainFiles]]:
    """[(part, files)] with part in train/test (split layout) or "all" (flat layout)."""
    base = root / domain
    if (base / "train").is_dir():
        parts = [("train", scan_domain(root, f"{domain}/train", domain))]
        if (base / "test").is_dir():
            parts.append(("test", scan_domain(root, f"{domain}/test", domain)))
        return parts
    return [("all", scan_domain(root, domain, domain))]


def split_digits5(
    root,
    client_domain: str = "mnist",
    seed: int = 1,
    test_fraction: float = 0.2,
    max_per_domain: int | None = None,
) -> PathSplits:
    """The Digits-5 split as file paths: deterministic in (files on disk, arguments), nothing decoded or written."""
    check_client_domain(client_domain, DOMAINS, "of Digits-5")
    test_fraction = check_fraction(test_fraction, "test_fraction")
    seed = check_seed(seed)
    max_per_domain = check_max_per_domain(max_per_domain)
    root = check_domain_folders(root, DOMAINS, "Digits-5", LAYOUT)
    scanned = {d: _scan(root, d) for d in DOMAINS}
    empty = [f"{f.folder}/" for d in DOMAINS for _, f in scanned[d] if not f.n_images]
    if empty:
        raise ECOSInputError(f"data.root={str(root)!r} has Digits-5 folder(s) without images: {', '.join(empty)}; {LAYOUT}.")

    client_parts = dict(scanned[client_domain])
    class_names = sorted({c for f in client_parts.values() for c in f.classes})
    if not class_names:
        raise ECOSInputError(
            f"data.client_domain={client_domain!r} has no digit folders with images under {client_domain}/; {LAYOUT}."
        )
    check_label_space(class_names, [f for d in DOMAINS for _, f in scanned[d]], client_domain)

    builder = SplitBuilder(list(DOMAINS))
    for k, domain in enumerate(DOMAINS):
        if domain == client_domain:
            continue
        chunks = [f.labelled(class_names) for part, f in scanned[domain] if part != "test"]  # the paper's: training parts only
        paths = [p for c in chunks for p in c[0]]
        labels = np.concatenate([c[1] for c in chunks])
        keep = cap_images(labels, max_per_domain, rng_for(seed, _KEY_CAP + k))
        builder.add("pool", [paths[i] for i in keep], labels[keep], domain)

    c = DOMAINS.index(client_domain)
    carve_from = "test" not in client_parts
    for j, (part, files) in enumerate(scanned[client_domain]):
        paths, labels = files.labelled(class_names, loose=False)
        keep = cap_images(labels, max_per_domain, rng_for(seed, _KEY_CAP + 10 * (c + 1) + j))
        paths, labels = [paths[i] for i in keep], labels[keep]
        if carve_from:  # train only, or flat: carve the test split out of it
            test, train, _ = carve_client(labels, None, test_fraction, rng_for(seed, _KEY_CARVE), client_domain=client_domain)
            builder.add("client_test", [paths[i] for i in test], labels[test], client_domain)
            builder.add("client_train", [paths[i] for i in train], labels[train], client_domain)
        else:
            builder.add("client_train" if part == "train" else "client_test", paths, labels, client_domain)
        # images directly in the client's folders belong to no class: they go to the pool
        builder.add("pool", list(files.loose), np.full(len(files.loose), NONE_LABEL), client_domain)

    layout = {d: "+".join(p for p, _ in scanned[d]) for d in DOMAINS}
    params = {"test_fraction": test_fraction, "seed": seed, "max_per_domain": max_per_domain, "layout": layout}
    return builder.build(name="digits5", root=root, class_names=class_names, client_domain=client_domain, seed=seed, params=params)


class Digits5(OnDiskSource):
    """Config-friendly Digits-5 source (see the module docstring); `load()` decodes (or reads the cache)."""

    name = "digits5"

    def __init__(
        self,
        root,
        client_domain: str = "mnist",
        seed: int = 1,
        image_size: int = 32,
        cache_dir=None,
        max_per_domain: int | None = None,
        test_fraction: float = 0.2,
    ):
        super().__init__(root, client_domain, seed=seed, image_size=image_size, cache_dir=cache_dir, max_per_domain=max_per_domain,
                         domains=DOMAINS, where="of Digits-5")
        self.test_fraction = check_fraction(test_fraction, "test_fraction")

    def split(self) -> PathSplits:
        return split_digits5(self.root, self.client_domain, self.seed, self.test_fraction, self.max_per_domain)
