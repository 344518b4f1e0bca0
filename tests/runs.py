"""In-process runs of `train.py` and `eval.py`: their `main` called with a composed config (Hydra's passthrough),
so a test pays for training, not for a new interpreter. `conftest.tiny_run` shares one run between the tests that
assert different things about it."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path
from types import SimpleNamespace

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]

#: the tiny run every end-to-end test starts from (conf/debug/smoke.yaml), with a logger that needs no network
SMOKE = ("debug=smoke", "logger=csv")


def app_config(output_dir: Path, *overrides):
    """The composed config as `train.py` sees it inside Hydra's app (so `${hydra:...}` resolves)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def script(name: str):
    """`train.py` or `eval.py` as a module (named `<name>_script`: `eval` would shadow the builtin)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call_main(name: str, folder: Path, *overrides) -> SimpleNamespace:
    """`python <name>.py *overrides` in process: (code, returned, stdout, stderr, results, folder).

    code is 0, or the SystemExit code of a bad input; results is the results file train.py wrote (None if none).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    results_file = folder / "results.json"
    cfg = app_config(folder, *overrides, f"results_file={results_file}")
    out, err = io.StringIO(), io.StringIO()
    code, returned = 0, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            returned = script(name).main(cfg)
        except SystemExit as exit_:
            code = exit_.code
    results = json.loads(results_file.read_text()) if results_file.exists() else None
    return SimpleNamespace(code=code, returned=returned, stdout=out.getvalue(), stderr=err.getvalue(), results=results,
                           folder=folder, results_file=results_file)


def train(folder: Path, *overrides, smoke=SMOKE) -> SimpleNamespace:
    """A successful tiny `train.py` run in process."""
    run = call_main("train", folder, *smoke, *overrides)
    assert run.code == 0 and run.results is not None, run.stderr[-3000:]
    return run
