"""The Flower run's settings: `[tool.flwr.app.config]` in pyproject.toml (the defaults), overridden by `flwr run -c`.

Every protocol key is one of `train.py`'s (conf/train.yaml), so the ServerApp and each ClientApp build
the very pipeline `train.py` builds with the same values (`pipeline(run_config)`: Hydra composes
conf/train.yaml with `run_settings(...).overrides`), and the proxy set selected over Flower is the
one `train.py clients=N` selects (`python -m ecos_pl.flower.run_config -c '...'` prints that one).

    clients, n-centroids, budget, seed   train.py's clients, n_centroids, budget, seed
    epsilon, client-cap                  client.epsilon, sampler.client_cap ("none": null)
    overrides                            more train.py overrides, e.g. "phi=pca data=digits5_lite"
    min-answers, timeout, connect-timeout, out   the round's (not train.py's)
    secagg, secagg-clip, secagg-num-shares, secagg-threshold   SecAgg+ (ecos_pl.flower.secagg)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from ecos_pl.protocol.errors import ECOSInputError, check_count
from ecos_pl.protocol.settings import check_number

ROOT = Path(__file__).resolve().parents[2]  # the project (or the unpacked FAB): conf/ and pyproject.toml
NONE_WORDS = ("none", "null")


def _optional_number(run_config: dict, key: str):
    """A number, or None for "none"/"null" (TOML has no null)."""
    value = run_config[key]
    if isinstance(value, str) and value.strip().lower() in NONE_WORDS:
        return None
    if isinstance(value, str) or isinstance(value, bool):
        raise ECOSInputError(f"{key} must be a number or \"none\", got {value!r}.")
    return value


@dataclass(frozen=True)
class RunSettings:
    """The run config, checked: train.py's overrides, and the round's own settings."""

    overrides: tuple[str, ...]
    clients: int
    min_answers: int
    timeout: float
    connect_timeout: float
    out: Path
    secagg: dict | None  # SecAggExchange's keywords; None: plain answers


def run_settings(run_config: dict) -> RunSettings:
    """`RunSettings` from a fused Flower run config (every key present); a bad value is one sentence naming its key."""
    missing = sorted(set(default_run_config()) - set(run_config))
    if missing:
        raise ECOSInputError(f"the run config has no '{missing[0]}'; run the app as pyproject.toml's [tool.flwr.app] declares it.")
    clients = check_count(run_config["clients"], "clients", low=1)
    min_answers = check_count(run_config["min-answers"], "min-answers", low=1, high=clients, high_name="clients")
    for key in ("timeout", "connect-timeout"):
        check_number(key, run_config[key], low=0.0, low_open=True)
    epsilon, cap = _optional_number(run_config, "epsilon"), _optional_number(run_config, "client-cap")
    if not isinstance(run_config["secagg"], bool):
        raise ECOSInputError(f"secagg must be true or false, got {run_config['secagg']!r}.")
    secagg = None
    if run_config["secagg"]:
        check_count(run_config["secagg-clip"], "secagg-clip", low=1)
        for key in ("secagg-num-shares", "secagg-threshold"):
            check_number(key, run_config[key], low=0.0, low_open=True)
        secagg = {"clip": run_config["secagg-clip"], "num_shares": run_config["secagg-num-shares"],
                  "reconstruction_threshold": run_config["secagg-threshold"]}
    extra = run_config["overrides"]
    if not isinstance(extra, str):
        raise ECOSInputError(f"overrides must be a string of train.py overrides, got {extra!r}.")
    if secagg is None and "client.noise=distributed" in shlex.split(extra):
        raise ECOSInputError("client.noise=distributed needs secagg=true: without a secure sum each device must add its "
                             "full noise (client.noise=local), since the cloud sees each answer.")
    overrides = (
        f"clients={clients}", f"n_centroids={run_config['n-centroids']}", f"budget={run_config['budget']}",
        f"seed={run_config['seed']}", f"client.epsilon={'null' if epsilon is None else epsilon}",
        f"sampler.client_cap={'null' if cap is None else cap}", *shlex.split(extra),
    )
    return RunSettings(overrides, clients, min_answers, float(run_config["timeout"]),
                       float(run_config["connect-timeout"]), Path(str(run_config["out"])).expanduser(), secagg)


def train_config(overrides):
    """conf/train.yaml composed with `overrides` (as `train.py` composes it) and validated."""
    from ecos_pl import compose
    from ecos_pl.config_schema import validate_config

    cfg = compose.train_config(*overrides)
    validate_config(cfg)
    return cfg


def pipeline(run_config: dict):
    """The `ProtocolPipeline` `train.py` builds from the same settings (conf/train.yaml's `datamodule.pipeline`)."""
    import hydra

    return hydra.utils.instantiate(train_config(run_settings(run_config).overrides).datamodule.pipeline)


def asked_privacy(run_config: dict):
    """The privacy the cloud's run config asks the devices for (train.py's `client.*` under its overrides: mechanism,
    ε, δ, noise, unit, clip_norm), as `ScorePrivacy`; a device checks it against its own floor and may refuse it."""
    from dataclasses import fields

    from ecos_pl.protocol.settings import ScorePrivacy

    client = train_config(run_settings(run_config).overrides).client
    return ScorePrivacy(**{f.name: client[f.name] for f in fields(ScorePrivacy)})


def default_run_config() -> dict:
    """pyproject.toml's `[tool.flwr.app.config]`, flattened as Flower hands it to the apps."""
    from flwr.common.config import flatten_dict, get_project_config

    return flatten_dict(get_project_config(ROOT)["tool"]["flwr"]["app"]["config"])


def fused_run_config(overrides: str | dict = "") -> dict:
    """The defaults with `flwr run -c`-style overrides ('k1=v1 k2="s"' or a dict), fused as Flower fuses them."""
    from flwr.common.config import fuse_dicts, parse_config_args

    extra = parse_config_args([overrides]) if isinstance(overrides, str) else dict(overrides)
    unknown = sorted(set(extra) - set(default_run_config()))
    if unknown:
        raise ECOSInputError(f"{unknown[0]} is not a key of [tool.flwr.app.config] ({', '.join(sorted(default_run_config()))}).")
    return fuse_dicts(default_run_config(), extra)


def main(argv=None) -> int:
    """The in-process reference: the proxy set `train.py` selects with these settings, as the Flower run's json."""
    parser = argparse.ArgumentParser(prog="python -m ecos_pl.flower.run_config", description=main.__doc__)
    parser.add_argument("-c", "--run-config", default="", help="the same string as `flwr run -c`")
    args = parser.parse_args(argv)
    from ecos_pl.bad_input import exit_on_bad_input
    from ecos_pl.config_schema import config_errors

    with exit_on_bad_input("ecos_pl.flower.run_config", config_errors()):
        selection, report = pipeline(fused_run_config(args.run_config)).select()
    print(json.dumps({"proxy_set_sha1": report.proxy_set_sha1, "n_selected": report.n_selected,
                      "n_clients": report.n_clients, "bytes_down": report.bytes_down, "bytes_up": report.bytes_up}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
