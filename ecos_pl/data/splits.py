"""Which file goes where: pool, client train, client test, as file paths, before any pixel is decoded.

Shared by the on-disk sources (`folders`, `digits5`, `domainnet`): the checks of their
settings, the seeded choices (`cap_images`, `carve_client`), `split_client_domain` (the
client domain's in-class images carved into client test / client train / pool, every other
domain to the pool), and `SplitBuilder` -> `PathSplits`, a split as relative file paths:
what a program needs to name the proxy set by file.

Every choice is seeded and keyed by its purpose (`rng_for(seed, key)`), never by call order;
each split is put in a seeded order; the same files on disk and settings give the same split.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecos_pl.data.base import NONE_LABEL, ECOSData
from ecos_pl.data.images import DomainFiles
from ecos_pl.protocol.errors import ECOSInputError, check_count

SPLITS = ("pool", "client_train", "client_test")

# keys of the seeded streams: each purpose has its own, independent of call order.
_KEY_CARVE = 1
_KEY_ORDER = 2  # + split index
_KEY_CAP = 100  # + caller's sub-key
_KEY_VALIDATION = 3


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


# --------------------------------------------------------------------------- input checks


def check_root(root) -> Path:
    """`data.root` as an absolute path to an existing folder."""
    if root is None or not str(root).strip():
        raise ECOSInputError("data.root is not set; give the folder that holds the images, e.g. data.root=/path/to/images.")
    path = Path(os.path.expandvars(str(root))).expanduser()
    if not path.exists():
        raise ECOSInputError(f"data.root={str(root)!r} does not exist.")
    if not path.is_dir():
        raise ECOSInputError(f"data.root={str(root)!r} is not a folder.")
    return path.absolute()


def check_domain_folders(root, domains: Iterable[str], benchmark: str, layout: str) -> Path:
    """`check_root`, and that every one of a benchmark's domain folders is there (`layout`: where to put what)."""
    root = check_root(root)
    missing = [f"{d}/" for d in domains if not (root / d).is_dir()]
    if missing:
        raise ECOSInputError(f"data.root={str(root)!r} lacks the {benchmark} folder(s) {', '.join(missing)}; {layout}.")
    return root


def check_fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < 1:
        raise ECOSInputError(f"data.{name} must be a number strictly between 0 and 1, got {value!r}.")
    return float(value)


def check_fractions(client_fraction, test_fraction) -> tuple[float, float]:
    client_fraction = check_fraction(client_fraction, "client_fraction")
    test_fraction = check_fraction(test_fraction, "test_fraction")
    if client_fraction + test_fraction >= 1:
        raise ECOSInputError(
            f"data.client_fraction + data.test_fraction must be below 1 (the rest of the client's domain goes to the pool), "
            f"got {client_fraction:g} + {test_fraction:g} = {client_fraction + test_fraction:g}."
        )
    return client_fraction, test_fraction


def check_seed(seed) -> int:
    return check_count(seed, "seed", low=0)


def check_max_per_domain(max_per_domain) -> int | None:
    return None if max_per_domain is None else check_count(max_per_domain, "data.max_per_domain", low=1)


def check_client_domain(client_domain, domains: Iterable[str], where: str) -> str:
    domains = list(domains)
    if not isinstance(client_domain, str) or client_domain not in domains:
        raise ECOSInputError(f"data.client_domain={client_domain!r} is not one of the domains {where}: {', '.join(domains) or '(none)'}.")
    return client_domain


def check_label_space(class_names: list[str], pool_domains: Iterable[DomainFiles], client_domain: str) -> None:
    """Every class folder of the pool must be a class of the client (its label space)."""
    known = set(class_names)
    for files in pool_domains:
        unknown = [c for c in sorted(files.classes) if c not in known]
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise ECOSInputError(
                f"data.root: class folder {files.folder}/{unknown[0]}/{more} is in the pool but not in the label space of "
                f"data.client_domain={client_domain!r} (its classes: {', '.join(class_names)}); add that class to the client's "
                f"domain, remove the folder, or move its images directly into {files.folder}/ to make them out-of-class."
            )


def check_nonempty(sizes: dict[str, int], root: Path, client_domain: str, what: str = "images") -> None:
    if not any(sizes.values()):
        raise ECOSInputError(f"data.root={str(root)!r} holds no {what}.")
    for split in ("client_test", "client_train"):
        if not sizes[split]:
            raise ECOSInputError(f"data.client_domain={client_domain!r} leaves the {split} split empty (no {what} left for it).")
    if not sizes["pool"]:
        raise ECOSInputError(
            f"data.root={str(root)!r} leaves the pool empty; add other domain folders, or lower data.client_fraction/data.test_fraction."
        )


# --------------------------------------------------------------------------- seeded choices


def stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An order whose every prefix and contiguous chunk has nearly the class balance of the whole."""
    key = np.empty(len(labels))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        key[idx] = (rng.permutation(len(idx)) + rng.random(len(idx))) / len(idx)
    return np.argsort(key, kind="stable")


def cap_images(labels: np.ndarray, max_n: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most `max_n` items (a seeded, class-stratified choice), in their original order."""
    if max_n is None or len(labels) <= max_n:
        return np.arange(len(labels))
    return np.sort(stratified_order(labels, rng)[:max_n])


def carve_client(
    labels: np.ndarray, client_fraction: float | None, test_fraction: float, rng: np.random.Generator, *, client_domain: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(test, train, rest) indices of the client domain's in-class images, class-stratified.

    `client_fraction=None`: everything that is not test is train (the client holds its whole domain).
    """
    n = len(labels)
    n_test = max(1, int(round(test_fraction * n)))
    n_train = n - n_test if client_fraction is None else max(1, int(round(client_fraction * n)))
    if n_train < 1 or n_test + n_train > n:
        raise ECOSInputError(
            f"data.client_domain={client_domain!r} has {n} in-class image(s), too few for a client test split "
            f"(data.test_fraction={test_fraction:g}) and a client train split"
            + ("" if client_fraction is None else f" (data.client_fraction={client_fraction:g})")
            + " that both hold at least one image."
        )
    order = stratified_order(labels, rng)
    return order[:n_test], order[n_test : n_test + n_train], order[n_test + n_train :]


def check_val_fraction(fraction) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 <= float(fraction) < 1:
        raise ECOSInputError(f"data.val_fraction must be a number in [0, 1) (0: no validation split), got {fraction!r}.")
    return float(fraction)


def with_validation(data: ECOSData, fraction: float, seed: int) -> ECOSData:
    """`data` with a seeded, class-stratified `client_val` split carved from the client's training part.

    ECOS.md's evaluation hygiene: the simulation may look at this split to choose settings
    (a real deployment would not have it); the client's test split is looked at once, at the
    end. The client scores, labels and trains teachers on what is left. `fraction=0`: none.
    Where a source renders one underlying image several times (`meta["source_index"]`), the
    carve is by underlying image, so no image is in both parts.
    """
    if not check_val_fraction(fraction):
        return data
    train = data.client_train
    groups = data.meta.get("source_index", {}).get("client_train")
    groups = np.arange(len(train)) if groups is None else np.asarray(groups)
    unique, first, members = np.unique(groups, return_index=True, return_inverse=True)
    n_val = int(round(float(fraction) * len(unique)))
    if n_val < 1 or n_val >= len(unique):
        raise ECOSInputError(
            f"data.val_fraction={fraction:g} of the client's {len(unique)} training images leaves no "
            f"{'validation' if n_val < 1 else 'training'} image; choose a fraction that keeps both."
        )
    chosen = np.zeros(len(unique), dtype=bool)
    chosen[stratified_order(train.labels[first], rng_for(int(seed), _KEY_VALIDATION))[:n_val]] = True
    val, rest = np.flatnonzero(chosen[members]), np.flatnonzero(~chosen[members])
    meta = {**data.meta, "val_fraction": float(fraction)}
    if "source_index" in meta:
        meta["source_index"] = {**meta["source_index"], "client_train": groups[rest], "client_val": groups[val]}
    return dataclasses.replace(data, client_train=train.subset(rest), client_val=train.subset(val), meta=meta)


# --------------------------------------------------------------------------- a split as files


@dataclass
class PathSplits:
    """A split as image files (paths relative to `root`, "/"-separated), before any pixel is decoded.

    `paths[s]`, `labels[s]`, `domains[s]` for s in pool, client_train, client_test; `splits["pool"]`
    is short for `splits.paths["pool"]`. After decoding (`ecos_pl.data.on_disk.load_splits`),
    `ECOSData.meta["<split>_paths"]` holds the files that were actually decoded (the same lists
    unless a file had to be skipped).
    """

    name: str
    root: Path
    domain_names: list[str]
    class_names: list[str]
    client_domain: str
    paths: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    domains: dict[str, np.ndarray]
    params: dict = field(default_factory=dict)

    def __getitem__(self, split: str) -> list[str]:
        return self.paths[split]

    def __len__(self) -> int:
        return sum(len(p) for p in self.paths.values())


class SplitBuilder:
    """Collects (paths, labels, domain) chunks per split; `build` puts each split in a seeded order and checks none is empty."""

    def __init__(self, domain_names: list[str]):
        self.domain_names = list(domain_names)
        self._chunks: dict[str, list[tuple[list[str], np.ndarray, int]]] = {s: [] for s in SPLITS}

    def add(self, split: str, paths: list[str], labels: np.ndarray, domain: str) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        assert len(paths) == len(labels), (len(paths), len(labels))
        if len(paths):
            self._chunks[split].append((list(paths), labels, self.domain_names.index(domain)))

    def build(self, *, name: str, root: Path, class_names: list[str], client_domain: str, seed: int, params: dict) -> PathSplits:
        paths, labels, domains = {}, {}, {}
        for k, split in enumerate(SPLITS):
            chunks = self._chunks[split]
            p = [x for c in chunks for x in c[0]]
            lab = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros(0, np.int64)
            dom = np.concatenate([np.full(len(c[0]), c[2], np.int64) for c in chunks]) if chunks else np.zeros(0, np.int64)
            perm = rng_for(seed, _KEY_ORDER + k).permutation(len(p))  # mixed order: nothing may rely on domain blocks
            paths[split], labels[split], domains[split] = [p[i] for i in perm], lab[perm], dom[perm]
        check_nonempty({s: len(paths[s]) for s in SPLITS}, root, client_domain)
        return PathSplits(name, root, list(self.domain_names), list(class_names), client_domain, paths, labels, domains, dict(params))


def split_client_domain(
    domains: list[DomainFiles],
    client_domain: str,
    class_names: list[str],
    *,
    client_fraction: float,
    test_fraction: float,
    seed: int,
    max_per_domain: int | None,
    name: str,
    root: Path,
    params: dict,
    test_lists: dict[str, set[str]] | None = None,
) -> PathSplits:
    """The split of a tree of domains (`folders`, `domainnet`): each domain capped to `max_per_domain` first;
    of the client domain's in-class images, `test_fraction` -> client test and `client_fraction` ->
    client train (seeded, class-stratified), its rest and its out-of-class images -> the pool;
    every other domain -> the pool. `domains` in their fixed order (it keys each domain's cap).

    `test_lists` (DomainNet's official `<domain>_test.txt`, as {domain: paths}): a listed image is in
    its domain's test split, so it is never in the pool; the client domain's listed in-class images are
    the client test split and half of the rest (seeded, class-stratified) the client train split — the
    paper's split; the fractions are not used then.
    """
    test_lists = test_lists or {}
    builder = SplitBuilder([f.name for f in domains])
    for k, files in enumerate(domains):
        paths, labels = files.labelled(class_names)
        keep = cap_images(labels, max_per_domain, rng_for(seed, _KEY_CAP + k))
        paths, labels = [paths[i] for i in keep], labels[keep]
        listed = np.array([p in test_lists.get(files.name, ()) for p in paths], dtype=bool)
        if files.name != client_domain:
            kept = np.flatnonzero(~listed)
            builder.add("pool", [paths[i] for i in kept], labels[kept], files.name)
            continue
        inside = np.flatnonzero(labels != NONE_LABEL)
        if files.name in test_lists:
            test = np.flatnonzero(listed[inside])
            trainable = np.flatnonzero(~listed[inside])
            order = trainable[stratified_order(labels[inside][trainable], rng_for(seed, _KEY_CARVE))]
            train, rest = order[: len(order) // 2], order[len(order) // 2 :]
        else:
            test, train, rest = carve_client(labels[inside], client_fraction, test_fraction, rng_for(seed, _KEY_CARVE),
                                             client_domain=client_domain)
        for split, idx in (("client_test", inside[test]), ("client_train", inside[train]), ("pool", inside[rest])):
            builder.add(split, [paths[i] for i in idx], labels[idx], files.name)
        outside = np.flatnonzero(labels == NONE_LABEL)
        builder.add("pool", [paths[i] for i in outside], labels[outside], files.name)
    return builder.build(name=name, root=root, class_names=class_names, client_domain=client_domain, seed=seed, params=params)
