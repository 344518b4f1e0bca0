"""Teacher checkpoints: safetensors with a content hash, saved atomically, reloaded; a mismatch is one clear sentence."""

import json

import pytest
import torch
from safetensors import safe_open

from ecos_pl.models import CLASSIFIER_FORMAT, ImageClassifier
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.scenarios.teacher import load_classifier, save_classifier


def test_teacher_round_trip(tmp_path):
    model = ImageClassifier("test_resnet", 10)
    path = tmp_path / "t.safetensors"
    save_classifier(model, path, meta={"epochs": 3})
    back = load_classifier(path, "test_resnet", 10)
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(back(x), model(x))
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no temporary left behind
    with safe_open(str(path), framework="pt") as f:  # our metadata, readable by any safetensors reader
        meta = f.metadata()
    assert meta["format"] == CLASSIFIER_FORMAT and meta["arch"] == "test_resnet" and meta["num_classes"] == "10"
    assert json.loads(meta["meta"]) == {"epochs": 3} and json.loads(meta["input_size"]) is None and len(meta["sha256"]) == 64


def test_wrong_architecture_is_a_clear_error(tmp_path):
    path = tmp_path / "t.safetensors"
    save_classifier(ImageClassifier("test_resnet", 10), path)
    with pytest.raises(ECOSInputError, match="was saved for architecture 'test_resnet', but the teacher is 'resnet10t'"):
        load_classifier(path, "resnet10t", 10)
    with pytest.raises(ECOSInputError, match="was saved for 10 classes, but the data have 5"):
        load_classifier(path, "test_resnet", 5)
    with pytest.raises(ECOSInputError, match=r"was saved for input size null, but the teacher here has \[48, 48\]"):
        load_classifier(path, "test_resnet", 10, input_size=48)
    raw = tmp_path / "raw.pt"  # a bare state dict, as torch.save writes it: read with weights_only=True
    torch.save({"state_dict": ImageClassifier("test_resnet", 10).state_dict()}, raw)
    assert isinstance(load_classifier(raw, "test_resnet", 10), ImageClassifier)
    with pytest.raises(ECOSInputError, match="does not match the teacher architecture 'resnet10t'"):
        load_classifier(raw, "resnet10t", 10)
    with pytest.raises(ECOSInputError, match="does not match the teacher architecture 'test_resnet' with 5 classes"):
        load_classifier(raw, "test_resnet", 5)


def test_a_lightning_checkpoint_is_read_without_pickle_code(tmp_path):
    """Lightning's own checkpoint of one of our modules loads with weights_only=True; its arch comes from the hparams."""
    import pytorch_lightning as pl

    from ecos_pl.scenarios.base import SupervisedModule

    module = SupervisedModule(arch="test_resnet", num_classes=10)
    trainer = pl.Trainer(accelerator="cpu", logger=False, max_epochs=0, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    back = load_classifier(tmp_path / "m.ckpt", "test_resnet", 10)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in module.model.state_dict().items())
    with pytest.raises(ECOSInputError, match=r"^scenario.teacher.checkpoint='.*m.ckpt' was saved for architecture 'test_resnet'"):
        load_classifier(tmp_path / "m.ckpt", "resnet10t", 10)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint="):
        load_classifier(tmp_path / "nope.pt", "test_resnet", 10)
