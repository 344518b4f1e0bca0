"""φ, the feature extractor both parties share. It must keep domain/style information.

ECOS senses the client's *domain*: a φ trained to classify the pooled data learns
to ignore style and makes a poor φ (ECOS.md). The defaults here are a seeded
random-init CNN and PCA-reduced pixels, both style-preserving and offline.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from abc import ABC, abstractmethod

import numpy as np
import torch

from ecos_pl.data.images import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from ecos_pl.models import ImageClassifier
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.features import l2_normalize
from ecos_pl.protocol.settings import check_number

#: the longest descriptor a PCA-projected φ may project (PCA pixels at the largest image size)
MAX_DESCRIPTOR = 3 * MAX_IMAGE_SIZE**2
#: timm model names: a registered architecture, optionally with a weights tag; never a hub address or path
TIMM_NAME = re.compile(r"[a-z0-9_]{1,96}(\.[a-z0-9_]{1,96})?")


def check_phi_image_size(size, name: str = "image_size") -> int:
    """The image sizes (pixels a side) a φ may be built for: this bounds every allocation a φ file can ask for."""
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ECOSInputError(f"{name} must be a whole number in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {size!r}.")
    return size


# --------------------------------------------------------------------------- declarative specs
#
# A φ file carries data only: a spec (kind + a few bounded fields, checked below) and tensors.
# φ is rebuilt by its own class's constructor; nothing named in a file is imported or called.


def _whole(lo: int, hi: int):
    def check(value, name):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ECOSInputError(f"φ field {name} must be a whole number in [{lo}, {hi}], got {value!r}.")
        return value

    return check


def _choice(*options):
    def check(value, name):
        if value not in options:
            raise ECOSInputError(f"φ field {name} must be one of {', '.join(map(repr, options))}, got {value!r}.")
        return value

    return check


def _timm_name(value, name):
    if not isinstance(value, str) or not TIMM_NAME.fullmatch(value):
        raise ECOSInputError(f"φ field {name} must be a timm model name (letters, digits, _ and one .tag), got {value!r:.120}.")
    import timm

    if not timm.is_model(value):
        raise ECOSInputError(f"φ field {name}={value!r} is not a timm model (see timm.list_models()).")
    return value


def _pretrained_label(value, name):
    """What the weights were made from (part of the fingerprint); weights in a φ file come from the file, never from this."""
    if not isinstance(value, (bool, str)) or (isinstance(value, str) and len(value) > 1024):
        raise ECOSInputError(f"φ field {name} must be true, false or a weights file name, got {value!r:.120}.")
    return value


def _stages(value, name):
    whole = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not whole or not 1 <= len(value) <= 8 or len(set(value)) != len(value) or not all(0 <= v <= 7 for v in value):
        raise ECOSInputError(f"φ field {name} must list 1 to 8 distinct stage indices in [0, 7], got {value!r:.120}.")
    return [int(v) for v in value]


def _input_size(value, name):
    if value is None or value == "auto":
        return value
    pair = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise ECOSInputError(f"φ field {name} must be null, 'auto' or pixels [H, W], got {value!r:.120}.")
    return [check_phi_image_size(v, f"φ field {name}") for v in pair]


def _check_fields(cls, spec: dict) -> dict:
    """The constructor arguments of `cls` from a spec: every field known and within its bounds, the rest the defaults."""
    if not isinstance(spec, dict):
        raise ECOSInputError(f"φ spec must be a mapping of fields, got {type(spec).__name__}.")
    unknown = sorted(set(spec) - set(cls.SPEC_FIELDS) - {"kind"})
    if unknown:
        raise ECOSInputError(f"φ kind {cls.kind!r} has no field {unknown[0]!r} (its fields: {', '.join(cls.SPEC_FIELDS)}).")
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
    return {k: check(spec.get(k, defaults[k]), k) for k, check in cls.SPEC_FIELDS.items()}


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
    """`fit` runs on the cloud on public pool images only; `transform` runs on both sides.

    A φ that can travel in a φ file has a `kind` and `SPEC_FIELDS` (field -> bound check) and
    implements `spec`, `state_tensors` and `load_state_tensors`; `from_spec` rebuilds it.
    """

    name: str = "phi"
    #: the φ file kind (None: this φ cannot be saved to a φ file)
    kind: str | None = None
    SPEC_FIELDS: dict = {}
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

    def _not_saveable(self):
        return ECOSInputError(f"φ of type {type(self).__name__} cannot be saved to a φ file (kinds that can: {', '.join(PHI_KINDS)}).")

    def spec(self) -> dict:
        """The declarative description of this φ: its kind and bounded fields (what a φ file carries besides tensors)."""
        if self.kind is None:
            raise self._not_saveable()
        return {"kind": self.kind, **{k: getattr(self, k) for k in self.SPEC_FIELDS}}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that, with `spec()`, rebuild this φ exactly."""
        raise self._not_saveable()

    def load_state_tensors(self, tensors: dict, image_size: int) -> "FeatureExtractor":
        """Take the state `state_tensors` gave; every name, shape and value is checked first."""
        raise self._not_saveable()

    @classmethod
    def check_spec(cls, spec: dict) -> dict:
        """A spec's checked fields (every one known and within its bounds): what this kind's constructor gets."""
        return _check_fields(cls, spec)

    @classmethod
    def from_spec(cls, spec: dict, *, weights: bool = False, state_shapes: dict | None = None) -> "FeatureExtractor":
        """This kind's φ from a checked spec (no state yet). `weights`: let the constructor load pretrained
        weights (the cloud's own presets); a φ file's weights come from the file (`load_state_tensors`)."""
        return cls(**cls.check_spec(spec))

    def to_bytes(self, image_size: int, size_flag: str = "--image-size") -> bytes:
        """This φ as a φ file (`ecos_pl.phi_file`): spec, state tensors, `image_size`, fingerprint and probe features."""
        from ecos_pl.phi_file import phi_file_bytes

        return phi_file_bytes(self, image_size, size_flag)

    @staticmethod
    def from_file(path, flag: str = "--phi") -> tuple["FeatureExtractor", int]:
        """(φ, its image size) read back from a φ file (`ecos_pl.phi_file.load_phi_file`); errors name `flag` and `path`."""
        from ecos_pl.phi_file import load_phi_file

        return load_phi_file(path, flag)


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


class TimmFeatures(FeatureExtractor):
    """A timm backbone as φ: random-init (seeded) or pretrained weights.

    `pooling="avg"` gives the pooled penultimate features. `pooling="style"` gives,
    for each of the feature stages in `stages`, every channel's mean and standard
    deviation over space: the statistics that carry style (AdaIN, Gram matrices) and
    that a random-init network already has. On digits_lite they find the client's
    domain better than pooled features (README, "Choosing φ").
    """

    name = kind = "timm"
    SPEC_FIELDS = {
        "model": _timm_name, "pretrained": _pretrained_label, "seed": _whole(0, 2**63 - 1), "pooling": _choice("avg", "style"),
        "stages": _stages, "input_size": _input_size, "batch_size": _whole(1, 4096),
    }

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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = self._network(model, pretrained, pooling, self.stages, input_size).eval().to(self.device)
        #: None: the data's image size; (H, W): every batch is resized to it first (`input_size: auto` or pixels)
        self.input_size = self.model.input_size

    @staticmethod
    def _network(model, pretrained, pooling, stages, input_size) -> ImageClassifier:
        extra = {"features_only": True, "out_indices": tuple(stages)} if pooling == "style" else {}
        return ImageClassifier(model, num_classes=0, pretrained=pretrained, input_size=input_size, param="phi.pretrained", **extra)

    def spec(self):
        size = None if self.input_size is None else [int(v) for v in self.input_size]
        return {"kind": self.kind, "model": self.model_name, "pretrained": self.pretrained, "seed": self.seed,
                "pooling": self.pooling, "stages": list(self.stages), "input_size": size}

    @classmethod
    def from_spec(cls, spec, *, weights=False, state_shapes=None):
        """Checked on the meta device first (no memory): the resolved input size, and the state's names and shapes."""
        fields = cls.check_spec(spec)
        label = fields["pretrained"]
        if not weights:
            fields["pretrained"] = False  # the weights come from the φ file, never from a cache or the network
        try:
            with torch.device("meta"):
                shadow = cls._network(fields["model"], False, fields["pooling"], fields["stages"], fields["input_size"])
        except Exception as err:  # noqa: BLE001 - timm refuses a combination (e.g. stages the model does not have)
            raise ECOSInputError(f"φ timm {fields['model']!r} cannot be built with these fields ({type(err).__name__}: {err}).") from None
        if shadow.input_size is not None:
            _input_size(list(shadow.input_size), "input_size")
        if state_shapes is not None:
            want = {f"model.{k}": tuple(v.shape) for k, v in shadow.state_dict().items()}
            got = {k: tuple(v) for k, v in state_shapes.items()}
            if got != want:
                bad = sorted(set(got) ^ set(want)) or sorted(k for k in want if got[k] != want[k])
                raise ECOSInputError(f"φ timm {fields['model']!r} weights do not fit it (first difference: {bad[0]}).")
        phi = cls(**fields)
        phi.pretrained = label  # part of the fingerprint: what the weights were made from
        return phi

    def state_tensors(self):
        return {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}

    def load_state_tensors(self, tensors, image_size):
        check_phi_image_size(image_size)
        state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        if len(state) != len(tensors) or any(v.is_floating_point() and not torch.isfinite(v).all() for v in state.values()):
            raise ECOSInputError("φ timm state must be finite model.* tensors only.")
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ECOSInputError(f"φ timm {self.model_name!r} weights do not fit it ({_first_line(err)}).") from None
        return self

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


def _first_line(err) -> str:
    return " ".join(str(err).split())[:200]


#: the φ kinds a φ file may hold, and the classes (by import path) a Hydra φ config may name
PHI_KINDS = {cls.kind: cls for cls in (TimmFeatures, PCAPixels, HOGFeatures)}
PHI_TARGETS = {f"{cls.__module__}.{cls.__qualname__}": kind for kind, cls in PHI_KINDS.items()}


def _kind_class(spec) -> type[FeatureExtractor]:
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if not isinstance(kind, str) or kind not in PHI_KINDS:
        raise ECOSInputError(f"φ kind {kind!r:.80} is not one this program builds ({', '.join(PHI_KINDS)}).")
    return PHI_KINDS[kind]


def check_phi_spec(spec) -> dict:
    """The spec as a φ file's reader will check it (kind allowed, every field known and bounded)."""
    _kind_class(spec).check_spec(spec)
    return spec


def phi_from_spec(spec, *, weights: bool = False, state_shapes: dict | None = None) -> FeatureExtractor:
    """φ from a declarative spec: its `kind` picks one of `PHI_KINDS`, whose constructor gets the checked fields."""
    return _kind_class(spec).from_spec(spec, weights=weights, state_shapes=state_shapes)


def spec_from_config(config) -> dict:
    """A Hydra-style φ config (a conf/phi preset, or a format-1 φ file's) read as data: `_target_` must name a φ kind's class."""
    if not isinstance(config, dict):
        raise ECOSInputError(f"φ config must be a mapping, got {type(config).__name__}.")
    target = config.get("_target_")
    if target not in PHI_TARGETS:
        raise ECOSInputError(
            f"φ config names {target!r:.120}, which is not a φ class this program builds ({', '.join(PHI_TARGETS)}); nothing was run."
        )
    spec = {"kind": PHI_TARGETS[target], **{k: v for k, v in config.items() if k != "_target_"}}
    if spec["kind"] == ConcatFeatures.kind and isinstance(spec.get("parts"), dict):  # each part is a φ config itself
        spec["parts"] = {k: spec_from_config(v) for k, v in spec["parts"].items()}
    return spec


class ConcatFeatures(FeatureExtractor):
    """Several views of an image side by side, each L2-normalised and weighted: a φ that keeps style *and* shape.

    ECOS senses the client's domain through φ. On Digits-5 the domain nearest by style need not be
    nearest by shape: MNIST-M is MNIST's strokes over photos, and a style-only φ sends its budget to
    the printed, colourful digits. With unit-norm parts, the squared distance is the weighted sum of
    the parts' squared distances. A φ file carries it as kind `concat`: each part a spec of one of
    the other kinds (no nesting), its tensors prefixed with the part's name.
    """

    name = kind = "concat"
    #: a φ file's parts: at most this many, named like identifiers
    MAX_PARTS, _PART_NAME = 4, re.compile(r"[a-z][a-z0-9_]{0,31}")

    def __init__(self, parts: dict[str, FeatureExtractor], weights: dict[str, float] | None = None):
        if not parts:
            raise ECOSInputError("phi.parts must name at least one φ.")
        self.parts = dict(parts)
        self.weights = {k: 1.0 for k in self.parts} | dict(weights or {})
        unknown = sorted(set(self.weights) - set(self.parts))
        if unknown:
            raise ECOSInputError(f"phi.weights names {', '.join(unknown)}, which phi.parts does not ({', '.join(self.parts)}).")
        for k, w in self.weights.items():
            check_number(f"phi.weights.{k}", w, low=0.0, low_open=True)
        self.batch_rows = min(p.batch_rows for p in self.parts.values())

    def fit(self, pool_images):
        for part in self.parts.values():
            part.fit(pool_images)
        return self

    def _features(self, images):
        return np.concatenate([self.weights[k] * p.transform(images) for k, p in self.parts.items()], axis=1)

    def fingerprint(self):
        text = "|".join(f"{k}:{self.weights[k]:g}:{p.fingerprint()}" for k, p in self.parts.items())
        return hashlib.sha256(f"concat:{text}".encode()).hexdigest()[:16]

    def to(self, device):
        for part in self.parts.values():
            part.to(device)
        return self

    def spec(self):
        return {"kind": self.kind, "parts": {k: p.spec() for k, p in self.parts.items()},
                "weights": {k: float(self.weights[k]) for k in self.parts}}

    @classmethod
    def check_spec(cls, spec) -> dict:
        """{part name: its checked spec}; the fields are `parts` and `weights` only, every part one of the other kinds."""
        if not isinstance(spec, dict) or set(spec) - {"kind", "parts", "weights"}:
            raise ECOSInputError("φ kind 'concat' has the fields parts and weights only.")
        parts, weights = spec.get("parts"), spec.get("weights", {})
        if not isinstance(parts, dict) or not 1 <= len(parts) <= cls.MAX_PARTS or not isinstance(weights, dict):
            raise ECOSInputError(f"φ kind 'concat' needs 1 to {cls.MAX_PARTS} parts and a mapping of weights.")
        for name, part in parts.items():
            if not isinstance(name, str) or not cls._PART_NAME.fullmatch(name):
                raise ECOSInputError(f"φ concat part name {name!r:.40} is not a lower-case identifier.")
            if isinstance(part, dict) and part.get("kind") == cls.kind:
                raise ECOSInputError("φ concat parts cannot themselves be concat.")
            check_phi_spec(part)
        for name, w in weights.items():
            if name not in parts or isinstance(w, bool) or not isinstance(w, (int, float)):
                raise ECOSInputError(f"φ concat weight {name!r:.40} must be a number for one of its parts.")
        return parts

    @staticmethod
    def _by_part(state: dict, parts) -> dict[str, dict]:
        """{part: {its own tensor name: value}} from `part.name` keys; a key of no part is refused."""
        out = {name: {} for name in parts}
        for key, value in state.items():
            name, dot, rest = key.partition(".")
            if not dot or name not in out:
                raise ECOSInputError(f"φ concat state tensor {key!r:.80} belongs to none of its parts.")
            out[name][rest] = value
        return out

    @classmethod
    def from_spec(cls, spec, *, weights=False, state_shapes=None):
        parts = cls.check_spec(spec)
        shapes = None if state_shapes is None else cls._by_part(state_shapes, parts)
        built = {name: phi_from_spec(part, weights=weights, state_shapes=None if shapes is None else shapes[name])
                 for name, part in parts.items()}
        return cls(built, spec.get("weights"))

    def state_tensors(self):
        return {f"{name}.{k}": v for name, part in self.parts.items() for k, v in part.state_tensors().items()}

    def load_state_tensors(self, tensors, image_size):
        for name, state in self._by_part(tensors, self.parts).items():
            self.parts[name].load_state_tensors(state, image_size)
        return self

PHI_KINDS[ConcatFeatures.kind] = ConcatFeatures
PHI_TARGETS[f"{ConcatFeatures.__module__}.{ConcatFeatures.__qualname__}"] = ConcatFeatures.kind
