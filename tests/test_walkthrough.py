"""The README walkthrough, run line by line on a tiny `folders` tree: two parties, files handed over, and the same
proxy set as `train.py` selects in process with the same seed and settings.

`WALKTHROUGH` is the README's walkthrough block, read from README.md. Each `uv run ecos-cloud|ecos-client ...` line runs the program's
`main` with exactly that argv (after the shell's variable expansion), `mkdir -p` and `cp` are done in Python, and the
`uv run python ...` lines run as subprocesses. The test sets TREE, CLIENT, R and B for its tiny tree (the export
line's values are the README's), and appends tiny training settings to the `train.py` line: training does not touch
the selection, which happens before it.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ecos_pl.cli import client, cloud
from ecos_pl.protocol.store import load_selection

ROOT = Path(__file__).resolve().parents[1]

def readme_walkthrough() -> str:
    """The README's walkthrough block (```bash walkthrough), so the test runs what a user reads."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("```bash walkthrough\n") + len("```bash walkthrough\n")
    return text[start : text.index("```", start)]


WALKTHROUGH = readme_walkthrough()

#: training settings for the train.py line (tests/test_train.py's); they change nothing before training starts
TINY_TRAINING = [
    "scenario.epochs=1", "backbone.student=test_resnet",
    "+trainer.limit_train_batches=2", "trainer.check_val_every_n_epoch=1", "logger=csv", "callbacks=none",
]


def make_tree(root: Path, n_per_class: int = 40, size: int = 20, seed: int = 0) -> None:
    """Four style domains (background/ink colours) x three shape classes, plus out-of-class noise in each domain."""
    rng = np.random.default_rng(seed)
    styles = {"photo": ((200, 60, 40), (30, 30, 30)), "sketch": ((240, 240, 240), (10, 10, 10)),
              "night": ((20, 20, 60), (230, 230, 120)), "forest": ((30, 120, 40), (250, 200, 200))}
    yy, xx = np.mgrid[:size, :size]
    for domain, (bg, fg) in styles.items():
        for c in ("circle", "bar", "cross"):
            folder = root / domain / c
            folder.mkdir(parents=True)
            for i in range(n_per_class):
                img = np.empty((size, size, 3), np.float32)
                img[:] = bg
                img += rng.normal(0, 12, img.shape)
                cy, cx = rng.integers(7, 13, 2)
                mask = {"circle": (yy - cy) ** 2 + (xx - cx) ** 2 < 16, "bar": abs(xx - cx) < 2,
                        "cross": (abs(xx - cx) < 2) | (abs(yy - cy) < 2)}[c]
                img[mask] = fg
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{c}_{i:03d}.png")
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / domain / f"noise_{i}.png")


def _expand(text: str, env: dict) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], text)


def run_walkthrough(text: str, cwd: Path, overrides: dict, tmp: Path) -> dict:
    """Run the snippet line by line in `cwd`; returns {command: stdout} of the subprocess lines."""
    env, outputs = {}, {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for command in line.split(" && "):
            argv = shlex.split(_expand(command, env)) if not command.startswith("export") else shlex.split(command)
            if argv[0] == "export":
                for pair in argv[1:]:
                    key, value = pair.split("=", 1)
                    env[key] = overrides.get(key, value)
            elif argv[:2] == ["mkdir", "-p"]:
                for d in argv[2:]:
                    (cwd / d).mkdir(parents=True, exist_ok=True)
            elif argv[0] == "cp":
                for src in argv[1:-1]:
                    shutil.copy2(cwd / src, cwd / argv[-1])
            elif argv[:2] == ["uv", "run"] and argv[2] in ("ecos-cloud", "ecos-client"):
                main = cloud.main if argv[2] == "ecos-cloud" else client.main
                rc = main(argv[3:])
                assert rc == 0, command
            elif argv[:3] == ["uv", "run", "python"]:
                args = argv[3:]
                if args[0] == "train.py":
                    args = [str(ROOT / "train.py"), *args[1:], *TINY_TRAINING, f"hydra.run.dir={tmp / 'hydra'}"]
                proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                                      env={**os.environ, "PYTHONPATH": str(ROOT)})
                assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
                outputs[args[0]] = proc.stdout
            else:
                raise AssertionError(f"the walkthrough runner does not know: {command}")
    return outputs


def test_walkthrough_two_parties_same_proxy_set_as_train_py(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    make_tree(tree)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    outputs = run_walkthrough(WALKTHROUGH, work, {"TREE": str(tree), "CLIENT": "photo", "R": "16", "B": "30"}, tmp_path)

    assert "identical" in outputs["-c"]
    proxy = json.loads((work / "cloud/proxy.json").read_text())
    inprocess = json.loads((work / "inprocess.json").read_text())
    assert proxy["proxy_set_sha1"] == inprocess["proxy_set_sha1"]
    selection, _ = load_selection(inprocess["selection_artifact"])
    np.testing.assert_array_equal(proxy["indices"], selection.indices)
    assert proxy["n_selected"] == inprocess["n_selected"]
    assert proxy["bytes"]["down_per_client"] == inprocess["bytes_down"]
    assert proxy["clients"][0]["bytes_up"] == inprocess["bytes_up"] == (work / "client/scores.ecos").stat().st_size
    # the cloud names the proxy set by file, and finds the client's domain (pseudo_label's style-and-shape φ: at least
    # twice its share of the pool; the style-only φ takes more of it on this tree, whose domains differ by style alone)
    assert len(proxy["paths"]) == proxy["n_selected"]
    in_domain = np.mean([p.startswith("photo/") for p in proxy["paths"]])
    assert in_domain == inprocess["in_domain_fraction"] > 2 * inprocess["pool_in_domain_fraction"]
    # the pseudo_label round went through and was checked
    labels = json.loads((work / "cloud/proxy_labels.json").read_text())
    assert labels["indices"] == proxy["indices"] and len(labels["labels"]) == proxy["n_selected"]
    # ... in the labelling φ, and gave train.py's pseudo-labels (HOG, seeded subsamples keyed by each image's pixels)
    assert inprocess["label_phi"] == "hog" and labels["proxy_targets_sha1"] == inprocess["proxy_targets_sha1"]
    assert labels["n_labelled"] == inprocess["n_trained"] and labels["epsilon_exchange"] == inprocess["exchange_epsilon"]
    # what the client sent: exactly two message files
    sent = sorted(p.name for p in (work / "cloud/inbox").iterdir())
    assert sent == ["labels.ecos", "scores.ecos"]
