"""φ kind `timm`: a timm backbone, random-init (seeded) or pretrained, pooled or as style statistics."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ecos_pl.models import ImageClassifier
from ecos_pl.data.loaders import images_to_tensor
from ecos_pl.phi.base import FeatureExtractor, _track
from ecos_pl.phi.spec import _choice, _first_line, _input_size, _pretrained_label, _stages, _timm_name, _whole, check_phi_image_size
from ecos_pl.protocol.errors import ECOSInputError


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
