"""Image files on disk: which files are images, how a tree is listed, how a file is decoded.

One implementation for the on-disk data sources (`folders`, `digits5`, `domainnet`) and the
programs (`ecos-cloud`, `ecos-client`), so a file the programs read decodes to the same
pixels as in `data=folders`.

Image files are recognised by extension (`IMAGE_EXTENSIONS`, any case); hidden entries
(names starting with ".") are ignored; what cannot be listed is skipped with a warning
naming it. Every image is decoded with PIL, converted to RGB (every mode, 16-bit and float
greys included: `decode_image`) and resized to `size` x `size` (aspect ratio not kept); a file
that cannot be decoded, or whose header promises more pixels than the project's limit
(`MAX_IMAGE_PIXELS`, the setting `data.max_image_pixels` or `--max-pixels`), is skipped with a
warning naming it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ecos_pl.data.base import NONE_LABEL
from ecos_pl.protocol.errors import ECOSInputError, check_count

IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"})
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 512
#: PIL releases the GIL while decoding, so threads give a real speed-up on large trees.
DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))
_DECODE_BLOCK = 256
#: files of more pixels are skipped with a warning, unless a setting says otherwise (`pixel_limit`); Pillow's own
#: refusal (179 megapixels) would let a 22 KB palette PNG take 1.7 GB
MAX_IMAGE_PIXELS = 40_000_000
#: files of more pixels than this decode one at a time (`_SERIAL`), so DECODE_THREADS never multiply a large file
_SERIAL_PIXELS = 4_000_000
_SERIAL = threading.Lock()
#: undecodable files named one warning each, up to this many; the rest are counted in one more warning.
MAX_SKIP_WARNINGS = 20


def check_image_size(image_size) -> int:
    return check_count(image_size, "data.image_size", low=MIN_IMAGE_SIZE, high=MAX_IMAGE_SIZE, high_name="the largest supported size")


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


def list_images(folder: Path, flag: str) -> list[str]:
    """Every image under `folder` (any depth; symlinked folders are not entered), as sorted "/"-separated relative paths.

    Hidden entries are skipped; an entry that cannot be read is skipped with a warning naming
    it and `flag` (`list_entries`).
    """
    found, todo = [], [""]
    while todo:
        rel = todo.pop()
        dirs, files = list_entries(folder / rel if rel else folder, flag, follow_dir_links=False)
        found += [f"{rel}{f}" for f in files]
        todo += [f"{rel}{d}/" for d in dirs]
    return sorted(found)


def require_images(paths: list[str], flag: str, root: Path) -> list[str]:
    if not paths:
        raise ECOSInputError(f"{flag} {root} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    return paths


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


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class PixelLimit:
    """The most pixels a file may decode to (checked from its header, before a pixel is decoded), and the setting that says so."""

    pixels: int = MAX_IMAGE_PIXELS
    name: str = "data.max_image_pixels"


_limit = PixelLimit()


def check_max_pixels(value, name: str) -> int:
    return check_count(value, name, low=1)


@contextlib.contextmanager
def pixel_limit(pixels: int, name: str):
    """Within: files of more than `pixels` pixels are skipped, the warning naming setting `name` (data sources read it)."""
    global _limit
    old, _limit = _limit, PixelLimit(check_max_pixels(pixels, name), name)
    try:
        yield _limit
    finally:
        _limit = old


def current_pixel_limit() -> PixelLimit:
    return _limit


class ImageTooLarge(ValueError):
    """A file whose header promises more pixels than the limit: refused before it is decoded."""


def _high_depth_to_rgb(im: Image.Image, size: int) -> np.ndarray:
    """16-/32-bit integer (I;16*, I: 0..65535 -> 0..255) or float (F: [0, 1], or [0, 255] when a value exceeds 1) as uint8 RGB.

    Resized in float first (Pillow resamples F), so the scaling is applied to size x size values only.
    """
    f = im.convert("F")
    top = 65535.0 if im.mode != "F" else (1.0 if f.getextrema()[1] <= 1.0 else 255.0)
    if f.size != (size, size):
        f = f.resize((size, size), Image.Resampling.BILINEAR)
    grey = np.rint(np.clip(np.asarray(f, dtype=np.float64) * (255.0 / top), 0, 255)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def decode_image(path: str | os.PathLike, size: int, limit: PixelLimit | None = None) -> np.ndarray:
    """uint8 [size, size, 3]: RGB, resized (bilinear, antialiased) without keeping the aspect ratio.

    Every Pillow mode decodes to its RGB: palettes (transparent entries keep their colour; alpha is
    dropped), LA/PA/RGBa, CMYK (Pillow's conversion), 16- and 32-bit integer greys as 0..65535 and float
    greys as [0, 1] (`_high_depth_to_rgb`). A file of more than `limit.pixels` pixels (after a JPEG's
    reduced-scale draft) raises `ImageTooLarge` before anything is decoded; files over `_SERIAL_PIXELS`
    decode one at a time, so threads never multiply a large file's memory.
    """
    limit = limit or _limit
    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale that is still >= size (much faster)
        w, h = im.size
        if w * h > limit.pixels:
            raise ImageTooLarge(f"it is {w} x {h} = {w * h:,} pixels, more than {limit.name}={limit.pixels:,} allows")
        with _SERIAL if w * h > _SERIAL_PIXELS else contextlib.nullcontext():
            im.load()
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                return _high_depth_to_rgb(im, size)
            if im.mode in ("P", "PA", "LA", "La", "RGBa"):
                im = im.convert("RGBA")
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)


def decode_all(root: Path, paths: list[str], size: int, out: np.ndarray | None = None,
               limit: PixelLimit | None = None) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """(images [N, size, size, 3], ok mask [N], [(path, reason)] of the files that could not be decoded).

    `out`: where to decode to (a memory map on disk for large trees); by default a new array in memory.
    `limit`: the pixel limit (default: `current_pixel_limit()`).
    """
    limit = limit or _limit
    images = np.zeros((len(paths), size, size, 3), dtype=np.uint8) if out is None else out
    ok = np.ones(len(paths), dtype=bool)

    def block(start: int) -> list[tuple[int, str]]:
        failed = []
        for i in range(start, min(start + _DECODE_BLOCK, len(paths))):
            try:
                images[i] = decode_image(root / paths[i], size, limit)
            except ImageTooLarge as err:
                images[i] = 0
                failed.append((i, str(err)))
            except Exception as err:  # noqa: BLE001 - any unreadable file is skipped with a warning, never a crash
                images[i] = 0
                failed.append((i, f"it cannot be decoded as an image ({type(err).__name__}: {err})"))
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


def warn_skipped(skipped: list[tuple[str, str]], root: Path, where: str = "data.root", listed_in: str = "") -> None:
    """One warning per skipped file (naming it, `where` and the reason, a clause: "it cannot be decoded ..."), up to `MAX_SKIP_WARNINGS`, then one that counts the rest."""
    for path, reason in skipped[:MAX_SKIP_WARNINGS]:
        warnings.warn(f"{where}: skipping {path} (under {root}): {reason}.", stacklevel=3)
    if len(skipped) > MAX_SKIP_WARNINGS:
        listed = f" (all {len(skipped)} are listed in {listed_in})" if listed_in else ""
        warnings.warn(f"{where}: skipped {len(skipped) - MAX_SKIP_WARNINGS} more files under {root}{listed}.", stacklevel=3)


def decode_images(root: Path, paths: list[str], size: int, flag: str, limit: PixelLimit | None = None) -> tuple[np.ndarray, list[str]]:
    """(uint8 [N, size, size, 3], the paths decoded): what a program reads, decoded as the data sources do.

    Undecodable files are skipped with a warning naming them and `flag`; none left is one clear error.
    """
    images, ok, failed = decode_all(root, require_images(paths, flag, root), size, limit=limit)
    warn_skipped(failed, root, flag)
    if not ok.any():
        raise ECOSInputError(f"{flag} {root} holds no image that can be decoded.")
    return images[ok], [p for p, k in zip(paths, ok) if k]
