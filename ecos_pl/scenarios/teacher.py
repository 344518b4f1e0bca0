"""The compression scenario's teacher: the model the client already has, handed over as weights.

In the simulation it is trained where the data live (the client's labelled
training split) or, as a weaker variant, by the cloud on the labelled pool; or
read from a checkpoint. A trained teacher is cached under a hash of everything
that determines it (the recipe, the data, and the trainer's limits: a
`fast_dev_run` teacher has a key of its own) and reused by later runs.

Teacher files are safetensors with our metadata (architecture, classes, input size,
the training spec) and a content hash (`ecos_pl.models.save_classifier_file`); a
`.pt` or Lightning checkpoint is read only through `torch.load(weights_only=True)`,
so no file runs code. A cached teacher that fails its checks is moved aside and
retrained.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import numpy as np
import torch
from pytorch_lightning.callbacks import Timer
from torch import nn

from ecos_pl.atomic import clean_dead_temporaries, move_aside
from ecos_pl.models import ImageClassifier, read_weights, save_classifier_file
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.scenarios.base import SupervisedModule

TEACHER_SOURCES = ("client", "pool")
#: Trainer attributes that change the weights a fit produces (with the accelerator's kind)
TRAINER_SETTINGS = (
    "fast_dev_run", "limit_train_batches", "overfit_batches", "max_epochs", "min_epochs", "max_steps", "min_steps",
    "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm", "precision",
)


def save_classifier(model: ImageClassifier, path: Path, meta: dict | None = None) -> Path:
    """Our classifier file: safetensors weights, what they are for and a content hash; atomic."""
    return save_classifier_file(path, model.state_dict(), {
        "arch": model.name,
        "num_classes": model.num_classes,
        "input_size": json.dumps(None if model.input_size is None else list(model.input_size)),
        "meta": json.dumps(meta or {}, sort_keys=True),
    })


def load_classifier(
    path: str | os.PathLike, arch: str, num_classes: int, input_size: int | str | None = None,
    *, param: str = "scenario.teacher.checkpoint",
) -> ImageClassifier:
    """Load our classifier file or a Lightning checkpoint, running no code from it; any mismatch is one sentence naming `param`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{param}={str(path)!r} does not exist.")
    return _read_classifier(path, arch, num_classes, input_size, f"{param}={str(path)!r}")[0]


def _read_classifier(path: Path, arch: str, num_classes: int, input_size, source: str) -> tuple[ImageClassifier, dict]:
    """(model in eval mode, the file's metadata); `source` starts every error sentence."""
    payload, meta = read_weights(path, source)
    payload = payload if isinstance(payload, dict) else {}
    state = payload.get("state_dict", payload)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ECOSInputError(f"{source} holds no state_dict of tensors.")
    hparams = payload.get("hyper_parameters")
    saved_arch = meta.get("arch") or payload.get("arch") or (hparams.get("arch") if isinstance(hparams, dict) else None)
    if saved_arch is not None and saved_arch != arch:
        raise ECOSInputError(f"{source} was saved for architecture {saved_arch!r}, but the teacher is {arch!r}.")
    if "num_classes" in meta and meta["num_classes"] != str(num_classes):
        raise ECOSInputError(f"{source} was saved for {meta['num_classes']} classes, but the data have {num_classes}.")
    if any(k.startswith("model.") for k in state):  # a Lightning checkpoint of one of our modules
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    with torch.random.fork_rng(devices=[]):  # loading weights must not move the global RNG
        model = ImageClassifier(arch, num_classes, input_size=input_size)
    if "input_size" in meta:
        resized = json.dumps(None if model.input_size is None else list(model.input_size))
        if meta["input_size"] != resized:
            raise ECOSInputError(
                f"{source} was saved for input size {meta['input_size']}, but the teacher here has {resized} (backbone.input_size)."
            )
    try:
        model.load_state_dict(state, strict=True)
        model.eval()
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ECOSInputError(
            f"{source} does not match the teacher architecture {arch!r} with {num_classes} classes: {first}"
        ) from None
    return model, meta


def trainer_settings(trainer: pl.Trainer) -> dict:
    """What of a Trainer changes the weights it trains: limits (`fast_dev_run`, `limit_train_batches`, ...), accumulation,
    clipping, precision, the accelerator's kind. Read from the Trainer itself, so every way of setting them counts."""
    settings = {k: getattr(trainer, k) for k in TRAINER_SETTINGS}
    settings["accelerator"] = type(trainer.accelerator).__name__
    return {k: v if v is None or isinstance(v, (bool, int, float)) else str(v) for k, v in settings.items()}


def _fingerprint(datamodule, spec: dict) -> str:
    """The teacher's key: its training spec (which split: `source`) and the data's one identity (`ProtocolPipeline.data_id`)."""
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    h.update(datamodule.pipeline.data_id.encode())
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
        raise ECOSInputError(f"teacher.source={source!r} is not one of {', '.join(TEACHER_SOURCES)} (or give teacher.checkpoint).")
    trainer = make_trainer(label=f"teacher: {arch} on the {'client' if source == 'client' else 'pool'}'s labels", max_epochs=epochs)
    # v: the training recipe's version; 2 drops a short last batch (the data module's loader), so v1 teachers retrain
    spec = {"arch": arch, "num_classes": num_classes, "source": source, "epochs": epochs, "lr": lr, "seed": seed, "v": 2,
            "batch_size": getattr(datamodule, "batch_size", None), "trainer": trainer_settings(trainer)}
    if input_size is not None:  # only then: the default keeps its cache key
        spec["input_size"] = input_size
    folder = Path(cache_dir or Path.home() / ".cache" / "ecos-pl").expanduser() / "teachers"
    clean_dead_temporaries(folder)
    path = folder / f"teacher-{_fingerprint(datamodule, spec)}.safetensors"
    # max_time: where training stops depends on the clock, so such a teacher is neither read from nor written to the cache
    cacheable = not any(isinstance(c, Timer) for c in trainer.callbacks)
    if cacheable and path.is_file():
        try:
            model, meta = _read_classifier(path, arch, num_classes, input_size, "it")
            if meta.get("meta") != json.dumps(spec, sort_keys=True):
                raise ECOSInputError("it was saved for another training spec than its key says")
            return model.eval(), {"origin": "cache", "path": str(path)}
        except ECOSInputError as err:  # damaged: never used, kept aside for a look, retrained below
            move_aside(path, str(err).rstrip("."))
    with torch.random.fork_rng(devices=[]):
        pl.seed_everything(seed, workers=True, verbose=False)
        module = SupervisedModule(arch=arch, num_classes=num_classes, lr=lr, input_size=input_size)
        data = datamodule.data
        split = data.client_train if source == "client" else data.pool.subset(np.flatnonzero(data.pool.labels >= 0))
        loader = datamodule.loader(split, train=True)
        trainer.fit(module, train_dataloaders=loader)
    if cacheable:
        save_classifier(module.model, path, meta=spec)
    return module.model.eval(), {"origin": f"trained on {source}", "path": str(path) if cacheable else None}
