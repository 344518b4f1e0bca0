"""Scenario `compression`: distil a teacher that knows the client's distribution into a small student, on the proxy set only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ecos_pl.scenarios.base import ProxyTrainingModule
from ecos_pl.scenarios.scenario import Scenario


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T) · T² (Hinton et al.), so gradients keep their scale as T changes."""
    t = float(temperature)
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1), reduction="batchmean", log_target=True
    ) * (t * t)


class DistillationModule(ProxyTrainingModule):
    """No label of the proxy set is used: the targets are the frozen teacher's softened outputs."""

    def __init__(self, teacher: nn.Module | None = None, temperature: float = 4.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature = temperature
        #: None only to evaluate a saved student (`load_from_checkpoint`); training needs it
        self.teacher = None if teacher is None else teacher.eval().requires_grad_(False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The frozen teacher is not part of what was trained: its weights stay out of the checkpoint (45 of 84 MB)."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resuming a fit: this module's own teacher (from its checkpoint or the cache) fills the keys left out."""
        if self.teacher is not None:
            checkpoint["state_dict"].update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # batch-norm statistics of the teacher stay frozen
        return self

    def training_loss(self, logits, batch):
        if self.teacher is None:
            raise RuntimeError("DistillationModule was built without a teacher; pass teacher=... to train it.")
        with torch.no_grad():
            teacher_logits = self.teacher(batch["image"])
        return distillation_loss(logits, teacher_logits, self.temperature)


class Compression(Scenario):
    """The student (cfg.backbone.student) distilled from a teacher (cfg.backbone.teacher) obtained per `scenario.teacher`."""

    def teacher(self, cfg, datamodule, make_trainer):
        from ecos_pl.scenarios.teacher import obtain_teacher

        t, num_classes = cfg.scenario.teacher, datamodule.data.num_classes
        teacher, info = obtain_teacher(
            datamodule, arch=cfg.backbone.teacher, num_classes=num_classes, source=t.source, checkpoint=t.checkpoint,
            epochs=t.epochs, lr=t.lr, seed=cfg.seed, cache_dir=cfg.cache_dir, make_trainer=make_trainer,
            input_size=cfg.backbone.get("input_size"),
        )
        val = datamodule.val_dataloader()
        return teacher, {"teacher_test_acc": evaluate_accuracy(teacher, datamodule.test_dataloader(), num_classes),
                         "teacher_val_acc": evaluate_accuracy(teacher, val, num_classes) if val else None,
                         "teacher_origin": info["origin"], "teacher_path": info["path"],
                         "teacher_source": None if t.checkpoint else t.source}

    def module(self, cfg, datamodule, teacher):
        with torch.random.fork_rng(devices=[]):  # the student's init depends on the seed alone, not on the teacher's path
            torch.manual_seed(cfg.seed)
            return DistillationModule(
                teacher, temperature=cfg.scenario.temperature, arch=cfg.backbone.student, num_classes=datamodule.data.num_classes,
                lr=cfg.scenario.lr, pretrained=cfg.backbone.get("pretrained", False), input_size=cfg.backbone.get("input_size"),
            )


@torch.inference_mode()
def evaluate_accuracy(model: nn.Module, loader, num_classes: int) -> float:
    from torchmetrics.classification import MulticlassAccuracy

    metric = MulticlassAccuracy(num_classes=num_classes, average="micro")
    device = next(model.parameters()).device
    model.eval()
    for batch in loader:
        metric.update(model(batch["image"].to(device)).cpu(), batch["label"])
    return float(metric.compute())
