"""Any timm backbone through the config; pretrained weights from a file or an already-filled cache, never the network."""

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from ecos_pl.models import ImageClassifier, create_timm_model, find_cached_weights
from ecos_pl.phi import TimmFeatures


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Hugging Face and torch hub caches in empty temporary folders; the network is never asked."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def _source(num_classes=1000, seed=0):
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", num_classes=num_classes)


def _same(a: dict, b: dict, skip=("fc.",)) -> bool:
    keys = [k for k in a if not k.startswith(skip)]
    return bool(keys) and all(torch.equal(a[k], b[k]) for k in keys)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".bin"])
def test_weights_file_loads_exactly(tmp_path, suffix):
    src = _source()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(src.state_dict(), path)
    else:
        torch.save(src.state_dict(), path)
    model = create_timm_model("test_resnet", num_classes=1000, pretrained=str(path))
    assert _same(model.state_dict(), src.state_dict(), skip=())  # head included: same size as in the file
    # a different random init would differ: the weights really came from the file
    assert not _same(_source(seed=1).state_dict(), model.state_dict())


def test_head_of_another_size_is_reinitialised(tmp_path):
    src = _source(num_classes=1000)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    model = create_timm_model("test_resnet", num_classes=10, pretrained=path)
    assert model.fc.weight.shape == (10, src.fc.in_features)
    assert _same(model.state_dict(), src.state_dict())  # the body is the file's
    # a file whose head has the model's size keeps it; another size drops it
    src10 = _source(num_classes=10, seed=2)
    torch.save({"state_dict": src10.state_dict()}, tmp_path / "w10.pth")  # nested in a checkpoint dict
    kept = create_timm_model("test_resnet", num_classes=10, pretrained=tmp_path / "w10.pth")
    assert torch.equal(kept.fc.weight, src10.fc.weight)
    dropped = create_timm_model("test_resnet", num_classes=5, pretrained=tmp_path / "w10.pth")
    assert dropped.fc.weight.shape[0] == 5
    # no head at all (num_classes=0), and features_only (φ with pooling="style")
    assert _same(create_timm_model("test_resnet", num_classes=0, pretrained=path).state_dict(), src.state_dict())
    feats = create_timm_model("test_resnet", num_classes=0, pretrained=path, features_only=True, out_indices=(0, 1))
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in feats.state_dict().items())


def test_our_teacher_file_is_a_weights_file(tmp_path):
    from ecos_pl.scenarios.teacher import save_classifier

    teacher = ImageClassifier("test_resnet", 10)
    save_classifier(teacher, tmp_path / "teacher.pt")
    student = ImageClassifier("test_resnet", 10, pretrained=str(tmp_path / "teacher.pt"))
    assert _same(student.state_dict(), teacher.state_dict(), skip=())


def test_bad_weights_are_one_clear_error(tmp_path):
    torch.save(_source().state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"backbone.pretrained='.*w.pth' does not fit timm model 'resnet10t'"):
        create_timm_model("resnet10t", num_classes=10, pretrained=tmp_path / "w.pth", param="backbone.pretrained")
    with pytest.raises(FileNotFoundError, match="phi.pretrained='.*nope.pth' does not exist"):
        TimmFeatures("test_resnet", pretrained=str(tmp_path / "nope.pth"), device="cpu")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read as weights"):
        create_timm_model("test_resnet", num_classes=10, pretrained=tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="is not a timm model"):
        create_timm_model("no_such_net", num_classes=10)


def test_pretrained_true_with_an_empty_cache_names_the_parameter(empty_caches):
    with pytest.raises(FileNotFoundError, match=r"^phi.pretrained=true but no cached weights for 'resnet18.a1_in1k' were found offline"):
        TimmFeatures("resnet18", pretrained=True, device="cpu")
    with pytest.raises(FileNotFoundError, match=r"backbone.pretrained=true .* pass backbone.pretrained=/path/to/"):
        create_timm_model("resnet18", num_classes=10, pretrained=True, param="backbone.pretrained")
    with pytest.raises(FileNotFoundError, match=str(empty_caches / "hf" / "hub")):  # says where it looked
        create_timm_model("test_resnet", num_classes=10, pretrained="true")


def test_pretrained_true_reads_a_filled_hf_cache(empty_caches):
    src = _source()
    repo = empty_caches / "hf" / "hub" / "models--timm--test_resnet.r160_in1k"
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    save_file(src.state_dict(), repo / "snapshots" / "0123abcd" / "model.safetensors")
    path, _ = find_cached_weights("test_resnet")
    assert path == repo / "snapshots" / "0123abcd" / "model.safetensors"
    model = ImageClassifier("test_resnet", 10, pretrained=True)
    assert _same(model.backbone.state_dict(), src.state_dict())
    phi = TimmFeatures("test_resnet", pretrained=True, device="cpu")
    assert _same(phi.model.backbone.state_dict(), src.state_dict())


def test_pretrained_true_reads_a_filled_torch_hub_cache(empty_caches):
    torch.manual_seed(0)
    src = timm.create_model("resnet10t")
    url = timm.models.get_pretrained_cfg("resnet10t").url
    path = empty_caches / "torch" / "hub" / "checkpoints" / Path(url).name
    path.parent.mkdir(parents=True)
    torch.save(src.state_dict(), path)
    model = create_timm_model("resnet10t", num_classes=10, pretrained=True)
    assert _same(model.state_dict(), src.state_dict())


@pytest.mark.parametrize("name", ["test_efficientnet", "test_convnext", "test_vit"])
def test_phi_with_other_timm_backbones(name):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    poolings = ["avg"] if name == "test_vit" else ["avg", "style"]
    for pooling in poolings:
        size = "auto" if name == "test_vit" else None  # a ViT needs its own input size
        phi = TimmFeatures(name, pooling=pooling, stages=(0, 1), seed=3, device="cpu", input_size=size)
        z = phi.transform(images)
        assert z.shape[0] == 5 and z.dtype == np.float32 and np.isfinite(z).all()
        np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
        again = TimmFeatures(name, pooling=pooling, stages=(0, 1), seed=3, device="cpu", input_size=size)
        assert again.fingerprint() == phi.fingerprint()
        np.testing.assert_allclose(again.transform(images), z, rtol=1e-5, atol=1e-6)
    assert TimmFeatures(name, seed=4, device="cpu", input_size=size).fingerprint() != phi.fingerprint()


def test_normalisation_and_input_size_follow_the_backbone():
    for name in ("test_resnet", "resnet10t", "test_vit"):
        cfg = timm.data.resolve_model_data_config(timm.create_model(name, num_classes=0))
        model = ImageClassifier(name, 0)
        assert torch.allclose(model.normalize.mean.flatten(), torch.tensor(cfg["mean"]))
        assert torch.allclose(model.normalize.std.flatten(), torch.tensor(cfg["std"]))
    # default: the data's own size, no resize module, the same state dict as before input_size existed
    plain = ImageClassifier("test_resnet", 10)
    assert plain.resize is None and plain.input_size is None
    assert all(k.startswith(("backbone.", "normalize.")) for k in plain.state_dict())
    auto = ImageClassifier("test_resnet", 10, input_size="auto")
    assert auto.input_size == (160, 160)
    fixed = ImageClassifier("test_resnet", 10, input_size=48)
    assert fixed.input_size == (48, 48)
    seen = []
    fixed.backbone.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    assert fixed(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert seen == [(48, 48)]
    assert auto.state_dict().keys() == plain.state_dict().keys()
    with pytest.raises(ValueError, match="input_size"):
        ImageClassifier("test_resnet", 10, input_size="huge")
    # φ's fingerprint changes with a resize and stays as before without one
    base = TimmFeatures("test_resnet", device="cpu")
    assert TimmFeatures("test_resnet", device="cpu", input_size=None).fingerprint() == base.fingerprint()
    assert TimmFeatures("test_resnet", device="cpu", input_size=64).fingerprint() != base.fingerprint()


def test_backbones_through_the_config():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=["phi.model=test_efficientnet", "phi.input_size=40", "backbone.student=test_convnext"])
        pretrained_cfg = compose("train", overrides=["phi=timm_pretrained"])
    phi = instantiate(cfg.phi, device="cpu")
    assert phi.model_name == "test_efficientnet" and phi.input_size == (40, 40)
    assert cfg.backbone.student == "test_convnext" and cfg.backbone.input_size is None and cfg.backbone.pretrained is False
    assert pretrained_cfg.phi.pretrained is True and pretrained_cfg.phi.input_size == "auto"
