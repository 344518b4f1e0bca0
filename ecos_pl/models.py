"""timm classifiers that take images in [0, 1] and apply their own resizing and normalisation.

Keeping the normalisation (and, when asked, the resize to the backbone's input
size) inside the model lets teacher, student and φ be different timm backbones
fed by the same data loaders.

Pretrained weights never come from the network. `pretrained` is

* `False`: random initialisation;
* `True`: the model's default timm weights, found in an already-filled local cache:
  the Hugging Face hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
  `~/.cache/huggingface/hub`) or torch hub's (`$TORCH_HOME/hub/checkpoints`). The
  cache is looked up directly, so nothing is downloaded whatever `HF_HUB_OFFLINE`
  says; a name with a tag (`resnet18.a1_in1k`) picks those weights;
* a path to a weights file (`.safetensors`, `.pth`, `.pt`, `.bin`, `.ckpt`): a timm
  state dict, a checkpoint holding one (`state_dict` / `model` / EMA keys), one of
  our teacher files or a Lightning checkpoint of one of our modules.

A classifier head whose size differs from the one in the weights is dropped and
initialised afresh, as timm does; everything else must match the architecture.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

#: accepted spellings of "keep the data's image size" and "use the pretrained config's input size".
KEEP_SIZE = (None, "none", "null", "data")
AUTO_SIZE = "auto"


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Resize(nn.Module):
    """Resize a batch to `size` (H, W) with the backbone's interpolation; no parameters, no buffers."""

    def __init__(self, size: tuple[int, int], interpolation: str = "bilinear"):
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.mode = interpolation if interpolation in ("bilinear", "bicubic", "nearest", "area") else "bilinear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        if self.mode in ("bilinear", "bicubic"):
            return F.interpolate(x, size=self.size, mode=self.mode, align_corners=False, antialias=True)
        return F.interpolate(x, size=self.size, mode=self.mode)

    def extra_repr(self) -> str:
        return f"size={self.size}, mode={self.mode}"


# ---------------------------------------------------------------- pretrained weights, offline


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment at call time (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def torch_hub_checkpoints_dir() -> Path:
    return Path(torch.hub.get_dir()).expanduser() / "checkpoints"


def _pretrained_cfg(name: str):
    try:
        return timm.models.get_pretrained_cfg(name)
    except RuntimeError as err:  # an unknown tag: "Invalid pretrained tag (foo) for resnet18."
        raise ValueError(f"model name {name!r}: {err}") from None


def find_cached_weights(name: str) -> tuple[Path | None, list[str]]:
    """(the cached weights file of timm model `name`, or None; the places looked at). Never touches the network."""
    cfg = _pretrained_cfg(name)
    looked: list[str] = []
    if cfg is None:
        return None, looked
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        wanted = cfg.hf_hub_filename or "pytorch_model.bin"
        names = [wanted]
        if wanted.endswith(".bin") or wanted.endswith(".pth"):
            stem = wanted.rsplit(".", 1)[0]
            names.insert(0, "model.safetensors" if stem == "pytorch_model" else f"{stem}.safetensors")
        cache = hf_hub_cache_dir()
        for filename in names:
            found = try_to_load_from_cache(repo, filename, cache_dir=str(cache), revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found), looked
        looked.append(f"{cache}/models--{repo.replace('/', '--')}/snapshots/<revision>/{names[0]}")
    if cfg.url:
        path = torch_hub_checkpoints_dir() / os.path.basename(cfg.url.split("?")[0])
        if path.is_file():
            return path, looked
        looked.append(str(path))
    return None, looked


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A timm-style state dict from a weights file: bare, nested in a checkpoint, our teacher file or a Lightning one."""
    from timm.models import load_state_dict

    path = str(path)
    try:
        state = load_state_dict(path, use_ema=True, weights_only=True)
    except Exception:  # noqa: BLE001 - a Lightning checkpoint can hold objects that weights_only refuses
        state = load_state_dict(path, use_ema=True, weights_only=False)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("it holds no state dict of tensors")
    for prefix in ("model.backbone.", "backbone."):  # our ImageClassifier, or a Lightning module around one
        if any(k.startswith(prefix) for k in state):
            state = _strip(state, prefix)
            break
    return state


def _head_classes(state: dict, classifier) -> int:
    """Rows of the classifier head stored in `state` (0 when it holds none)."""
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    for head in names:
        weight = state.get(f"{head}.weight")
        if weight is not None and weight.ndim >= 1:
            return int(weight.shape[0])
    return 0


def _check_covers(model: nn.Module, state: dict, classifier, source: str, name: str) -> None:
    """Every non-head weight of `model` must be in the file (timm loads non-strictly when it drops a head)."""
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    wanted = [
        k for k in model.state_dict()
        if not k.endswith("num_batches_tracked") and not any(k.startswith(f"{h}.") for h in heads)
    ]
    present = [k for k in wanted if k in state]
    if len(present) * 2 < len(wanted):
        return  # a foreign layout: timm's checkpoint filter maps it, and complains itself when it cannot
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(
            f"{source} does not hold weights for timm model {name!r}: {len(missing)} are missing (e.g. {missing[0]!r})."
        )


def create_timm_model(
    name: str, *, num_classes: int, pretrained: bool | str | os.PathLike | None = False, param: str = "pretrained", **kwargs
) -> nn.Module:
    """`timm.create_model`, offline: `pretrained` is False, True (an already-filled cache) or a weights file.

    `param` is the configuration key the user set (e.g. `phi.pretrained`); errors name it.
    """
    if not timm.is_model(name):
        raise ValueError(f"model name {name!r} is not a timm model (see timm.list_models()).")
    if isinstance(pretrained, str) and pretrained.strip().lower() in ("", "false", "none", "null", "0", "no"):
        pretrained = False
    elif isinstance(pretrained, str) and pretrained.strip().lower() in ("true", "1", "yes"):
        pretrained = True
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)

    cfg = _pretrained_cfg(name)
    if pretrained is True:
        path, looked = find_cached_weights(name)
        if path is None:
            where = " or ".join(looked) if looked else "nowhere (timm registers no weights for it)"
            tagged = f"{name}.{cfg.tag}" if cfg is not None and cfg.tag and "." not in name else name
            raise FileNotFoundError(
                f"{param}=true but no cached weights for {tagged!r} were found offline (looked in {where}); "
                f"put the weights file there or pass {param}=/path/to/weights.safetensors (or {param}=false)."
            )
        source = f"cached weights {str(path)!r}"
        custom_load = bool(cfg.custom_load) and path.suffix == ".npz"  # e.g. original ViT .npz from a url
    else:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{param}={str(path)!r} does not exist; give a local weights file, true (a filled cache) or false.")
        source = f"{param}={str(path)!r}"
        custom_load = path.suffix == ".npz"
    classifier = cfg.classifier if cfg is not None else None
    if custom_load:  # model-specific foreign format: timm's own loader
        overlay = {"file": str(path), "custom_load": True}
        state = None
    else:
        try:
            state = read_state_dict(path)
        except Exception as err:  # noqa: BLE001 - unreadable files come in many types
            raise ValueError(f"{source} could not be read as weights: {err or type(err).__name__}") from None
        # the head stored in the file decides whether timm keeps it (same size) or drops it (re-initialised)
        overlay = {"state_dict": state, "num_classes": _head_classes(state, classifier), "custom_load": False}
    try:
        model = timm.create_model(name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay, **kwargs)
    except RuntimeError as err:  # shapes that cannot be loaded
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0] if lines else ""
        detail = detail if len(detail) <= 300 else detail[:300] + "..."
        raise ValueError(f"{source} does not fit timm model {name!r}: {detail}") from None
    if isinstance(getattr(model, "pretrained_cfg", None), dict):
        model.pretrained_cfg.pop("state_dict", None)  # do not keep a second copy of the weights around
        model.pretrained_cfg["file"] = str(path)
    if state is not None:
        _check_covers(model, state, classifier, source, name)
    return model


def resolve_input_size(model: nn.Module, input_size) -> tuple[int, int] | None:
    """None (keep the data's size), or (H, W) from an int, a pair, or `auto` (the pretrained config's size)."""
    if isinstance(input_size, str) and input_size.strip().lower() in ("none", "null", "data", ""):
        return None
    if input_size is None:
        return None
    if isinstance(input_size, str) and input_size.strip().lower() == AUTO_SIZE:
        size = timm.data.resolve_model_data_config(model)["input_size"]
        return int(size[-2]), int(size[-1])
    if isinstance(input_size, int) or (isinstance(input_size, str) and input_size.strip().isdigit()):
        s = int(input_size)
        if s < 1:
            raise ValueError(f"input_size={input_size!r} must be a positive number of pixels, 'auto' or null.")
        return s, s
    try:
        h, w = [int(v) for v in input_size][-2:]
    except (TypeError, ValueError):
        raise ValueError(f"input_size={input_size!r} must be null (the data's size), 'auto' (the backbone's) or pixels.") from None
    return h, w


class ImageClassifier(nn.Module):
    """A timm backbone with its own input normalisation in front; `num_classes=0` gives pooled features.

    `input_size`: null keeps the data's image size (the default: small images go in as they are);
    `auto` resizes every batch to the backbone's pretrained input size; an int (or H, W) to that size.
    Mean and std always come from the backbone's data config (`timm.data.resolve_model_data_config`).
    """

    def __init__(
        self,
        name: str,
        num_classes: int,
        pretrained: bool | str = False,
        input_size: int | str | tuple | None = None,
        param: str = "pretrained",
        **timm_kwargs,
    ):
        super().__init__()
        self.name = name
        self.num_classes = num_classes
        self.backbone = create_timm_model(name, num_classes=num_classes, pretrained=pretrained, param=param, **timm_kwargs)
        self.data_config = timm.data.resolve_model_data_config(self.backbone)
        self.input_size = resolve_input_size(self.backbone, input_size)
        self.resize = None if self.input_size is None else Resize(self.input_size, self.data_config.get("interpolation", "bilinear"))
        self.normalize = Normalize(self.data_config["mean"], self.data_config["std"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize is not None:
            x = self.resize(x)
        return self.backbone(self.normalize(x))
