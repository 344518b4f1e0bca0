"""The validation split: carved from the client's training part (seeded, class-stratified, by underlying image), what
`val/acc` reads; the client's test split is read once, by the final test."""

from __future__ import annotations

import numpy as np
import pytest

from ecos_pl.data.base import DomainSplit, ECOSData
from ecos_pl.data.splits import with_validation
from ecos_pl.protocol.errors import ECOSInputError


def toy(n_per_class: int = 20, renders: int = 1) -> ECOSData:
    rng = np.random.default_rng(0)
    n = 3 * n_per_class
    ids = np.repeat(np.arange(n), renders)
    labels = ids % 3
    train = DomainSplit(rng.integers(0, 255, (len(ids), 4, 4, 3), dtype=np.uint8), labels, np.zeros(len(ids)))
    small = DomainSplit(np.zeros((6, 4, 4, 3), np.uint8), np.arange(6) % 3, np.zeros(6))
    return ECOSData("toy", small, train, small, ["d"], ["0", "1", "2"], "d", meta={"source_index": {"client_train": ids}})


def test_carve_is_disjoint_stratified_seeded_and_keeps_every_image():
    data = toy()
    carved = with_validation(data, 0.25, seed=1)
    assert len(carved.client_val) == 15 and len(carved.client_train) == 45
    assert np.bincount(carved.client_val.labels).tolist() == [5, 5, 5]  # class-stratified
    ids_val, ids_train = carved.meta["source_index"]["client_val"], carved.meta["source_index"]["client_train"]
    assert not set(ids_val) & set(ids_train) and sorted([*ids_val, *ids_train]) == list(range(60))
    again, other = with_validation(data, 0.25, seed=1), with_validation(data, 0.25, seed=2)
    assert np.array_equal(again.client_val.images, carved.client_val.images)
    assert not np.array_equal(other.client_val.images, carved.client_val.images)
    assert carved.client_test is data.client_test and carved.pool is data.pool  # nothing else moves


def test_renders_of_one_image_stay_on_one_side():
    carved = with_validation(toy(renders=4), 0.2, seed=3)
    val, train = carved.meta["source_index"]["client_val"], carved.meta["source_index"]["client_train"]
    assert not set(val) & set(train)
    assert len(carved.client_val) == 4 * 12  # 12 of 60 underlying images, every render of each


def test_zero_means_no_validation_split():
    data = toy()
    assert with_validation(data, 0, seed=1) is data and data.client_val is None


@pytest.mark.parametrize("bad", [-0.1, 1.0, "0.2", True])
def test_bad_fraction_is_one_sentence(bad):
    with pytest.raises(ECOSInputError, match=r"^data\.val_fraction must be a number in \[0, 1\)"):
        with_validation(toy(), bad, seed=1)


def test_a_fraction_that_leaves_a_side_empty_is_one_sentence():
    with pytest.raises(ECOSInputError, match=r"data\.val_fraction=0\.001 of the client's 60 training images leaves no validation image"):
        with_validation(toy(), 0.001, seed=1)


def test_run_validates_on_the_validation_split_and_tests_on_the_test_split(tiny_run):
    res = tiny_run().results
    assert res["n_client_val"] > 0 and res["client_val_acc"] is not None
    assert res["n_client_val"] + res["n_client_train"] > res["n_client_train"]


def test_the_loaders_serve_the_right_splits():
    from datamodules import ECOSDataModule
    from ecos_pl.phi import PCAPixels
    from ecos_pl.protocol.samplers import RandomSampler

    class Source:
        name = "toy"

        def load(self):
            return toy()

    dm = ECOSDataModule.from_parts(Source(), PCAPixels(n_components=4), RandomSampler(), budget=3, val_fraction=0.25, cache_dir=None)
    assert len(dm.val_dataloader().dataset) == 15 and len(dm.test_dataloader().dataset) == 6
    assert len(dm.data.client_train) == 45
    no_val = ECOSDataModule.from_parts(Source(), PCAPixels(n_components=4), RandomSampler(), budget=3, cache_dir=None)
    assert no_val.val_dataloader() == []
