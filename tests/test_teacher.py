"""Teacher checkpoints: saved atomically, reloaded, and a mismatching architecture is one clear error."""

import pytest
import torch

from ecos_pl.models import ImageClassifier
from ecos_pl.scenarios.teacher import load_classifier, save_classifier


def test_teacher_round_trip(tmp_path):
    model = ImageClassifier("test_resnet", 10)
    path = tmp_path / "t.pt"
    save_classifier(model, path)
    back = load_classifier(path, "test_resnet", 10)
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(back(x), model(x))
    assert [p.name for p in tmp_path.iterdir()] == ["t.pt"]  # no temporary left behind


def test_wrong_architecture_is_a_clear_error(tmp_path):
    path = tmp_path / "t.pt"
    save_classifier(ImageClassifier("test_resnet", 10), path)
    with pytest.raises(ValueError, match="was saved for architecture 'test_resnet', but the teacher is 'resnet10t'"):
        load_classifier(path, "resnet10t", 10)
    raw = tmp_path / "raw.pt"
    torch.save({"state_dict": ImageClassifier("test_resnet", 10).state_dict()}, raw)
    with pytest.raises(ValueError, match="does not match the teacher architecture 'resnet10t'"):
        load_classifier(raw, "resnet10t", 10)
    with pytest.raises(ValueError, match="does not match the teacher architecture 'test_resnet' with 5 classes"):
        load_classifier(raw, "test_resnet", 5)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint="):
        load_classifier(tmp_path / "nope.pt", "test_resnet", 10)
