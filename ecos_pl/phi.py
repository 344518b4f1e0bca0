"""φ, the feature extractor both parties share. It must keep domain/style information.

ECOS senses the client's *domain*: a φ trained to classify the pooled data learns
to ignore style and makes a poor φ (ECOS.md). The defaults here are a seeded
random-init CNN and PCA-reduced pixels, both style-preserving and offline.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod

import numpy as np
import torch

from ecos_pl.models import ImageClassifier
from ecos_pl.protocol.features import l2_normalize


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def _track(steps: range, description: str, progress: bool | None):
    """A rich progress bar over `steps` on long work: large pools take minutes through a backbone.

    Shown when asked (`progress=True`), or by default when there is more than one
    step and stdout is a terminal, so CI logs do not fill with bar redraws.
    """
    if progress is False or (progress is None and len(steps) <= 1):
        return steps
    from rich.console import Console
    from rich.progress import track

    console = Console()
    if progress is None and not console.is_terminal:
        return steps
    return track(steps, description=description, console=console, transient=True)


class FeatureExtractor(ABC):
    """`fit` runs on the cloud on public pool images only; `transform` runs on both sides."""

    name: str = "phi"
    #: rows `transform` handles in one go; the feature cache streams the pool in blocks of this many
    #: rows, so a cached feature is computed exactly as `transform(pool)` would compute it.
    batch_rows: int = 65536

    def fit(self, pool_images: np.ndarray) -> "FeatureExtractor":
        return self

    @abstractmethod
    def _features(self, images: np.ndarray) -> np.ndarray: ...

    def transform(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, d], rows L2-normalised."""
        return l2_normalize(np.asarray(self._features(images), dtype=np.float32), inplace=True)

    @abstractmethod
    def fingerprint(self) -> str:
        """Identifies φ (type, weights, settings) so cached features and messages can be matched to it."""

    def to(self, device) -> "FeatureExtractor":
        """Run `transform` on `device` from now on (a no-op for φ that have no network)."""
        return self


class PCAProjected(FeatureExtractor):
    """A fixed descriptor of each image, centred and projected on the pool's top principal components.

    The cloud fits the projection on its public pool (on a seeded subsample of at most
    `fit_rows` images, so a million-image pool fits in seconds); both sides then apply it.
    Subclasses say what the descriptor is.
    """

    name = "pca_projected"
    #: at most this many pool images go into the PCA fit
    fit_rows: int = 100_000

    def __init__(self, n_components: int = 64, seed: int = 0):
        self.n_components = n_components
        self.seed = seed
        self._pca = None

    @abstractmethod
    def _descriptor(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, D] before the projection."""

    def _spec(self) -> str:
        return f"{self.name}:{self.n_components}:{self.seed}"

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
        h = hashlib.sha256(self._spec().encode())
        if self._pca is not None:
            h.update(self._pca.components_.astype(np.float32).tobytes())
        return h.hexdigest()[:16]


class PCAPixels(PCAProjected):
    """Pixels, centred and projected on the pool's top principal components (keeps colour and style)."""

    name = "pca"

    def _descriptor(self, images):
        return images.reshape(len(images), -1).astype(np.float32) / 255.0


class HOGFeatures(PCAProjected):
    """Histograms of oriented gradients of the grey image (scikit-image), PCA-reduced.

    The opposite of what the protocol's φ needs: HOG keeps the shape of the strokes and
    drops colour, background and contrast polarity, so a k-NN vote in HOG space labels
    the client's photo-blended digits 0.86 right where PCA pixels get 0.51 (digits_lite,
    seed 1, 10-NN over the client's own split). `pseudo_label` labels in it (README).
    """

    name = "hog"

    def __init__(self, n_components: int = 64, pixels_per_cell: int = 4, orientations: int = 9, cells_per_block: int = 2, seed: int = 0):
        super().__init__(n_components=n_components, seed=seed)
        self.pixels_per_cell = int(pixels_per_cell)
        self.orientations = int(orientations)
        self.cells_per_block = int(cells_per_block)

    def _spec(self) -> str:
        return f"{super()._spec()}:{self.pixels_per_cell}:{self.orientations}:{self.cells_per_block}"

    def _descriptor(self, images):
        from skimage.color import rgb2gray
        from skimage.feature import hog

        cell, block = (self.pixels_per_cell,) * 2, (self.cells_per_block,) * 2
        rows = [hog(rgb2gray(image), orientations=self.orientations, pixels_per_cell=cell, cells_per_block=block) for image in images]
        return np.asarray(rows, dtype=np.float32).reshape(len(images), -1)


class TimmFeatures(FeatureExtractor):
    """A timm backbone as φ: random-init (seeded) or pretrained weights.

    `pooling="avg"` gives the pooled penultimate features. `pooling="style"` gives,
    for each of the feature stages in `stages`, every channel's mean and standard
    deviation over space: the statistics that carry style (AdaIN, Gram matrices) and
    that a random-init network already has. On digits_lite they find the client's
    domain better than pooled features (README, "Choosing φ").
    """

    name = "timm"

    def __init__(
        self,
        model: str = "resnet18",
        pretrained: bool | str = False,
        seed: int = 0,
        pooling: str = "avg",
        stages: tuple[int, ...] | list[int] = (0, 1, 2),
        batch_size: int = 256,
        device: str | None = None,
        progress: bool | None = None,
        input_size: int | str | None = None,
    ):
        if pooling not in ("avg", "style"):
            raise ValueError(f"pooling={pooling!r} must be 'avg' or 'style'.")
        self.model_name = model
        self.pretrained = pretrained
        self.seed = seed
        self.pooling = pooling
        self.stages = tuple(int(i) for i in stages)
        self.batch_size = self.batch_rows = int(batch_size)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        #: None: a progress bar on a terminal when there is more than one batch; True/False: always/never
        self.progress = progress
        extra = {"features_only": True, "out_indices": self.stages} if pooling == "style" else {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = ImageClassifier(
                model, num_classes=0, pretrained=pretrained, input_size=input_size, param="phi.pretrained", **extra
            ).eval().to(self.device)
        #: None: the data's image size; (H, W): every batch is resized to it first (`input_size: auto` or pixels)
        self.input_size = self.model.input_size

    def to(self, device):
        self.device = str(device)
        self.model.to(self.device)
        return self

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.pooling == "avg":
            return out
        return torch.cat([torch.cat([f.mean(dim=(2, 3)), f.std(dim=(2, 3))], dim=1) for f in out], dim=1)

    @torch.inference_mode()
    def _features(self, images):
        starts = _track(range(0, len(images), self.batch_size), f"φ features ({len(images):,} images)", self.progress)
        out = [
            self._embed(images_to_tensor(images[start : start + self.batch_size]).to(self.device)).float().cpu().numpy()
            for start in starts
        ]
        return np.concatenate(out)

    def fingerprint(self):
        spec = f"timm:{self.model_name}:{self.pretrained}:{self.seed}:{self.pooling}:{self.stages}"
        if self.input_size is not None:  # only when set, so the default φ keeps its fingerprint
            spec += f":resize{self.input_size}"
        h = hashlib.sha256(spec.encode())
        for tensor in self.model.state_dict().values():
            h.update(tensor.detach().cpu().numpy().tobytes())
        return h.hexdigest()[:16]
