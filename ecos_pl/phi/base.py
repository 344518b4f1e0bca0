"""What every φ is (`FeatureExtractor`: fit on the pool, transform on both sides, a fingerprint), and the helpers the kinds share."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from ecos_pl.phi.spec import _check_fields
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.features import l2_normalize


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
        kinds = ", ".join(sorted({c.kind for c in _kinds(FeatureExtractor) if c.kind}))
        return ECOSInputError(f"φ of type {type(self).__name__} cannot be saved to a φ file (kinds that can: {kinds}).")

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


def _kinds(cls) -> list[type]:
    """Every subclass of `cls`, however deep (the φ kinds, without importing the registry that lists them)."""
    return [c for sub in cls.__subclasses__() for c in (sub, *_kinds(sub))]
