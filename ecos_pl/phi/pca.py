"""φ kinds `pca` (PCA of raw pixels) and `hog` (PCA of HOG descriptors): a fixed descriptor, projected on the pool's principal components."""

from __future__ import annotations

import hashlib
from abc import abstractmethod

import numpy as np
import torch

from ecos_pl.phi.base import FeatureExtractor
from ecos_pl.phi.spec import MAX_DESCRIPTOR, _whole, check_phi_image_size
from ecos_pl.protocol.errors import ECOSInputError


class PCAProjected(FeatureExtractor):
    """A fixed descriptor of each image, centred and projected on the pool's top principal components.

    The cloud fits the projection on its public pool (on a seeded subsample of at most
    `fit_rows` images, so a million-image pool fits in seconds); both sides then apply it.
    Subclasses say what the descriptor is.
    """

    name = "pca_projected"
    #: at most this many pool images go into the PCA fit
    fit_rows: int = 100_000
    SPEC_FIELDS = {"n_components": _whole(1, 4096), "seed": _whole(0, 2**32 - 1)}
    _STATE = ("components_", "mean_", "explained_variance_")

    def __init__(self, n_components: int = 64, seed: int = 0):
        self.n_components = n_components
        self.seed = seed
        self._pca = None

    @abstractmethod
    def _descriptor(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, D] before the projection."""

    @abstractmethod
    def descriptor_dim(self, image_size: int) -> int:
        """D of `_descriptor` for images of `image_size` pixels a side (< 1: this φ cannot run at that size)."""

    def _fingerprint_text(self) -> str:
        return f"{self.name}:{self.n_components}:{self.seed}"

    def state_tensors(self):
        if self._pca is None:
            raise ECOSInputError(f"φ ({type(self).__name__}) was never fitted, so it cannot be saved.")
        return {f"pca.{k}": torch.from_numpy(np.ascontiguousarray(getattr(self._pca, k))) for k in self._STATE}

    def load_state_tensors(self, tensors, image_size):
        from sklearn.decomposition import PCA

        d = self.descriptor_dim(check_phi_image_size(image_size))
        if not 1 <= d <= MAX_DESCRIPTOR:
            raise ECOSInputError(f"φ {self.kind} cannot describe {image_size}-pixel images (its descriptor would hold {d} values).")
        if set(tensors) != {f"pca.{k}" for k in self._STATE}:
            raise ECOSInputError(f"φ {self.kind} state must be the tensors {', '.join(f'pca.{k}' for k in self._STATE)}.")
        arrays = {k: tensors[f"pca.{k}"].numpy() for k in self._STATE}
        k = arrays["components_"].shape[0] if arrays["components_"].ndim == 2 else 0
        want = {"components_": (k, d), "mean_": (d,), "explained_variance_": (k,)}
        for key, a in arrays.items():
            if a.shape != want[key] or not 1 <= k <= self.n_components or a.dtype.kind != "f" or not np.isfinite(a).all():
                raise ECOSInputError(
                    f"φ {self.kind} state pca.{key} must be finite floats of shape {want[key]} (at most {self.n_components} components), "
                    f"got {a.dtype} {a.shape}."
                )
        pca = PCA(n_components=k, random_state=self.seed, svd_solver="randomized")
        for key, a in arrays.items():
            setattr(pca, key, a)
        pca.n_components_, pca.n_features_in_ = k, d
        self._pca = pca
        return self

    def fit(self, pool_images):
        from sklearn.decomposition import PCA

        if len(pool_images) > self.fit_rows:
            pool_images = pool_images[np.sort(np.random.default_rng(self.seed).choice(len(pool_images), self.fit_rows, replace=False))]
        x = self._descriptor(pool_images)
        k = min(self.n_components, *x.shape)
        self._pca = PCA(n_components=k, random_state=self.seed, svd_solver="randomized").fit(x)
        return self

    def _features(self, images):
        if self._pca is None:
            raise RuntimeError(f"{type(self).__name__}.transform() was called before fit(); the cloud fits it on the pool first.")
        return self._pca.transform(self._descriptor(images))

    def fingerprint(self):
        h = hashlib.sha256(self._fingerprint_text().encode())
        if self._pca is not None:
            h.update(self._pca.components_.astype(np.float32).tobytes())
        return h.hexdigest()[:16]


class PCAPixels(PCAProjected):
    """Pixels, centred and projected on the pool's top principal components (keeps colour and style)."""

    name = kind = "pca"

    def _descriptor(self, images):
        return images.reshape(len(images), -1).astype(np.float32) / 255.0

    def descriptor_dim(self, image_size):
        return 3 * image_size * image_size


class HOGFeatures(PCAProjected):
    """Histograms of oriented gradients of the grey image (scikit-image), PCA-reduced.

    The opposite of what the protocol's φ needs: HOG keeps the shape of the strokes and
    drops colour, background and contrast polarity, so a k-NN vote in HOG space labels
    the client's photo-blended digits 0.86 right where PCA pixels get 0.51 (digits_lite,
    seed 1, 10-NN over the client's own split). `pseudo_label` labels in it (README).
    """

    name = kind = "hog"
    SPEC_FIELDS = {
        **PCAProjected.SPEC_FIELDS, "pixels_per_cell": _whole(1, 64), "orientations": _whole(1, 64), "cells_per_block": _whole(1, 16),
    }

    def __init__(self, n_components: int = 64, pixels_per_cell: int = 4, orientations: int = 9, cells_per_block: int = 2, seed: int = 0):
        super().__init__(n_components=n_components, seed=seed)
        self.pixels_per_cell = int(pixels_per_cell)
        self.orientations = int(orientations)
        self.cells_per_block = int(cells_per_block)

    def _fingerprint_text(self) -> str:
        return f"{super()._fingerprint_text()}:{self.pixels_per_cell}:{self.orientations}:{self.cells_per_block}"

    def descriptor_dim(self, image_size):
        """skimage's length: blocks of cells_per_block² cells of `orientations` bins, one block per cell position."""
        blocks = image_size // self.pixels_per_cell - self.cells_per_block + 1
        return blocks**2 * self.cells_per_block**2 * self.orientations if blocks >= 1 else 0

    def _descriptor(self, images):
        from skimage.color import rgb2gray
        from skimage.feature import hog

        cell, block = (self.pixels_per_cell,) * 2, (self.cells_per_block,) * 2
        rows = [hog(rgb2gray(image), orientations=self.orientations, pixels_per_cell=cell, cells_per_block=block) for image in images]
        return np.asarray(rows, dtype=np.float32).reshape(len(images), -1)
