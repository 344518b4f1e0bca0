"""`folders`: any `root/<domain>/<class>/<image>` tree as an ECOS benchmark, and the machinery every on-disk source shares.

Layout::

    root/
      <domain>/                 one folder per domain (style, source, site ...)
        <class>/<image>         an image of that class
        <image>                 an image directly in a domain folder: out-of-class (label NONE_LABEL)

Image files are recognised by extension (`IMAGE_EXTENSIONS`, any case); hidden entries
(names starting with ".") and anything deeper than `<class>/<image>` are ignored. Every
image is decoded with PIL, converted to RGB and resized to `image_size` x `image_size`
(aspect ratio not kept); a file that cannot be decoded is skipped with a warning naming it.

Split (`split_folders`): the client's label space is the sorted list of the client
domain's class folders; every class folder of another domain must be one of them (an
unknown class would be neither a class of the client nor "none"). Of the client domain's
in-class images, `test_fraction` go to the client's test split and `client_fraction` to
its train split (a seeded, class-stratified choice); the rest of that domain (and its
out-of-class images) and every other domain form the pool. Each split is put in a seeded
order; the same inputs and seed give the same files in the same order.

Shared with `digits5` and `domainnet`: `scan_domain` (listing), `carve_client` and
`cap_images` (seeded choices), `SplitBuilder` -> `PathSplits` (a split as relative file
paths, no pixels: what a CLI needs to name the proxy set by file), and `load_splits`
(threaded decoding with skip-warnings, and the on-disk cache of uint8 `.npy` memory maps keyed
by every file's size and modification time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
import shutil
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ecos_pl.data.base import NONE_LABEL, DomainSplit, ECOSData
from ecos_pl.data.digits_lite import _stratified_order
from ecos_pl.protocol.errors import ECOSInputError, check_count

log = logging.getLogger(__name__)

#: bump when decoding or the cache format changes; it is part of the cache key.
VERSION = 2  # 2: one uint8 .npy memory map per split

IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"})
SPLITS = ("pool", "client_train", "client_test")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 512
#: PIL releases the GIL while decoding, so threads give a real speed-up on large trees.
DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))
_DECODE_BLOCK = 256
#: undecodable files named one warning each, up to this many; the rest are counted in one more warning.
MAX_SKIP_WARNINGS = 20

# keys of the seeded streams: each purpose has its own, independent of call order.
_KEY_CARVE = 1
_KEY_ORDER = 2  # + split index
_KEY_CAP = 100  # + caller's sub-key


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


def check_image_size(image_size) -> int:
    return check_count(image_size, "data.image_size", low=MIN_IMAGE_SIZE, high=MAX_IMAGE_SIZE, high_name="the largest supported size")


def check_max_per_domain(max_per_domain) -> int | None:
    return None if max_per_domain is None else check_count(max_per_domain, "data.max_per_domain", low=1)


def check_client_domain(client_domain, domains: Iterable[str], where: str) -> str:
    domains = list(domains)
    if not isinstance(client_domain, str) or client_domain not in domains:
        raise ECOSInputError(f"data.client_domain={client_domain!r} is not one of the domains {where}: {', '.join(domains) or '(none)'}.")
    return client_domain


# --------------------------------------------------------------------------- listing


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_entries(directory: Path, where: str = "data.root", *, follow_dir_links: bool = True) -> tuple[list[str], list[str]]:
    """(sorted sub-folder names, sorted image file names) directly inside `directory`; hidden entries are ignored.

    What cannot be listed (a folder that cannot be opened, a symlink loop, a name that is not
    UTF-8 and so could not be written to a list or hashed) is skipped with a warning naming it,
    so one bad entry never aborts a whole tree. `where` is the parameter the warning names.
    """
    dirs, files = [], []
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except OSError as err:
        warnings.warn(f"{where}: skipping the folder {str(directory)!r}: it cannot be read ({err.strerror or err}).", stacklevel=2)
        return [], []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=follow_dir_links)
            is_image = not is_dir and entry.is_file() and _is_image(entry.name)
            if is_dir or is_image:
                entry.name.encode("utf-8")
        except UnicodeEncodeError:
            warnings.warn(f"{where}: skipping {entry.path!r}: its name is not valid UTF-8.", stacklevel=2)
            continue
        except OSError as err:  # a symlink loop, a file that vanished or cannot be examined
            warnings.warn(f"{where}: skipping {entry.path!r}: it cannot be read ({err.strerror or err}).", stacklevel=2)
            continue
        if is_dir:
            dirs.append(entry.name)
        elif is_image:
            files.append(entry.name)
    return sorted(dirs), sorted(files)


@dataclass
class DomainFiles:
    """The images of one domain folder, as sorted paths relative to the data root."""

    name: str
    folder: str  # relative to the root, "/"-separated
    classes: dict[str, list[str]]  # class folder name -> image paths (only folders that hold images)
    loose: list[str]  # images directly in the domain folder: out-of-class

    @property
    def n_images(self) -> int:
        return len(self.loose) + sum(len(v) for v in self.classes.values())

    def labelled(self, class_names: list[str], *, loose: bool = True) -> tuple[list[str], np.ndarray]:
        """(paths, labels) in a fixed order: class folders by name, then the out-of-class images."""
        index = {c: i for i, c in enumerate(class_names)}
        paths, labels = [], []
        for c in sorted(self.classes):
            paths += self.classes[c]
            labels += [index[c]] * len(self.classes[c])
        if loose:
            paths += self.loose
            labels += [NONE_LABEL] * len(self.loose)
        return paths, np.asarray(labels, dtype=np.int64)


def scan_domain(root: Path, folder: str, name: str | None = None, classes: Iterable[str] | None = None) -> DomainFiles:
    """List `root/folder/<class>/<image>` and `root/folder/<image>`; `classes` (if given) limits which class folders are read."""
    wanted = None if classes is None else set(classes)
    dirs, files = list_entries(root / folder)
    by_class: dict[str, list[str]] = {}
    for c in dirs:
        if wanted is not None and c not in wanted:
            continue
        sub, images = list_entries(root / folder / c)
        if sub:
            warnings.warn(
                f"data.root: ignoring the sub-folders of {folder}/{c}/ ({', '.join(sub[:3])}{' ...' if len(sub) > 3 else ''}); "
                f"images are read only directly inside a class folder.",
                stacklevel=2,
            )
        if images:
            by_class[c] = [f"{folder}/{c}/{f}" for f in images]
    return DomainFiles(name or folder, folder, by_class, [f"{folder}/{f}" for f in files])


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


# --------------------------------------------------------------------------- seeded choices


def cap_images(labels: np.ndarray, max_n: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most `max_n` items (a seeded, class-stratified choice), in their original order."""
    if max_n is None or len(labels) <= max_n:
        return np.arange(len(labels))
    return np.sort(_stratified_order(labels, rng)[:max_n])


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
    order = _stratified_order(labels, rng)
    return order[:n_test], order[n_test : n_test + n_train], order[n_test + n_train :]


# --------------------------------------------------------------------------- a split as files


@dataclass
class PathSplits:
    """A split as image files (paths relative to `root`, "/"-separated), before any pixel is decoded.

    `paths[s]`, `labels[s]`, `domains[s]` for s in pool, client_train, client_test; `splits["pool"]`
    is short for `splits.paths["pool"]`. After `load_splits`, `ECOSData.meta["<split>_paths"]` holds
    the files that were actually decoded (the same lists unless a file had to be skipped).
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


# --------------------------------------------------------------------------- folders


def split_folders(
    root,
    client_domain: str,
    client_fraction: float = 0.5,
    test_fraction: float = 0.2,
    seed: int = 1,
    max_per_domain: int | None = None,
) -> PathSplits:
    """The `folders` split as file paths: deterministic in (files on disk, arguments), nothing decoded or written."""
    client_fraction, test_fraction = check_fractions(client_fraction, test_fraction)
    seed = check_seed(seed)
    max_per_domain = check_max_per_domain(max_per_domain)
    root = check_root(root)
    folders, _ = list_entries(root)
    scanned = [scan_domain(root, d) for d in folders]
    domains = [f for f in scanned if f.n_images]
    if not domains:
        raise ECOSInputError(
            f"data.root={str(root)!r} holds no images in the expected layout <root>/<domain>/<class>/<image> "
            f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))})."
        )
    domain_names = [f.name for f in domains]
    check_client_domain(client_domain, domain_names, f"(folders with images) of data.root={str(root)!r}")
    client = domains[domain_names.index(client_domain)]
    if not client.classes:
        raise ECOSInputError(
            f"data.client_domain={client_domain!r} has no class folders with images; put its images at "
            f"{root}/{client_domain}/<class>/<image> (images directly in {client_domain}/ are out-of-class)."
        )
    class_names = sorted(client.classes)
    others = [f for f in domains if f.name != client_domain]
    check_label_space(class_names, others, client_domain)

    builder = SplitBuilder(domain_names)
    for k, files in enumerate(domains):
        paths, labels = files.labelled(class_names)
        keep = cap_images(labels, max_per_domain, rng_for(seed, _KEY_CAP + k))
        paths, labels = [paths[i] for i in keep], labels[keep]
        if files.name != client_domain:
            builder.add("pool", paths, labels, files.name)
            continue
        inside = np.flatnonzero(labels != NONE_LABEL)
        test, train, rest = carve_client(labels[inside], client_fraction, test_fraction, rng_for(seed, _KEY_CARVE), client_domain=client_domain)
        for split, idx in (("client_test", inside[test]), ("client_train", inside[train]), ("pool", inside[rest])):
            builder.add(split, [paths[i] for i in idx], labels[idx], files.name)
        outside = np.flatnonzero(labels == NONE_LABEL)
        builder.add("pool", [paths[i] for i in outside], labels[outside], files.name)
    params = {"client_fraction": client_fraction, "test_fraction": test_fraction, "seed": seed, "max_per_domain": max_per_domain}
    return builder.build(name="folders", root=root, class_names=class_names, client_domain=client_domain, seed=seed, params=params)


# --------------------------------------------------------------------------- decoding


def decode_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: RGB, resized (bilinear, antialiased) without keeping the aspect ratio."""
    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale that is still >= size (much faster)
        if im.mode in ("P", "PA", "LA", "La", "RGBa"):
            im = im.convert("RGBA")
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def decode_all(root: Path, paths: list[str], size: int, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """(images [N, size, size, 3], ok mask [N], [(path, reason)] of the files that could not be decoded).

    `out`: where to decode to (a memory map on disk for large trees); by default a new array in memory.
    """
    images = np.zeros((len(paths), size, size, 3), dtype=np.uint8) if out is None else out
    ok = np.ones(len(paths), dtype=bool)

    def block(start: int) -> list[tuple[int, str]]:
        failed = []
        for i in range(start, min(start + _DECODE_BLOCK, len(paths))):
            try:
                images[i] = decode_image(root / paths[i], size)
            except Exception as err:  # noqa: BLE001 - any unreadable file is skipped with a warning, never a crash
                images[i] = 0
                failed.append((i, f"{type(err).__name__}: {err}"))
        return failed

    starts = range(0, len(paths), _DECODE_BLOCK)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if DECODE_THREADS > 1 and len(starts) > 1:
            with ThreadPoolExecutor(DECODE_THREADS) as pool:
                results = list(pool.map(block, starts))
        else:
            results = [block(s) for s in starts]
    failures = []
    for i, reason in (f for r in results for f in r):
        ok[i] = False
        failures.append((paths[i], reason))
    return images, ok, failures


def warn_skipped(skipped: list[tuple[str, str]], root: Path) -> None:
    for path, reason in skipped[:MAX_SKIP_WARNINGS]:
        warnings.warn(f"data.root: skipping {path} (under {root}): it cannot be decoded as an image ({reason}).", stacklevel=3)
    if len(skipped) > MAX_SKIP_WARNINGS:
        warnings.warn(
            f"data.root: skipped {len(skipped) - MAX_SKIP_WARNINGS} more undecodable files under {root} "
            f"(all {len(skipped)} are listed in ECOSData.meta['skipped']).",
            stacklevel=3,
        )


# --------------------------------------------------------------------------- cache


def cache_key(splits: PathSplits, image_size: int) -> str:
    """A hash of everything the decoded arrays depend on, including each file's size and modification time."""
    h = hashlib.sha256()
    head = {
        "version": VERSION, "name": splits.name, "root": str(splits.root), "image_size": image_size,
        "domains": splits.domain_names, "classes": splits.class_names, "client_domain": splits.client_domain,
        "params": splits.params,
    }
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for split in SPLITS:
        h.update(split.encode())
        h.update(splits.labels[split].tobytes())
        h.update(splits.domains[split].tobytes())
        for p in splits.paths[split]:
            st = os.stat(splits.root / p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


#: the small arrays of a decoded cache entry (labels, domains, paths, key); written last, so it marks a complete entry.
_ARRAYS = "arrays.npz"
#: rows copied at a time when a split is compacted (files that could not be decoded removed).
_COPY_ROWS = 4096


def _images_file(folder: Path, split: str) -> Path:
    return folder / f"{split}.npy"


def _load_cache(folder: Path, key: str) -> dict[str, np.ndarray] | None:
    """A complete cache entry: small arrays in memory, each split's images as a read-only memory map."""
    if not (folder / _ARRAYS).is_file():
        return None
    try:
        with np.load(folder / _ARRAYS, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if str(arrays["key"]) != key:
            raise ValueError("key mismatch")
        for s in SPLITS:  # validates shapes and dtypes
            arrays[f"{s}_images"] = np.load(_images_file(folder, s), mmap_mode="r", allow_pickle=False)
            DomainSplit(arrays[f"{s}_images"], arrays[f"{s}_labels"], arrays[f"{s}_domains"])
            if len(arrays[f"{s}_paths"]) != len(arrays[f"{s}_images"]):
                raise ValueError(f"{s}: paths and images differ in length")
        return arrays
    except Exception as err:  # noqa: BLE001 - any unreadable cache is rebuilt, never fatal
        warnings.warn(f"data cache {folder} is unreadable ({err!r}); rebuilding it.", stacklevel=3)
        return None


def _compact(images: np.ndarray, keep: np.ndarray, tmp: Path | None) -> np.ndarray:
    """`images[keep]`, copied block by block into a new `.npy` memory map at `tmp` (or in memory when `tmp` is None)."""
    if keep.all():
        return images
    if tmp is None:
        return images[keep]
    rows = np.flatnonzero(keep)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(rows), *images.shape[1:]))
    for start in range(0, len(rows), _COPY_ROWS):
        out[start : start + _COPY_ROWS] = images[rows[start : start + _COPY_ROWS]]
    return out


def _decode_splits(splits: PathSplits, image_size: int, key: str, folder: Path | None = None) -> dict[str, np.ndarray]:
    """Decode every split; with `folder`, each split's images stream into `folder/<split>.npy` (uint8 memory maps)."""
    t0 = time.perf_counter()
    arrays: dict[str, np.ndarray] = {"key": np.array(key)}
    skipped: list[tuple[str, str]] = []
    for s in SPLITS:
        paths = splits.paths[s]
        out = None
        if folder is not None:
            shape = (len(paths), image_size, image_size, 3)
            out = np.lib.format.open_memmap(folder / f"{s}.all.npy", mode="w+", dtype=np.uint8, shape=shape)
        images, keep, failed = decode_all(splits.root, paths, image_size, out)
        skipped += failed
        images = _compact(images, keep, None if folder is None else _images_file(folder, s))
        if folder is not None:
            images.flush()
            if images is out:
                os.replace(folder / f"{s}.all.npy", _images_file(folder, s))
            else:
                del out
                (folder / f"{s}.all.npy").unlink()
            images = np.load(_images_file(folder, s), mmap_mode="r", allow_pickle=False)
        arrays[f"{s}_images"] = images
        arrays[f"{s}_labels"] = splits.labels[s][keep]
        arrays[f"{s}_domains"] = splits.domains[s][keep]
        arrays[f"{s}_paths"] = np.array([p for p, k in zip(paths, keep) if k], dtype=str)
    log.info("decoded %d images of %s in %.1f s", len(splits), splits.root, time.perf_counter() - t0)
    warn_skipped(skipped, splits.root)
    arrays["skipped"] = np.array([p for p, _ in skipped], dtype=str)
    check_nonempty({s: len(arrays[f"{s}_images"]) for s in SPLITS}, splits.root, splits.client_domain, "images that can be decoded")
    return arrays


def _decode_to_cache(splits: PathSplits, image_size: int, key: str, folder: Path) -> dict[str, np.ndarray]:
    """Decode into a temporary folder next to `folder`, then rename it; nothing is left behind if decoding fails.

    A cache folder that cannot be written costs a decode in memory (and a warning), not the run.
    """
    parent_existed = folder.parent.exists()
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    try:
        tmp.mkdir(parents=True)
    except OSError as err:
        warnings.warn(f"could not write the data cache {folder} ({err!r}); continuing without it.", stacklevel=3)
        return _decode_splits(splits, image_size, key)
    try:
        arrays = _decode_splits(splits, image_size, key, tmp)
        small = {k: v for k, v in arrays.items() if not k.endswith("_images")}
        with open(tmp / _ARRAYS, "wb") as f:
            np.savez(f, **small)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process put the same entry in place first: use it
            if not (folder / _ARRAYS).is_file():
                raise
        return _load_cache(folder, key) or arrays
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if not parent_existed:
            try:
                folder.parent.rmdir()  # only when empty: a failed first decode leaves no cache folder
            except OSError:
                pass


def load_splits(splits: PathSplits, image_size: int, cache_dir=None) -> ECOSData:
    """Decode every file of `splits` (or read them from the cache) into an `ECOSData`.

    Undecodable files are skipped with a warning naming them (and listed in `meta["skipped"]`);
    if that empties a split, one clear error. With `cache_dir`, the entry is the folder
    `<cache_dir>/<name>-<key>/`: each split's images as a uint8 `.npy` file (`pool.npy`,
    `client_train.npy`, `client_test.npy`), decoded straight into a memory map block by block,
    and `arrays.npz` (labels, domains, paths). It is built under a temporary name and renamed
    once every check has passed; the images are then opened read-only with
    `np.load(mmap_mode="r")`, so a pool of a million images is never held in memory and is read
    in batches. `key` (also `meta["data_key"]`, the data's identity in the feature and selection
    caches) hashes the split, every file's size and modification time, and `image_size`.
    Without `cache_dir` everything is decoded in memory.
    """
    image_size = check_image_size(image_size)
    key = cache_key(splits, image_size)
    folder = None if cache_dir is None else Path(os.path.expandvars(str(cache_dir))).expanduser() / f"{splits.name}-{key}"
    arrays = None if folder is None else _load_cache(folder, key)
    if arrays is None and folder is not None:
        if folder.exists():  # an unreadable or incomplete entry: rebuilt
            shutil.rmtree(folder, ignore_errors=True)
        arrays = _decode_to_cache(splits, image_size, key, folder)
    elif arrays is None:
        arrays = _decode_splits(splits, image_size, key)
    elif len(arrays["skipped"]):
        warn_skipped([(str(p), "skipped when the cache was built") for p in arrays["skipped"]], splits.root)
    return assemble(splits, arrays, image_size, folder)


def assemble(splits: PathSplits, arrays: dict[str, np.ndarray], image_size: int, cache_path: Path | None) -> ECOSData:
    parts = {s: DomainSplit(arrays[f"{s}_images"], arrays[f"{s}_labels"], arrays[f"{s}_domains"]) for s in SPLITS}
    counts = {}
    for s in SPLITS:
        per_domain = np.bincount(parts[s].domains, minlength=len(splits.domain_names))
        counts[s] = {d: int(c) for d, c in zip(splits.domain_names, per_domain) if c} | {"total": len(parts[s])}
    meta = {
        "root": str(splits.root),
        "image_size": image_size,
        **splits.params,
        "counts": counts,
        **{f"{s}_paths": [str(p) for p in arrays[f"{s}_paths"]] for s in SPLITS},
        "skipped": [str(p) for p in arrays["skipped"]],
        "cache_path": None if cache_path is None else str(cache_path),
        "data_key": str(arrays["key"]),
    }
    return ECOSData(
        name=splits.name,
        pool=parts["pool"],
        client_train=parts["client_train"],
        client_test=parts["client_test"],
        domain_names=list(splits.domain_names),
        class_names=list(splits.class_names),
        client_domain=splits.client_domain,
        meta=meta,
    )


# --------------------------------------------------------------------------- the config-friendly source


class OnDiskSource:
    """Base of the on-disk sources: `split()` gives the files (no decoding), `load()` the arrays (memoised)."""

    name = "on_disk"

    def __init__(self, image_size: int, cache_dir):
        self.image_size = check_image_size(image_size)
        self.cache_dir = cache_dir
        self._data: ECOSData | None = None

    def split(self) -> PathSplits:
        raise NotImplementedError

    def load(self) -> ECOSData:
        if self._data is None:
            self._data = load_splits(self.split(), self.image_size, self.cache_dir)
        return self._data


class Folders(OnDiskSource):
    """Any `root/<domain>/<class>/<image>` tree (see the module docstring); Hydra instantiates it, `load()` does the work."""

    name = "folders"

    def __init__(
        self,
        root,
        client_domain: str,
        client_fraction: float = 0.5,
        test_fraction: float = 0.2,
        seed: int = 1,
        image_size: int = 32,
        cache_dir=None,
        max_per_domain: int | None = None,
    ):
        self.client_fraction, self.test_fraction = check_fractions(client_fraction, test_fraction)
        self.seed = check_seed(seed)
        self.max_per_domain = check_max_per_domain(max_per_domain)
        super().__init__(image_size, cache_dir)
        self.root, self.client_domain = root, client_domain

    def split(self) -> PathSplits:
        return split_folders(self.root, self.client_domain, self.client_fraction, self.test_fraction, self.seed, self.max_per_domain)
