"""The compression scenario's teacher: the model the client already has, handed over as weights.

In the simulation it is trained where the data live (the client's labelled
training split) or, as a weaker variant, by the cloud on the labelled pool; or
read from a checkpoint. A trained teacher is cached under a hash of everything
that determines it and reused by later runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
from torch import nn

from ecos_pl.models import ImageClassifier
from ecos_pl.scenarios.base import SupervisedModule

TEACHER_SOURCES = ("client", "pool")


def save_classifier(model: ImageClassifier, path: Path, meta: dict | None = None) -> None:
    """torch.save to a temporary name in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"arch": model.name, "num_classes": model.num_classes, "state_dict": model.state_dict(), "meta": meta or {}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_classifier(path: str | os.PathLike, arch: str, num_classes: int, input_size: int | str | None = None) -> ImageClassifier:
    """Load our teacher format or a Lightning checkpoint; a mismatching architecture is one clear error."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint={str(path)!r} does not exist.")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint={str(path)!r} holds no state_dict.")
    saved_arch = payload.get("arch") if isinstance(payload, dict) else None
    if saved_arch is not None and saved_arch != arch:
        raise ValueError(f"checkpoint={str(path)!r} was saved for architecture {saved_arch!r}, but the teacher is {arch!r}.")
    if any(k.startswith("model.") for k in state):  # a Lightning checkpoint of one of our modules
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    with torch.random.fork_rng(devices=[]):  # loading weights must not move the global RNG
        model = ImageClassifier(arch, num_classes, input_size=input_size)
    try:
        model.load_state_dict(state, strict=True)
        model.eval()
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(
            f"checkpoint={str(path)!r} does not match the teacher architecture {arch!r} with {num_classes} classes: {first}"
        ) from None
    return model


def _fingerprint(datamodule, spec: dict) -> str:
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    split = datamodule.data.client_train if spec["source"] == "client" else datamodule.data.pool
    h.update(split.images.tobytes())
    h.update(split.labels.tobytes())
    return h.hexdigest()[:16]


def obtain_teacher(
    datamodule,
    *,
    arch: str,
    num_classes: int,
    source: str = "client",
    checkpoint: str | None = None,
    epochs: int = 40,
    lr: float = 0.05,
    seed: int = 1,
    cache_dir: str | os.PathLike | None = None,
    make_trainer: Callable[..., pl.Trainer],
    input_size: int | str | None = None,
) -> tuple[nn.Module, dict]:
    """(teacher in eval mode, {"origin", "path"}): from `checkpoint`, from the cache, or trained now."""
    if checkpoint:
        return load_classifier(checkpoint, arch, num_classes, input_size).eval(), {"origin": "checkpoint", "path": str(checkpoint)}
    if source not in TEACHER_SOURCES:
        raise ValueError(f"teacher.source={source!r} is not one of {', '.join(TEACHER_SOURCES)} (or give teacher.checkpoint).")
    # v: the training recipe's version; 2 drops a short last batch (the data module's loader), so v1 teachers retrain
    spec = {"arch": arch, "num_classes": num_classes, "source": source, "epochs": epochs, "lr": lr, "seed": seed, "v": 2}
    if input_size is not None:  # only then: the default keeps its cache key
        spec["input_size"] = input_size
    path = Path(cache_dir or Path.home() / ".cache" / "ecos-pl").expanduser() / "teachers" / f"teacher-{_fingerprint(datamodule, spec)}.pt"
    if path.is_file():
        try:
            return load_classifier(path, arch, num_classes, input_size).eval(), {"origin": "cache", "path": str(path)}
        except Exception:  # noqa: BLE001 - a corrupt cache entry is rebuilt, not fatal
            path.unlink(missing_ok=True)
    with torch.random.fork_rng(devices=[]):
        pl.seed_everything(seed, workers=True, verbose=False)
        module = SupervisedModule(arch=arch, num_classes=num_classes, lr=lr, input_size=input_size)
        loader = datamodule.client_train_dataloader() if source == "client" else datamodule.pool_dataloader()
        make_trainer(max_epochs=epochs).fit(module, train_dataloaders=loader)
    save_classifier(module.model, path, meta=spec)
    return module.model.eval(), {"origin": f"trained on {source}", "path": str(path)}
