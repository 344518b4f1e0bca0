"""`scenario.ssl=fixmatch`: the labelled proxy set plus unlabelled pool samples, FixMatch (Sohn et al. 2020).

The paper's label_outsourcing trains semi-supervised on the cloud: labels are paid
for, pool images are free. Each step takes a labelled batch (cross-entropy on its
targets, the weak view: pad-and-crop) and μ × batch unlabelled samples (which:
`ecos_pl.unlabelled`). The model's prediction on an unlabelled sample's weak view
(no gradient) is its pseudo-label where the top softmax probability reaches the
threshold τ; the strong view (torchvision's RandAugment, then pad-and-crop, Cutout
optional) is trained towards it, weighted by λ_u. The pool's ground truth is read
only for a diagnostic (`train/pseudo_acc`).

The augmentations are torchvision's v2 transforms, applied per sample in the
dataset (a v2 transform on a batch draws one set of parameters for all of it); they
draw from torch's global RNG, which `seed_everything` seeds (and Lightning seeds
each loader worker from it), so the same seed gives the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ecos_pl.data.base import DomainSplit
from ecos_pl.data.loaders import ImageArrayDataset, make_loader
from ecos_pl.protocol.errors import ECOSInputError, check_count
from ecos_pl.protocol.settings import check_number
from ecos_pl.scenarios.base import SupervisedModule, pad_and_crop


@dataclass
class FixMatchSettings:
    """`scenario.fixmatch` (Sohn et al. 2020), defaults the paper's where it has one; read by `ecos_pl.scenarios.fixmatch`."""

    threshold: float = 0.95          # τ: a pseudo-label counts where the weak view's max softmax is at least this
    unlabelled_weight: float = 1.0   # λ_u, the unlabelled loss's weight
    unlabelled_ratio: int = 2        # μ: unlabelled samples per labelled one in a step (the paper's 7 is ~9x slower on CPU)
    randaugment_ops: int = 2         # torchvision v2.RandAugment's num_ops, on the strong view
    randaugment_magnitude: int = 9   # and its magnitude, of 31 bins (torchvision's defaults)
    cutout: float = 0.0              # probability of v2.RandomErasing (Cutout) on the strong view; 0: none
    hflip: bool = False              # random horizontal flips on every view (digits are not mirror-symmetric)

    def __post_init__(self):
        check_number("scenario.fixmatch.threshold", self.threshold, low=0.0, high=1.0)
        check_number("scenario.fixmatch.unlabelled_weight", self.unlabelled_weight, low=0.0)
        check_count(self.unlabelled_ratio, "scenario.fixmatch.unlabelled_ratio", low=1)
        check_count(self.randaugment_ops, "scenario.fixmatch.randaugment_ops", low=0)
        check_count(self.randaugment_magnitude, "scenario.fixmatch.randaugment_magnitude", low=0)
        if self.randaugment_magnitude > 30:
            raise ECOSInputError(f"scenario.fixmatch.randaugment_magnitude must lie in [0, 30], got {self.randaugment_magnitude}.")
        check_number("scenario.fixmatch.cutout", self.cutout, low=0.0, high=1.0)



def fixmatch_unlabelled_loss(strong_logits: torch.Tensor, weak_logits: torch.Tensor, threshold: float):
    """(loss, mask, pseudo-labels): cross-entropy of the strong view against the weak view's arg-max where its
    probability is at least `threshold`, averaged over all unlabelled samples (FixMatch's normalisation)."""
    confidence, pseudo = weak_logits.detach().softmax(dim=1).max(dim=1)
    mask = (confidence >= threshold).float()
    loss = (F.cross_entropy(strong_logits, pseudo, reduction="none") * mask).mean()
    return loss, mask, pseudo


class FixMatchModule(SupervisedModule):
    """`SupervisedModule` on the labelled batch (label smoothing and mixup as configured) plus FixMatch's unlabelled loss.

    Batches are `{"labelled": ..., "unlabelled": {"weak", "strong", "label"}}` (`FixMatchData.train_loader`).
    The labelled and strong inputs go through one forward pass, so batch-norm normalises them together; the
    weak view is a forward pass without gradient.
    """

    def __init__(self, model=None, *, threshold: float = 0.95, unlabelled_weight: float = 1.0, **kwargs):
        super().__init__(model, **kwargs)  # saves threshold and unlabelled_weight in hparams too

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        labelled, unlabelled = batch["labelled"], batch["unlabelled"]
        pad = self.hparams.augment_pad
        inputs, supervised = self.mixed(pad_and_crop(labelled["image"], pad), labelled["target"])
        weak, strong = pad_and_crop(unlabelled["weak"], pad), pad_and_crop(unlabelled["strong"], pad)
        with torch.no_grad():
            weak_logits = self(weak)
        logits = self(torch.cat([inputs, strong]))
        n = len(inputs)
        sup_loss = supervised(logits[:n])
        unsup_loss, mask, pseudo = fixmatch_unlabelled_loss(logits[n:], weak_logits, self.hparams.threshold)
        loss = sup_loss + self.hparams.unlabelled_weight * unsup_loss
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/sup_loss", sup_loss, batch_size=n)
        self.log("train/unsup_loss", unsup_loss, batch_size=len(strong))
        self.log("train/mask_rate", mask.mean(), prog_bar=True, batch_size=len(strong))
        confident = mask.bool()
        if confident.any():  # diagnostic only: the pool's truth ("none" samples are always wrong)
            right = (pseudo[confident] == unlabelled["label"][confident]).float().mean()
            self.log("train/pseudo_acc", right, batch_size=int(confident.sum()))
        return loss


class FixMatchViews(Dataset):
    """Each unlabelled pool image as FixMatch's two views, float [3, H, W] in [0, 1]: `weak` (a flip if asked;
    pad-and-crop follows on the batch) and `strong` (the same flip, RandAugment on the uint8 image, Cutout if asked).
    `label` is the pool's truth, for the diagnostic only."""

    def __init__(self, split: DomainSplit, settings: FixMatchSettings):
        from torchvision.transforms import v2

        self.images = torch.from_numpy(np.ascontiguousarray(split.images)).permute(0, 3, 1, 2).contiguous()  # uint8
        self.labels = torch.as_tensor(split.labels, dtype=torch.long)
        to_float = v2.ToDtype(torch.float32, scale=True)
        flip = [v2.RandomHorizontalFlip()] if settings.hflip else []
        cutout = [v2.RandomErasing(p=settings.cutout)] if settings.cutout > 0 else []
        self.weak = v2.Compose([*flip, to_float])
        self.strong = v2.Compose([
            *flip, v2.RandAugment(num_ops=settings.randaugment_ops, magnitude=settings.randaugment_magnitude), to_float, *cutout,
        ])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i]
        return {"weak": self.weak(image), "strong": self.strong(image), "label": self.labels[i], "index": i}


class FlippedImages(Dataset):
    """A labelled dataset whose images are flipped at random (`scenario.fixmatch.hflip`), per sample."""

    def __init__(self, dataset: Dataset):
        from torchvision.transforms import v2

        self.dataset, self.flip = dataset, v2.RandomHorizontalFlip()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        return {**item, "image": self.flip(item["image"])}


class FixMatchData:
    """What the data module pairs the proxy set with (`ECOSDataModule.unlabelled`): the unlabelled pool samples."""

    def __init__(self, settings: FixMatchSettings, unlabelled_from: str = "scores"):
        from ecos_pl.unlabelled import check_policy

        self.settings, self.unlabelled_from = settings, check_policy(unlabelled_from)
        self.report: dict = {}

    def train_loader(self, datamodule, split: DomainSplit, targets: np.ndarray | None):
        """Labelled batches (the data module's loader) and μ × batch unlabelled samples per labelled batch.

        The unlabelled stream is exactly as long as the labelled epoch (`RandomSampler` with `num_samples`:
        fresh seeded permutations, repeated if the set is small), so an epoch, its validation cadence and the
        step budget are those of `ssl=none`; the combined loader's mode then has nothing to cycle.
        """
        from pytorch_lightning.utilities import CombinedLoader

        from ecos_pl.protocol.errors import ECOSInputError
        from ecos_pl.unlabelled import unlabelled_indices, unlabelled_report

        data, s = datamodule.data, self.settings
        indices, origin = unlabelled_indices(datamodule.selection, len(data.pool), self.unlabelled_from)
        self.report = {"ssl": "fixmatch", **unlabelled_report(indices, origin, data),
                       "fixmatch": {k: getattr(s, k) for k in FixMatchSettings.__dataclass_fields__}}
        if not len(indices):
            raise ECOSInputError("the unlabelled set is empty (every scored cluster's member is in the proxy set); "
                                 "set scenario.ssl=none or lower the budget.")
        labelled_set = ImageArrayDataset(split, targets)
        labelled = make_loader(FlippedImages(labelled_set) if s.hflip else labelled_set, batch_size=datamodule.batch_size,
                               train=True, seed=datamodule.seed, num_workers=datamodule.num_workers)
        batch = s.unlabelled_ratio * datamodule.batch_size
        generator = torch.Generator().manual_seed(datamodule.seed + 1)  # a stream of its own, not the labelled shuffle's
        views = FixMatchViews(data.pool.subset(indices), s)
        unlabelled = DataLoader(views, batch_size=batch, sampler=RandomSampler(views, num_samples=len(labelled) * batch,
                                                                              generator=generator),
                                num_workers=datamodule.num_workers, persistent_workers=datamodule.num_workers > 0)
        return CombinedLoader({"labelled": labelled, "unlabelled": unlabelled}, mode="max_size_cycle")
