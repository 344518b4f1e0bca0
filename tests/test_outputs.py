"""A run's folder: proxy_set.csv, the student as safetensors and ONNX (checked by ONNX Runtime), a teacher-free
checkpoint that resumes, and eval.py reproducing the run's test accuracy from the student file."""

import csv
import json

import numpy as np
import pytest
import torch

from runs import app_config, call_main
from test_train import ECOS_RUN, TINY


@pytest.fixture(scope="module")
def finished_run(tiny_run):
    """tests/test_train.py's ecos run (default callbacks, outputs written): (its folder, its results)."""
    run = tiny_run(*ECOS_RUN)
    return run.folder, run.results


def test_proxy_set_csv_names_every_selected_sample(finished_run):
    folder, results = finished_run
    with open(folder / "proxy_set.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == results["n_selected"] == 120
    assert list(rows[0]) == ["pool_index", "path", "domain", "label", "cluster", "cluster_score", "target"]
    domains = [r["domain"] for r in rows]
    assert domains.count("photo") / len(rows) == pytest.approx(results["in_domain_fraction"])
    assert all(r["cluster"] != "" and float(r["cluster_score"]) >= 0 for r in rows)  # ECOS: cluster and its score
    assert all(r["target"] == "" for r in rows)  # compression trains on no label of the proxy set
    assert len({r["pool_index"] for r in rows}) == 120


def test_student_onnx_matches_pytorch_under_onnx_runtime(finished_run):
    import onnxruntime

    from ecos_pl.scenarios.teacher import load_classifier

    folder, results = finished_run
    meta = json.loads((folder / "student.onnx.json").read_text())
    assert meta["opset"] == 18 and meta["input"] == [None, 3, 32, 32]
    model = load_classifier(folder / "student.safetensors", "test_resnet", 10, None, param="ckpt_path")
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    session = onnxruntime.InferenceSession(str(folder / "student.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert results["outputs"]["student_onnx"] == str(folder / "student.onnx")


def test_eval_py_reproduces_the_runs_test_accuracy(finished_run, tmp_path):
    folder, results = finished_run
    run = call_main("eval", tmp_path, *TINY, "seed=2", f"ckpt_path={folder / 'student.safetensors'}")
    assert run.code == 0, run.stderr[-2000:]
    assert run.returned == pytest.approx(results["client_test_acc"], abs=1e-6)
    assert f"{results['client_test_acc']:.4f}" in run.stdout


def test_eval_py_without_a_student_is_one_sentence(tmp_path):
    run = call_main("eval", tmp_path)
    assert run.code == 2
    assert run.stderr.strip().splitlines() == ["eval.py: error: ckpt_path must name a student file, e.g. ckpt_path=outputs/<run>/student.safetensors."]


def test_checkpoint_drops_the_teacher_loads_alone_and_resumes(finished_run, tmp_path):
    from ecos_pl import experiment
    from ecos_pl.scenarios import DistillationModule

    folder, results = finished_run
    last = folder / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert state and not any(k.startswith("teacher.") for k in state)
    student = DistillationModule.load_from_checkpoint(last, map_location="cpu", weights_only=True)
    assert student.teacher is None and any(k.startswith("model.") for k in student.state_dict())
    # ckpt_path resumes the fit: the finished run's checkpoint is at its last step, so nothing more is trained
    resumed = experiment.run_experiment(app_config(tmp_path, *TINY, *ECOS_RUN, "save_outputs=false", f"ckpt_path={last}"))
    assert resumed["train_steps"] == results["train_steps"]
    assert resumed["client_test_acc"] == pytest.approx(results["client_test_acc"], abs=1e-6)
