"""`OnDiskSource`: the base of the sources read from image files (`folders`, `digits5`, `domainnet`), and their decode cache.

A source's `split()` names the files (`ecos_pl.data.splits.PathSplits`, nothing decoded);
`load()` decodes them (`ecos_pl.data.images.decode_all`), or reads them from the cache
(`load_splits`): one folder per entry, `<cache_dir>/<name>-<key>/`, holding each split's
images as a uint8 `.npy` memory map and `arrays.npz` (labels, domains, paths), keyed by
every file's size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from ecos_pl import atomic
from ecos_pl.data.base import DataSource, DomainSplit, ECOSData, split_counts
from ecos_pl.data.images import check_image_size, current_pixel_limit, decode_all, warn_skipped
from ecos_pl.data.splits import SPLITS, PathSplits, check_client_domain, check_max_per_domain, check_nonempty, check_seed

log = logging.getLogger(__name__)

#: bump when decoding or the cache format changes; it is part of the cache key.
VERSION = 3  # 2: one uint8 .npy memory map per split; 3: 16-bit and float greys scaled, the pixel limit in the key
#: the small arrays of a decoded cache entry (labels, domains, paths, key); written last, so it marks a complete entry.
_ARRAYS = "arrays.npz"
#: rows copied at a time when a split is compacted (files that could not be decoded removed).
_COPY_ROWS = 4096
#: where the skipped files are listed (named when there are too many to warn about each)
_SKIPPED_LIST = "ECOSData.meta['skipped']"


def cache_key(splits: PathSplits, image_size: int) -> str:
    """A hash of everything the decoded arrays depend on, including each file's size and modification time."""
    h = hashlib.sha256()
    head = {
        "version": VERSION, "name": splits.name, "root": str(splits.root), "image_size": image_size,
        "max_image_pixels": current_pixel_limit().pixels,
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
            if images is out:  # inside the entry's temporary folder: nobody reads it before the whole folder is swapped in
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
    warn_skipped(skipped, splits.root, listed_in=_SKIPPED_LIST)
    arrays["skipped"] = np.array([p for p, _ in skipped], dtype=str)
    check_nonempty({s: len(arrays[f"{s}_images"]) for s in SPLITS}, splits.root, splits.client_domain, "images that can be decoded")
    return arrays


def _decode_to_cache(splits: PathSplits, image_size: int, key: str, folder: Path) -> dict[str, np.ndarray]:
    """Decode into a temporary folder next to `folder`, then swap it in (`atomic.replace_dir`); nothing is left behind if decoding fails.

    A cache folder that cannot be written costs a decode in memory (and a warning), not the run.
    """
    parent_existed = folder.parent.exists()
    decoded: dict[str, np.ndarray] = {}
    started = False

    def build(tmp: Path) -> None:
        nonlocal started
        started = True
        decoded.update(_decode_splits(splits, image_size, key, tmp))
        small = {k: v for k, v in decoded.items() if not k.endswith("_images")}
        with open(tmp / _ARRAYS, "wb") as f:
            np.savez(f, **small)

    try:
        atomic.replace_dir(build, folder)
    except OSError as err:
        if not started:  # not even the temporary folder could be made
            warnings.warn(f"could not write the data cache {folder} ({err!r}); continuing without it.", stacklevel=3)
            return _decode_splits(splits, image_size, key)
        if not (folder / _ARRAYS).is_file():  # else another process put the same entry in place first: use it
            raise
    finally:
        if not parent_existed:
            try:
                folder.parent.rmdir()  # only when empty: a failed first decode leaves no cache folder
            except OSError:
                pass
    return _load_cache(folder, key) or decoded


def load_splits(splits: PathSplits, image_size: int, cache_dir=None) -> ECOSData:
    """Decode every file of `splits` (or read them from the cache) into an `ECOSData`.

    Undecodable files are skipped with a warning naming them (and listed in `meta["skipped"]`);
    if that empties a split, one clear error. With `cache_dir`, the entry is the folder
    `<cache_dir>/<name>-<key>/`: each split's images as a uint8 `.npy` file (`pool.npy`,
    `client_train.npy`, `client_test.npy`), decoded straight into a memory map block by block,
    and `arrays.npz` (labels, domains, paths). It is built under a temporary name and swapped
    in once every check has passed; the images are then opened read-only with
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
        warn_skipped([(str(p), "it was skipped when the cache was built") for p in arrays["skipped"]], splits.root, listed_in=_SKIPPED_LIST)
    return assemble(splits, arrays, image_size, folder)


def assemble(splits: PathSplits, arrays: dict[str, np.ndarray], image_size: int, cache_path: Path | None) -> ECOSData:
    parts = {s: DomainSplit(arrays[f"{s}_images"], arrays[f"{s}_labels"], arrays[f"{s}_domains"]) for s in SPLITS}
    meta = {
        "root": str(splits.root),
        "image_size": image_size,
        **splits.params,
        "counts": split_counts(parts, splits.domain_names),
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


class OnDiskSource(DataSource):
    """Base of the on-disk sources: `split()` gives the files (no decoding), `load()` the arrays (decoded once, memoised).

    The constructor checks the settings every on-disk source has; `domains` (when the source
    knows its domains before listing the tree) checks `client_domain` against them, `where` names them.
    """

    name = "on_disk"

    def __init__(self, root, client_domain, *, seed, image_size, cache_dir, max_per_domain, domains=None, where: str = ""):
        self.client_domain = client_domain if domains is None else check_client_domain(client_domain, domains, where)
        self.seed = check_seed(seed)
        self.max_per_domain = check_max_per_domain(max_per_domain)
        self.image_size = check_image_size(image_size)
        self.root, self.cache_dir = root, cache_dir
        self._data: ECOSData | None = None

    def split(self) -> PathSplits:
        raise NotImplementedError

    def load(self) -> ECOSData:
        if self._data is None:
            self._data = load_splits(self.split(), self.image_size, self.cache_dir)
        return self._data
