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
  our classifier files (`save_classifier_file`) or a Lightning checkpoint of one of our modules.

No code from a weights file ever runs (`read_weights`): safetensors is read as such, whatever
the suffix, and anything else only through `torch.load(weights_only=True)`; a pickle that
would import anything beyond tensors and plain containers is refused with one sentence.

A classifier head whose size differs from the one in the weights is dropped and
initialised afresh, as timm does; everything else must match the architecture.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import pickletools
import zipfile
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ecos_pl.atomic import write_atomic
from ecos_pl.protocol.errors import ECOSInputError

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


# ---------------------------------------------------------------- weights files that never run code

#: the `format` in the safetensors metadata of a classifier saved by `save_classifier_file`
CLASSIFIER_FORMAT = "ecos-pl-classifier/1"


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and bytes (sorted by name): the content hash of our files."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"\0{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_classifier_file(path: str | os.PathLike, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Weights as safetensors with our metadata and the content hash, written atomically."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {**{k: str(v) for k, v in metadata.items()}, "format": CLASSIFIER_FORMAT, "sha256": state_digest(state)}
    data = save(state, metadata=meta)
    return write_atomic(path, lambda f: f.write(data))


def _is_safetensors(path: Path) -> bool:
    """The safetensors layout: an 8-byte little-endian header length, then a JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and 1 < int.from_bytes(head[:8], "little") < path.stat().st_size and head[8:9] == b"{"


def _pickled_globals(path: Path) -> list[str] | None:
    """What a torch/pickle file would import when unpickled, read without running it; None when it is no pickle."""
    if zipfile.is_zipfile(path):
        try:
            return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001 - not a torch archive
            return None
    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    names.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - not a pickle (or not only one): what was read so far is the answer
        return names or None
    return names


def read_weights(path: str | os.PathLike, source: str) -> tuple[object, dict[str, str]]:
    """(the file's top-level object, its safetensors metadata) without running any code from the file.

    `source` names the file as the user gave it (e.g. `scenario.teacher.checkpoint='t.pt'`);
    every refusal is one `ECOSInputError` sentence that starts with it. A file in our
    classifier format must match its content hash.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if _is_safetensors(path):
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                state, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as err:
            raise ECOSInputError(f"{source} is a damaged safetensors file ({err}).") from None
        if meta.get("format") == CLASSIFIER_FORMAT and meta.get("sha256") != state_digest(state):
            raise ECOSInputError(f"{source} fails its content hash: its weights were altered or damaged after it was saved.")
        return state, meta
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # as timm: its training checkpoints keep their args
            return torch.load(path, map_location="cpu", weights_only=True), {}
    except pickle.UnpicklingError:
        names = _pickled_globals(path)
        if names is None:
            raise ECOSInputError(f"{source} could not be read as weights: it is neither a safetensors file nor a PyTorch checkpoint.") from None
        what = f" ({', '.join(sorted(set(names))[:3])})" if names else ""
        raise ECOSInputError(
            f"{source} was refused: it holds pickled objects{what} that loading would have to run, and nothing was run; "
            "give a safetensors file or a checkpoint of plain tensors."
        ) from None
    except Exception as err:  # noqa: BLE001 - truncated archives, empty files... fail in many types
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ECOSInputError(
            f"{source} could not be read as weights: it is neither a safetensors file nor a PyTorch checkpoint ({detail[:200]})."
        ) from None


def read_state_dict(path: str | os.PathLike, source: str | None = None) -> dict[str, torch.Tensor]:
    """A timm-style state dict from a weights file: bare, nested in a checkpoint, our classifier file or a Lightning one."""
    from timm.models import clean_state_dict

    source = source or repr(str(path))
    checkpoint, _ = read_weights(path, source)
    if isinstance(checkpoint, dict):  # where timm's load_state_dict looks, in its order (EMA weights first)
        key = next((k for k in ("state_dict_ema", "model_ema") if checkpoint.get(k) is not None), None)
        key = key or next((k for k in ("state_dict", "model") if k in checkpoint), None)
        checkpoint = checkpoint[key] if key else checkpoint
    if not isinstance(checkpoint, dict) or not checkpoint or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ECOSInputError(f"{source} holds no state dict of tensors.")
    state = clean_state_dict(checkpoint)
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
        raise ECOSInputError(
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
        state = read_state_dict(path, source)  # refusals are one sentence naming `param`
        # the head stored in the file decides whether timm keeps it (same size) or drops it (re-initialised)
        overlay = {"state_dict": state, "num_classes": _head_classes(state, classifier), "custom_load": False}
    try:
        model = timm.create_model(name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay, **kwargs)
    except RuntimeError as err:  # shapes that cannot be loaded
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0] if lines else ""
        detail = detail if len(detail) <= 300 else detail[:300] + "..."
        raise ECOSInputError(f"{source} does not fit timm model {name!r}: {detail}") from None
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
