"""Output that is not a terminal still shows progress: plain log lines for every stage, each epoch of the teacher and
the student included (issue 30), where rich's bars would draw nothing."""

import logging
import re

import pytest

from runs import train


def test_a_run_without_a_terminal_logs_every_stage_and_every_epoch(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        run = train(tmp_path, "scenario.epochs=2", "scenario.teacher.epochs=2", "callbacks.progress_bar.every_s=0.001",
                    "save_outputs=false", "seed=11", "datamodule.pipeline.reuse_selection=false")
    lines = [r.getMessage() for r in caplog.records if r.name in ("ecos_pl.progress", "ecos_pl.pipeline")]
    text = "\n".join(lines)
    # the pipeline's stages, each started and finished
    for stage in ("fitting φ", "φ features of the", "the client's φ features", "choosing the proxy set"):
        assert any(stage in line and line.endswith("...") for line in lines), stage
        assert re.search(re.escape(stage) + r".*: done in \d+\.\d s", text), stage
    # the teacher's fit: started, both epochs, finished
    teacher = [line for line in lines if line.startswith("teacher: test_resnet on the pool's labels:")]
    assert any("training started (2 epochs" in line for line in teacher)
    for epoch in (1, 2):
        assert any(f"epoch {epoch}/2 done" in line for line in teacher), teacher
    assert any("training finished after" in line for line in teacher)
    # the student (a step budget: epochs are counted, not announced), its φ extraction and its test
    student = [line for line in lines if line.startswith("compression: test_resnet:")]
    assert sum(bool(re.search(r"epoch \d+ done, step \d+/\d+, .*elapsed, ETA", line)) for line in student) >= 2, student
    assert any("testing started" in line for line in student) and any("testing finished in" in line for line in student)
    assert any(re.search(r"step \d+/\d+, .*elapsed", line) and "done" not in line for line in student)  # every_s lines
    assert run.results["client_test_acc"] is not None


def test_progress_bar_is_rich_on_a_terminal_and_plain_elsewhere(monkeypatch):
    import sys

    from callbacks import LabelledProgressBar, PlainProgressBar, progress_bar

    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert isinstance(progress_bar(), PlainProgressBar)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert isinstance(progress_bar(), LabelledProgressBar)
    assert isinstance(progress_bar(plain=True), PlainProgressBar)
    with pytest.raises(ValueError, match=r"callbacks\.progress_bar\.every_s must be a number of seconds > 0, got 0"):
        progress_bar(every_s=0, plain=True)
