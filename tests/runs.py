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

from ecos_pl.compose import app_config

ROOT = Path(__file__).resolve().parents[1]

#: the tiny run every end-to-end test starts from (conf/debug/smoke.yaml), with a logger that needs no network, on
#: digits_lite: its pool holds part of the client's domain, so a test can see ECOS find it (the default data,
#: digits5_lite, pools only the other domains, as the paper does; test_train runs it too)
SMOKE = ("debug=smoke", "logger=csv", "data=digits_lite")


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
