"""The φ kinds by name (what a φ file may hold) and by class path (what a conf/phi preset may name), and `concat`,
the kind made of the others."""

from __future__ import annotations

import hashlib
import re

import numpy as np

from ecos_pl.phi.backbone import TimmFeatures
from ecos_pl.phi.base import FeatureExtractor
from ecos_pl.phi.pca import HOGFeatures, PCAPixels
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.settings import check_number

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


#: the φ kinds a φ file may hold, and the classes (by import path) a Hydra φ config may name
#: (by the package's own path, `ecos_pl.phi.<Class>`, as conf/phi names them)
PHI_KINDS = {cls.kind: cls for cls in (TimmFeatures, PCAPixels, HOGFeatures, ConcatFeatures)}
PHI_TARGETS = {f"{__name__.rpartition('.')[0]}.{cls.__qualname__}": kind for kind, cls in PHI_KINDS.items()}


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
