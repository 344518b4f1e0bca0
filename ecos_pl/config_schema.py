"""The run's settings, typed and range-checked before any work starts (no data built, no teacher trained).

Hydra composes `conf/train.yaml`; `validate_config` then reads the keys a user
sets (top level, `client`, `datamodule`, `scenario`, `sampler`, `scenario.labels`,
`data`, `trainer`) into the dataclasses below. OmegaConf converts and type-checks
them (`budget=abc` is refused by name), each dataclass's `__post_init__` checks
ranges, and every failure is one `ECOSInputError` sentence naming the full key.
Without this, a bad `budget` surfaced deep inside `trainer.fit`, after the teacher
had trained for half an hour. Checks that need the data (budget against the pool
size) are in `check_against_data`, run right after the data are loaded.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields
from collections.abc import Sequence
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException, ValidationError

from ecos_pl.data.images import check_image_size
from ecos_pl.protocol.errors import ECOSInputError, check_count
from ecos_pl.protocol.settings import Allocation, Clustering, Labelling, Refinement, ScorePrivacy, check_number
from ecos_pl.scenarios.fixmatch import FixMatchSettings  # scenario.fixmatch's schema lives with FixMatch

#: seeds Lightning's seed_everything takes: 0 .. 2**32 - 1
MAX_SEED = 2**32 - 1
#: a schema field's type -> what a user reads
_TYPE_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}


def _whole(key: str, value: int, low: int) -> None:
    check_count(value, key, low=low)


_number = check_number


def _one_of(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ECOSInputError(f"{key}={value!r} is not one of: {', '.join(options)}.")


@dataclass
class ClientBudget:
    """`client.max_epsilon`: the ε budget for everything the client releases (its mechanism: `ScorePrivacy`)."""

    max_epsilon: Optional[float] = None

    def __post_init__(self):
        _number("client.max_epsilon", self.max_epsilon, low=0.0, low_open=True, optional=True)


@dataclass
class TrainSettings:
    """Top-level keys of `train.yaml` (their values are written there, once)."""

    seed: int = MISSING
    budget: int = MISSING
    n_centroids: int = MISSING
    clients: int = 1
    results_file: Optional[str] = None

    def __post_init__(self):
        check_count(self.seed, "seed", low=0, high=MAX_SEED, high_name="the largest seed Lightning takes")
        _whole("budget", self.budget, 1)
        _whole("n_centroids", self.n_centroids, 1)
        _whole("clients", self.clients, 1)


@dataclass
class DataModuleSettings:
    batch_size: int = 64
    eval_batch_size: int = 256
    num_workers: int = 0

    def __post_init__(self):
        _whole("datamodule.batch_size", self.batch_size, 1)
        _whole("datamodule.eval_batch_size", self.eval_batch_size, 1)
        _whole("datamodule.num_workers", self.num_workers, 0)


@dataclass
class PipelineSettings:
    reuse_selection: bool = True
    cache_features: bool = True
    feature_dtype: str = "auto"

    def __post_init__(self):
        _one_of("datamodule.pipeline.feature_dtype", self.feature_dtype, ("auto", "float32", "float16"))


@dataclass
class TeacherSettings:
    source: str = "client"
    checkpoint: Optional[str] = None
    epochs: int = 40
    lr: float = 0.05

    def __post_init__(self):
        _one_of("scenario.teacher.source", self.source, ("client", "pool"))
        _whole("scenario.teacher.epochs", self.epochs, 1)
        _number("scenario.teacher.lr", self.lr, low=0.0, low_open=True)
        if self.checkpoint is not None:
            from pathlib import Path

            if not Path(self.checkpoint).expanduser().is_file():
                raise ECOSInputError(f"scenario.teacher.checkpoint={self.checkpoint!r} is not a file.")


#: `scenario.ssl`: how the labelled scenarios train (`ecos_pl.scenarios.fixmatch`)
SSL_METHODS = ("fixmatch", "none")


@dataclass
class ScenarioSettings:
    name: str = "compression"
    epochs: int = 40
    lr: float = 0.05
    train_length: str = "budget"
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    temperature: Optional[float] = None  # compression: T of the distillation loss
    teacher: Optional[TeacherSettings] = None
    ssl: str = "none"  # the labelled scenarios: fixmatch (semi-supervised on the cloud) or none
    fixmatch: Optional[FixMatchSettings] = None

    def __post_init__(self):
        _whole("scenario.epochs", self.epochs, 1)
        _one_of("scenario.ssl", self.ssl, SSL_METHODS)
        _number("scenario.lr", self.lr, low=0.0, low_open=True)
        _one_of("scenario.train_length", self.train_length, ("budget", "epochs"))
        _number("scenario.label_smoothing", self.label_smoothing, low=0.0, high=1.0, high_open=True)
        _number("scenario.mixup_alpha", self.mixup_alpha, low=0.0)
        _number("scenario.temperature", self.temperature, low=0.0, low_open=True, optional=True)


@dataclass
class OracleSettings:
    """`sampler.oversample` of oracle_central (the clustering samplers' keys: `Clustering`, `Allocation`)."""

    oversample: float = 1.0

    def __post_init__(self):
        _number("sampler.oversample", self.oversample, low=0.0, low_open=True)


@dataclass
class DataSettings:
    """The keys the on-disk sources share; digits_lite has none of them but `name`."""

    name: str = "digits_lite"
    root: Optional[str] = None
    client_domain: Optional[str] = None
    image_size: int = 32
    client_fraction: float = 0.5
    test_fraction: float = 0.2
    max_per_domain: Optional[int] = None
    val_fraction: float = 0.2
    max_image_pixels: int = 40_000_000

    def __post_init__(self):
        _whole("data.max_image_pixels", self.max_image_pixels, 1)
        _number("data.val_fraction", self.val_fraction, low=0.0, high=1.0, high_open=True)
        check_image_size(self.image_size)  # the bounds every decoder and φ file share (ecos_pl.data.images)
        _number("data.client_fraction", self.client_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
        _number("data.test_fraction", self.test_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
        if self.max_per_domain is not None:
            _whole("data.max_per_domain", self.max_per_domain, 1)


#: where each schema reads from in the composed config ("" = the top level)
SECTIONS: tuple[tuple[str, type], ...] = (
    ("", TrainSettings),
    ("client", ScorePrivacy),
    ("client", ClientBudget),
    ("datamodule", DataModuleSettings),
    ("datamodule.pipeline", PipelineSettings),
    ("scenario", ScenarioSettings),
    ("sampler", Clustering),
    ("sampler", Allocation),
    ("sampler", Refinement),
    ("sampler", OracleSettings),
    ("scenario.labels", Labelling),
    ("data", DataSettings),
)


def _read(cfg: DictConfig, prefix: str, schema: type) -> dict:
    """The schema's keys that the config has under `prefix`, resolved (a missing `???` value is named)."""
    node = OmegaConf.select(cfg, prefix) if prefix else cfg
    if node is None or not isinstance(node, DictConfig):
        return {}
    out: dict[str, Any] = {}
    present = set(node.keys())  # `in` is False for a `???` value, which must be named, not skipped
    for f in fields(schema):
        if f.name not in present:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
        except MissingMandatoryValue:
            raise ECOSInputError(f"{key} must be set (add {key}=... to the command line).") from None
        out[f.name] = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    return out


def _sentence(err: ValidationError, prefix: str) -> str:
    key = f"{prefix}.{err.full_key}" if prefix else str(err.full_key)
    hint = typing.get_type_hints(err.object_type).get(str(err.key)) if dataclasses.is_dataclass(err.object_type) else None
    wanted = next((t for t in typing.get_args(hint) or (hint,) if t in _TYPE_WORDS), None)
    return f"{key} must be {_TYPE_WORDS.get(wanted, 'of another type')}, got {err.value!r}."


def validate_config(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Every section typed and range-checked; {section: dataclass instance}. Raises `ECOSInputError`.

    `overrides`: the command line's (train.py passes Hydra's); a `+key=value` among them must name a setting.
    """
    check_additions(overrides)
    if "cache_dir" in cfg and not OmegaConf.select(cfg, "cache_dir"):  # the data configs build `${cache_dir}/data`
        raise ECOSInputError("cache_dir must name a folder (default ~/.cache/ecos-pl; ECOS_CACHE=DIR moves it); "
                             "datamodule.pipeline.cache_dir=null turns off the selection and feature caches alone.")
    checked = {}
    for prefix, schema in SECTIONS:
        values = _read(cfg, prefix, schema)
        if prefix and not values:
            continue
        try:
            merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(values))
            key = prefix or "run"
            checked[key if key not in checked else f"{key}:{schema.__name__}"] = OmegaConf.to_object(merged)
        except ValidationError as err:
            raise ECOSInputError(_sentence(err, prefix)) from None
        except MissingMandatoryValue as err:  # a key the config does not set at all (e.g. removed with ~key)
            key = f"{prefix}.{err.full_key}" if prefix else str(err.full_key)
            raise ECOSInputError(f"{key} must be set (add {key}=... to the command line).") from None
    _check_trainer(cfg)
    return checked


def _check_trainer(cfg: DictConfig) -> None:
    """A trainer key that step-based training would silently ignore is refused instead."""
    trainer, scenario = cfg.get("trainer"), cfg.get("scenario")
    if trainer is None or scenario is None or scenario.get("train_length", "epochs") != "budget":
        return
    max_epochs = OmegaConf.select(trainer, "max_epochs")
    if max_epochs is not None and max_epochs != scenario.get("epochs"):
        raise ECOSInputError(
            f"trainer.max_epochs={max_epochs} has no effect under scenario.train_length=budget (every sampler trains "
            f"scenario.epochs × ⌈budget / batch⌉ steps): set scenario.epochs={max_epochs} instead, or scenario.train_length=epochs."
        )


def check_against_data(cfg: DictConfig, n_pool: int, *, uses_budget: bool, uses_centroids: bool) -> None:
    """Settings bounded by the pool, checked once the data are loaded and before any model is trained."""
    if uses_budget:
        check_count(cfg.budget, "budget", high=n_pool, high_name="the pool size")
    if uses_centroids:
        check_count(cfg.n_centroids, "n_centroids", high=n_pool, high_name="the pool size")


def config_errors() -> tuple[type[BaseException], ...]:
    """What a bad config raises: ours, and OmegaConf's (an interpolation that does not resolve, a key not in struct)."""
    return (ECOSInputError, OmegaConfBaseException)


# --------------------------------------------------------------------------- keys added on the command line

#: nodes whose `_target_` is called with every key of the node: a key added there must be one of its parameters
#: (the scenario is not: `build_module` reads the keys it knows, so a key added to it would be ignored)
_CALLED_WHOLE = ("trainer", "datamodule", "datamodule.pipeline", "sampler", "phi", "data.source", "logger", "callbacks.")


def _all_keys(node, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        full = f"{prefix}{key}"
        keys.append(full)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none() and not child._is_interpolation():
            keys += _all_keys(child, f"{full}.")
    return keys


def _target_parameters(node) -> list[str] | None:
    """The keyword parameters of `node`'s `_target_` (None: it takes **kwargs, or cannot be told)."""
    import inspect

    from hydra._internal.utils import _locate

    if not isinstance(node, DictConfig) or "_target_" not in node:
        return None
    try:
        params = inspect.signature(_locate(str(node.get("_target_")))).parameters
    except Exception:  # noqa: BLE001 - a target that does not import is instantiate's error, later
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [name for name, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]


def check_additions(overrides: Sequence[str]) -> None:
    """A key added on the command line (`+key=value`, `++key=value`) must be a setting of the run, or a parameter of the
    object its node builds (`+trainer.limit_val_batches=2`): anything else would be ignored without a word. One sentence
    names the key and the nearest known one (difflib)."""
    import difflib

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ecos_pl.compose import CONF, train_config

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    added = [o for o in parsed if (o.is_add() or o.is_force_add()) and o.package is None
             and not (CONF / o.key_or_group.replace(".", "/")).is_dir() and o.key_or_group not in ("hydra",)
             and not o.key_or_group.startswith("hydra.")]
    if not added:
        return
    keep = [o.input_line for o in parsed if o not in added]
    base = train_config(*keep)  # the run's settings without the additions: the schema they are checked against
    known = _all_keys(base)
    for o in added:
        key = o.key_or_group
        if key in known:  # ++key=value of an existing key: an ordinary override
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        called_whole = parent and (parent in _CALLED_WHOLE or any(parent.startswith(p) for p in _CALLED_WHOLE if p.endswith(".")))
        params = _target_parameters(node) if called_whole else None
        if called_whole and isinstance(node, DictConfig) and "_target_" in node and (params is None or leaf in params):
            continue
        siblings = [k for k in known if k.startswith(f"{parent}.")] + [f"{parent}.{p}" for p in params or ()] if parent else known
        close = difflib.get_close_matches(key, siblings, n=1)
        hint = f"; did you mean {close[0]}?" if close else "."
        raise ECOSInputError(f"{o.input_line.split('=', 1)[0]} is not a setting of this run, so its value would be ignored{hint}")
