"""`digits_lite`: a small multi-domain digits benchmark built offline from data inside scikit-learn.

Why it exists: ECOS needs a client whose domain is a small minority of a heterogeneous
pool. Real benchmarks (Digits-5, DomainNet) need downloads; this one is built in a few
seconds from `load_digits` (1,797 handwritten 8x8 digits) and the two photos of
`load_sample_images`, so tests and demos run anywhere.

Recipe (bump `VERSION` whenever any of it changes, so stale caches are not reused):

* The digits are put in a seeded, class-stratified order and partitioned by
  underlying digit: `CLIENT_DOMAIN_FRACTION` of them go to the client's domain, the
  rest are shared equally by the other four digit domains. No digit is in two domains.
* The client's digits are split again by underlying digit into client test
  (`CLIENT_TEST_FRACTION`), client train (`CLIENT_TRAIN_FRACTION`) and the pool (the
  rest), so no digit is in two of them.
* Each digit is rendered `RENDERS[...]` times with fresh random style parameters
  (colours, photo crop, rotation, noise, scale and shift jitter).
* `N_CROPS` non-digit crops of the photos form the out-of-class domain "crops".

With the defaults (seed-independent counts): client test 252, client train 756, and a
pool of 4,480 images of which 376 (8.4%) are in the client's domain.
"""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ecos_pl.data.base import NONE_LABEL, DataSource, DomainSplit, ECOSData, split_counts
from ecos_pl.data.npz_cache import cache_folder, cached_npz
from ecos_pl.data.splits import stratified_order
from ecos_pl.protocol.errors import ECOSInputError

#: bump when the recipe changes; it is part of the cache file name.
VERSION = 2

DIGIT_DOMAINS = ("plain", "inverted", "photo", "svhn_like", "thick_rotated")
OOD_DOMAIN = "crops"
DOMAIN_NAMES = [*DIGIT_DOMAINS, OOD_DOMAIN]
CLASS_NAMES = [str(i) for i in range(10)]

#: share of the 1,797 underlying digits that go to the client's domain (~629 digits).
CLIENT_DOMAIN_FRACTION = 0.35
#: of the client domain's digits: share for the client test split (~252, rendered once).
CLIENT_TEST_FRACTION = 0.40
#: of the client domain's digits: share for client train (~189, rendered four times); the rest go to the pool.
#: Four renders (vs two) give the simulated teacher enough style variety: resnet18 on the client's
#: data went from 0.59 to 0.88 test accuracy (seed 1, 40 epochs).
CLIENT_TRAIN_FRACTION = 0.30
#: renders per underlying digit; the test split is rendered once so its images are independent digits.
RENDERS = {"client_test": 1, "client_train": 4, "client_pool": 2, "other": 3}
#: number of out-of-class photo crops in the pool.
N_CROPS = 600

#: side of a photo crop, in multiples of image_size, before it is resized (larger: more texture per image).
PHOTO_CROP_SIDE = (1.5, 6.0)
OOD_CROP_SIDE = (1.0, 8.0)
#: mean |inverted - original| (0..255) under the strokes below which a "photo" crop is redrawn.
PHOTO_MIN_LEGIBILITY = 90.0

MIN_IMAGE_SIZE = 8
#: the photos are 427 pixels high; larger images would be upscaled photo crops (and memory grows fast).
MAX_IMAGE_SIZE = 256

# fixed keys for child generators: each purpose gets its own stream, independent of call order.
_KEY_PARTITION = 0
_KEY_POOL_ORDER = 1
_KEY_CROPS = 2
_KEY_RENDER = 100  # + 10 * domain index + part

_SPLITS = ("pool", "client_train", "client_test")


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


# --------------------------------------------------------------------------- inputs


def _check_inputs(seed, client_domain, image_size) -> tuple[int, str, int]:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ECOSInputError(f"seed must be an int, got {seed!r}.")
    if seed < 0:
        raise ECOSInputError(f"seed must be a non-negative int, got {seed}.")
    if not isinstance(client_domain, str) or client_domain not in DIGIT_DOMAINS:
        raise ECOSInputError(
            f"data.source.client_domain={client_domain!r} is not one of the digit domains: {', '.join(DIGIT_DOMAINS)}."
        )
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral):
        raise ECOSInputError(f"data.source.image_size must be an int, got {image_size!r}.")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ECOSInputError(f"data.source.image_size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE}, got {image_size}.")
    return int(seed), client_domain, int(image_size)


# --------------------------------------------------------------------------- partition


def _partition(labels: np.ndarray, seed: int, client_domain: str) -> dict:
    """Underlying digit indices per (domain, part); parts of the client domain are test/train/pool."""
    order = stratified_order(labels, _rng(seed, _KEY_PARTITION))
    n_client = int(round(CLIENT_DOMAIN_FRACTION * len(labels)))
    n_test = int(round(CLIENT_TEST_FRACTION * n_client))
    n_train = int(round(CLIENT_TRAIN_FRACTION * n_client))
    client = order[:n_client]
    parts = {
        (client_domain, "client_test"): client[:n_test],
        (client_domain, "client_train"): client[n_test : n_test + n_train],
        (client_domain, "client_pool"): client[n_test + n_train :],
    }
    others = [d for d in DIGIT_DOMAINS if d != client_domain]
    for d, chunk in zip(others, np.array_split(order[n_client:], len(others))):
        parts[(d, "other")] = chunk
    return parts


# --------------------------------------------------------------------------- rendering


def _upscale(digits8: np.ndarray, size: int) -> np.ndarray:
    """8x8 in [0, 16] -> [N, size, size] stroke mask in [0, 1], smooth (bicubic) and slightly crisped."""
    # cubic-spline zoom is linear and separable: apply it as one [size, 8] matrix on both sides.
    eye = np.eye(8, dtype=np.float64)
    u = np.stack([ndimage.zoom(e, size / 8, order=3, mode="grid-constant", grid_mode=True) for e in eye], axis=1)
    up = np.einsum("ij,njk,lk->nil", u, digits8 / 16.0, u, optimize=True).astype(np.float32)
    # a soft threshold turns the blurry bicubic blob into strokes with edges, like a pen digit.
    up = np.clip((up - 0.2) / 0.5, 0.0, 1.0)
    return up * up * (3 - 2 * up)


def _warp(masks: np.ndarray, rng: np.random.Generator, scale: tuple, shift: float, rot_deg: float) -> np.ndarray:
    """Random similarity transform per image (bilinear, zero outside), vectorised over the batch."""
    n, s, _ = masks.shape
    c = (s - 1) / 2
    sc = rng.uniform(*scale, n)[:, None, None]
    th = np.deg2rad(rng.uniform(-rot_deg, rot_deg, n))[:, None, None]
    ty, tx = (rng.uniform(-shift, shift, (2, n)) * s / 32)[:, :, None, None]
    yy, xx = np.meshgrid(np.arange(s, dtype=np.float32), np.arange(s, dtype=np.float32), indexing="ij")
    dy, dx = yy - c - ty, xx - c - tx
    cos, sin = np.cos(th), np.sin(th)
    sy = (cos * dy + sin * dx) / sc + c + 1  # +1: coordinates in the zero-padded array
    sx = (-sin * dy + cos * dx) / sc + c + 1
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
    sy = np.clip(sy, 0, s + 1 - 1e-4)
    sx = np.clip(sx, 0, s + 1 - 1e-4)
    y0, x0 = np.floor(sy).astype(np.int64), np.floor(sx).astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, s + 1), np.minimum(x0 + 1, s + 1)
    wy, wx = sy - y0, sx - x0
    i = np.arange(n)[:, None, None]
    out = (
        padded[i, y0, x0] * (1 - wy) * (1 - wx)
        + padded[i, y0, x1] * (1 - wy) * wx
        + padded[i, y1, x0] * wy * (1 - wx)
        + padded[i, y1, x1] * wy * wx
    )
    return out.astype(np.float32)


def _photo_crops(photos: list[Image.Image], n: int, size: int, rng: np.random.Generator, side: tuple) -> np.ndarray:
    """n random square crops (side drawn in `side` * size, capped by the photo), resized to size, random flips."""
    out = np.empty((n, size, size, 3), dtype=np.float32)
    which = rng.integers(0, len(photos), n)
    sides = rng.uniform(side[0], side[1], n) * size
    fy, fx, flips = rng.random(n), rng.random(n), rng.random(n) < 0.5
    for k in range(n):
        img = photos[which[k]]
        w, h = img.size
        a = min(max(int(round(sides[k])), 2), h, w)
        y, x = int(fy[k] * (h - a)), int(fx[k] * (w - a))
        crop = np.asarray(img.resize((size, size), Image.BILINEAR, box=(x, y, x + a, y + a)), dtype=np.float32)
        out[k] = crop[:, ::-1] if flips[k] else crop
    return out


def _compose(mask: np.ndarray, bg: np.ndarray, fg: np.ndarray) -> np.ndarray:
    m = mask[..., None]
    return bg * (1 - m) + fg * m


def _render(domain: str, digits8: np.ndarray, repeats: int, size: int, photos, rng) -> np.ndarray:
    """Render each 8x8 digit `repeats` times in `domain`'s style; returns float [N*repeats, S, S, 3] in 0..255."""
    base = _upscale(np.repeat(digits8, repeats, axis=0), size)
    n = len(base)
    if domain == "plain":
        m = _warp(base, rng, (0.72, 0.9), 2.0, 6.0)
        fg = rng.uniform(215, 255, n)[:, None, None, None]
        bg = rng.uniform(0, 25, n)[:, None, None, None]
        return _compose(m, bg, fg).repeat(3, axis=-1)
    if domain == "inverted":
        m = _warp(base, rng, (0.72, 0.9), 2.0, 6.0)
        fg = rng.uniform(0, 35, n)[:, None, None, None]
        bg = rng.uniform(220, 255, n)[:, None, None, None]
        return _compose(m, bg, fg).repeat(3, axis=-1)
    if domain == "photo":
        # MNIST-M: |crop - 255 * mask| inverts the photo's colours inside the strokes. Where the
        # photo is mid-grey the inversion is invisible, so of 3 candidate crops take the first legible
        # one (not the most legible: that would always pick flat sky and lose the texture).
        m = _warp(base, rng, (0.72, 0.9), 2.0, 6.0)[..., None]
        cands = np.stack([_photo_crops(photos, n, size, rng, PHOTO_CROP_SIDE) for _ in range(3)])
        legibility = (np.abs(255 - 2 * cands).mean(-1, keepdims=True) * m).sum((2, 3, 4)) / m.sum((1, 2, 3))
        ok = legibility >= PHOTO_MIN_LEGIBILITY
        pick = np.where(ok.any(0), np.argmax(ok, axis=0), np.argmax(legibility, axis=0))
        crop = cands[pick, np.arange(n)]
        return np.abs(crop - 255 * m)
    if domain == "svhn_like":
        m = _warp(base, rng, (0.75, 0.95), 2.5, 8.0)
        bg = rng.uniform(25, 230, (n, 3))
        sign = np.where(bg.mean(1, keepdims=True) > 128, -1.0, 1.0)
        fg = np.clip(bg + sign * rng.uniform(55, 100, (n, 1)) + rng.normal(0, 25, (n, 3)), 0, 255)
        # a linear illumination gradient over the background, as on a photographed house number.
        g = rng.normal(0, 20, (n, 2))
        ramp = np.linspace(-1, 1, size, dtype=np.float32)
        light = g[:, 0, None, None] * ramp[None, :, None] + g[:, 1, None, None] * ramp[None, None, :]
        img = _compose(m, bg[:, None, None, :], fg[:, None, None, :]) + light[..., None]
        sigmas = rng.uniform(0.6, 1.3, n) * size / 32
        for k in range(n):
            img[k] = ndimage.gaussian_filter(img[k], (sigmas[k], sigmas[k], 0))
        return img + rng.normal(0, 1, img.shape) * rng.uniform(5, 14, (n, 1, 1, 1))
    if domain == "thick_rotated":
        k = max(3, int(round(3 * size / 32)) | 1)
        thick = ndimage.maximum_filter(base, size=(1, k, k))
        m = _warp(thick, rng, (0.62, 0.78), 2.0, 30.0)
        hue = rng.random(n)
        fg = _hsv_to_rgb(hue, rng.uniform(0.6, 1.0, n), rng.uniform(0.85, 1.0, n)) * 255
        bg = _hsv_to_rgb((hue + 0.5) % 1.0, rng.uniform(0.0, 0.4, n), rng.uniform(0.05, 0.3, n)) * 255
        return _compose(m, bg[:, None, None, :], fg[:, None, None, :])
    raise AssertionError(domain)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]])  # [6, 3, n]
    return table[i, :, np.arange(len(h))]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- build / cache


def _build_arrays(seed: int, client_domain: str, size: int, renders: dict[str, int]) -> dict[str, np.ndarray]:
    """All splits as plain arrays (what the cache stores)."""
    from sklearn.datasets import load_digits, load_sample_images

    digits = load_digits()
    d8, labels = digits.images, digits.target.astype(np.int64)
    photos = [Image.fromarray(im) for im in load_sample_images().images]
    parts = _partition(labels, seed, client_domain)

    chunks: dict[str, list] = {s: [] for s in _SPLITS}
    part_to_split = {
        "client_test": "client_test",
        "client_train": "client_train",
        "client_pool": "pool",
        "other": "pool",
    }
    part_key = {"client_test": 0, "client_train": 1, "client_pool": 2, "other": 3}
    for (domain, part), idx in sorted(parts.items(), key=lambda kv: (DOMAIN_NAMES.index(kv[0][0]), kv[0][1])):
        r = renders[part]
        rng = _rng(seed, _KEY_RENDER + 10 * DOMAIN_NAMES.index(domain) + part_key[part])
        imgs = _to_uint8(_render(domain, d8[idx], r, size, photos, rng))
        src = np.repeat(idx, r)
        chunks[part_to_split[part]].append((imgs, labels[src], np.full(len(src), DOMAIN_NAMES.index(domain)), src))
    crops = _to_uint8(_photo_crops(photos, N_CROPS, size, _rng(seed, _KEY_CROPS), OOD_CROP_SIDE))
    chunks["pool"].append(
        (crops, np.full(N_CROPS, NONE_LABEL), np.full(N_CROPS, DOMAIN_NAMES.index(OOD_DOMAIN)), np.full(N_CROPS, -1))
    )

    arrays = {}
    for split in _SPLITS:
        imgs, labs, doms, srcs = (np.concatenate(a) for a in zip(*chunks[split]))
        if split == "pool":  # mixed order, so nothing downstream can rely on domain blocks
            perm = _rng(seed, _KEY_POOL_ORDER).permutation(len(imgs))
            imgs, labs, doms, srcs = imgs[perm], labs[perm], doms[perm], srcs[perm]
        arrays[f"{split}_images"] = np.ascontiguousarray(imgs)
        arrays[f"{split}_labels"] = labs.astype(np.int64)
        arrays[f"{split}_domains"] = doms.astype(np.int64)
        arrays[f"{split}_source"] = srcs.astype(np.int64)
    return arrays


def _recipe(seed: int, client_domain: str, size: int, renders: dict[str, int]) -> str:
    return json.dumps(
        {"version": VERSION, "seed": seed, "client_domain": client_domain, "image_size": size, "renders": renders},
        sort_keys=True,
    )


def _renders(client_train_renders) -> dict[str, int]:
    if isinstance(client_train_renders, bool) or not isinstance(client_train_renders, numbers.Integral) or client_train_renders < 1:
        raise ECOSInputError(f"data.source.client_train_renders must be a whole number >= 1, got {client_train_renders!r}.")
    return {**RENDERS, "client_train": int(client_train_renders)}


def _assemble(arrays: dict[str, np.ndarray], recipe: dict, cache_path: Path | None) -> ECOSData:
    splits = {s: DomainSplit(arrays[f"{s}_images"], arrays[f"{s}_labels"], arrays[f"{s}_domains"]) for s in _SPLITS}
    counts = split_counts(splits, DOMAIN_NAMES)
    meta = {
        "version": recipe["version"],
        "seed": recipe["seed"],
        "image_size": recipe["image_size"],
        "counts": counts,
        "source_index": {s: arrays[f"{s}_source"] for s in _SPLITS},
        "fractions": {
            "client_domain": CLIENT_DOMAIN_FRACTION,
            "client_test": CLIENT_TEST_FRACTION,
            "client_train": CLIENT_TRAIN_FRACTION,
        },
        "renders": dict(recipe["renders"]),
        "cache_path": None if cache_path is None else str(cache_path),
    }
    return ECOSData(
        name="digits_lite",
        pool=splits["pool"],
        client_train=splits["client_train"],
        client_test=splits["client_test"],
        domain_names=list(DOMAIN_NAMES),
        class_names=list(CLASS_NAMES),
        client_domain=recipe["client_domain"],
        meta=meta,
    )


def build_digits_lite(
    seed: int = 1,
    client_domain: str = "photo",
    cache_dir: str | os.PathLike | None = None,
    image_size: int = 32,
    client_train_renders: int = RENDERS["client_train"],
) -> ECOSData:
    """Build (or load from the cache) the digits_lite benchmark; same seed -> byte-identical arrays.

    `client_train_renders`: how many times each client-train digit is drawn (fresh styles each time).
    """
    seed, client_domain, image_size = _check_inputs(seed, client_domain, image_size)
    renders = _renders(client_train_renders)
    path = cache_folder(cache_dir) / f"digits_lite-v{VERSION}-seed{seed}-{client_domain}-{image_size}-ct{renders['client_train']}.npz"
    recipe = _recipe(seed, client_domain, image_size, renders)
    arrays = cached_npz(
        path, recipe, lambda: _build_arrays(seed, client_domain, image_size, renders),
        lambda a: _assemble(a, json.loads(recipe), None), "digits_lite",  # _assemble validates shapes and dtypes
    )
    return _assemble(arrays, json.loads(recipe), path)


class DigitsLite(DataSource):
    """Config-friendly wrapper (Hydra instantiates it; `load()` does the work)."""

    name = "digits_lite"

    def __init__(
        self,
        seed: int = 1,
        client_domain: str = "photo",
        cache_dir=None,
        image_size: int = 32,
        client_train_renders: int = RENDERS["client_train"],
    ):
        self.seed, self.client_domain, self.image_size = _check_inputs(seed, client_domain, image_size)
        self.client_train_renders = _renders(client_train_renders)["client_train"]
        self.cache_dir = cache_dir

    def load(self) -> ECOSData:
        return build_digits_lite(self.seed, self.client_domain, self.cache_dir, self.image_size, self.client_train_renders)
