"""`ECOSDataModule`: its training split is the proxy set that the collaborative sampling protocol selects in `setup()`."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ecos_pl.atomic import clean_dead_temporaries, move_aside
from ecos_pl.data.base import DomainSplit, ECOSData
from ecos_pl.phi import FeatureExtractor, images_to_tensor
from ecos_pl.protocol import ECOSClient, Sampler, Selection
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.privacy import ScoreMechanism, check_budget
from ecos_pl.protocol.store import DamagedSelection, load_selection, sampler_spec, save_selection, selection_key
from ecos_pl.scenarios.labels import LabelRequest, ProxyLabels

log = logging.getLogger(__name__)


class ImageArrayDataset(Dataset):
    """Items are dicts: `image` float [3, H, W] in [0, 1], `label` (ground truth), `target` (what training
    may use: the label unless a scenario assigned others), `domain`, `index` (position in the split)."""

    def __init__(self, split: DomainSplit, targets: np.ndarray | None = None):
        self.images = images_to_tensor(split.images)
        self.labels = torch.as_tensor(split.labels, dtype=torch.long)
        self.targets = self.labels if targets is None else torch.as_tensor(targets, dtype=torch.long)
        self.domains = torch.as_tensor(split.domains, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "target": self.targets[i], "domain": self.domains[i], "index": i}


class ECOSDataModule(pl.LightningDataModule):
    """Client test split for validation and test; the sampler's proxy set for training.

    `source` builds the data (pool, client train, client test); `phi` is the shared
    feature extractor; `sampler` chooses at most `budget` pool samples given the
    client; `report` holds what it cost. `proxy_labels` (scenarios that train on
    labels) assigns the proxy set's targets after the selection; samples it leaves
    without a label (-1) are not trained on.

    DDP-safe: `setup()` runs on every rank after the process group exists. Rank zero
    runs the protocol and writes the selection to `cache_dir/selections/<key>.npz`,
    keyed by a hash of the data, φ, the sampler, the budget, the seed and ε; a
    barrier; every rank loads that artifact and the ranks check that their proxy
    sets are identical. A rerun with the same configuration reuses the artifact.
    """

    def __init__(
        self,
        source,
        phi: FeatureExtractor,
        sampler: Sampler,
        budget: int | None = 400,
        seed: int = 1,
        client_epsilon: float | None = None,
        client_mechanism: str = "gaussian",
        client_delta: float = 1e-5,
        client_max_epsilon: float | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        cache_dir: str | None = None,
        reuse_selection: bool = True,
        proxy_labels: ProxyLabels | None = None,
        cache_features: bool = True,
        feature_dtype: str = "auto",
    ):
        super().__init__()
        self.source = source
        self.phi = phi
        self.sampler = sampler
        self.budget = budget
        self.seed = seed
        self.client_epsilon = client_epsilon
        #: how the client privatises its scores (`client_epsilon=None`: exact counts, a reference with no guarantee)
        self.score_mechanism = ScoreMechanism.from_settings(client_epsilon, client_mechanism, client_delta)
        self.client_max_epsilon = client_max_epsilon
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.reuse_selection = reuse_selection
        self.proxy_labels = proxy_labels
        #: with cache_dir: the pool's φ features live in cache_dir/features/ (ecos_pl.feature_cache)
        self.cache_features = cache_features
        #: "auto" (float32; float16 from 1 GiB of float32 features), "float32" or "float16"
        self.feature_dtype = feature_dtype
        self.feature_cache_info: dict | None = None
        self.proxy_targets: np.ndarray | None = None
        self.data: ECOSData | None = None
        self._pool_features: np.ndarray | None = None
        self._phi_fitted = False
        self._data_id: str | None = None
        self.selection: Selection | None = None
        self._checked: tuple | None = None  # (stat, loaded artifact or None) of the selection artifact, read once
        self._damaged_selection: str | None = None  # why that artifact cannot be used, when it cannot
        self.proxy: DomainSplit | None = None
        self.report: dict = {}

    def prepare_data(self) -> None:
        self.source.load()  # builds and caches on disk once

    def load_data(self) -> ECOSData:
        """The data alone, without running the protocol (the simulated teacher needs only this)."""
        if self.data is None:
            self.data = self.source.load()
        return self.data

    @property
    def pool_features(self) -> np.ndarray:
        """φ of the pool [N, d], rows L2-normalised, computed on first use (a reused selection does not need it).

        With `cache_dir` (and `cache_features`) they come from `cache_dir/features/`, keyed
        by the data, φ and the dtype, as a read-only memory map written first if missing
        (`ecos_pl.feature_cache`): float32, bit-identical to the uncached path, or float16
        for pools whose float32 features reach 1 GiB (`feature_dtype`).
        """
        if self._pool_features is None:
            self.compute_pool_features()
        return self._pool_features

    def fit_phi(self) -> FeatureExtractor:
        """Fit φ on the pool (the cloud's public data), once; deterministic, so every rank fits the same φ.

        φ chooses what it reads (PCA: a seeded choice of at most `fit_rows` images of a
        memory-mapped pool). The selection's key is fixed before the fit (as it always
        was), so it does not depend on the order in which the two are asked for.
        """
        if not self._phi_fitted:
            self.selection_path()
            self.phi.fit(self.load_data().pool.images)
            self._phi_fitted = True
        return self.phi

    def data_id(self) -> str:
        """The data's identity in cache keys: the on-disk source's decode-cache key, else a hash of the pool's pixels."""
        if self._data_id is None:
            from ecos_pl.feature_cache import array_fingerprint

            data = self.load_data()
            content = data.meta.get("data_key")
            self._data_id = f"{data.name}:{content if content else array_fingerprint(data.pool.images)}"
        return self._data_id

    def predict_pool_features(self, trainer: pl.Trainer) -> dict | None:
        """Extract the pool's φ features into the feature cache through `trainer.predict`, on every device of `trainer`.

        `run_experiment` calls it on every rank before `trainer.fit`; `setup()` then only
        opens the file. Nothing to do (None) without a feature cache (`cache_dir` None or
        `cache_features` false: `setup()` computes the features in process), with a
        reusable selection artifact (no φ needed), or with the features already cached.
        Every rank takes the same decision: rank zero writes nothing before all ranks
        are inside `predict`.
        """
        from ecos_pl.feature_cache import cache_entry, cache_valid
        from ecos_pl.feature_predict import predict_pool_features

        if self.cache_dir is None or not self.cache_features or self._selection_reusable():
            return None
        phi, pool = self.fit_phi(), self.load_data().pool.images
        path, meta = cache_entry(self.cache_dir, phi, self.data_id(), self.feature_dtype)
        if cache_valid(path, len(pool)):
            return None
        self.feature_cache_info = predict_pool_features(
            trainer, phi, pool, path, meta, dtype=self.feature_dtype, num_workers=self.num_workers
        )
        return self.feature_cache_info

    def compute_pool_features(self) -> np.ndarray:
        """φ of the pool, fitted first: from the feature cache (written first, in this process, if missing), or computed."""
        from ecos_pl.feature_cache import cached_features

        pool = self.load_data().pool.images
        phi = self.fit_phi()
        if self.cache_dir is None or not self.cache_features:
            self._pool_features = phi.transform(pool)
            return self._pool_features
        self._pool_features, info = cached_features(self.cache_dir, phi, pool, data_id=self.data_id(), dtype=self.feature_dtype)
        predicted = self.feature_cache_info
        if predicted is None or predicted["path"] != info["path"]:
            self.feature_cache_info = info
        return self._pool_features

    @property
    def client_features(self) -> np.ndarray:
        """φ of the client's training split, computed once (the protocol and the pseudo-label round both need it)."""
        if getattr(self, "_client_features", None) is None:
            self._client_features = self.phi.transform(self.load_data().client_train.images)
        return self._client_features

    def selection_path(self) -> Path | None:
        """Where this configuration's selection lives; computed once (φ's fingerprint may change once it is fitted)."""
        if self.cache_dir is None:
            return None
        if getattr(self, "_selection_path", None) is not None:
            return self._selection_path
        data = self.load_data()
        content = data.meta.get("data_key")
        if content:  # on-disk sources: their decode-cache key (every file's path, size, mtime; image size; split) names the pixels
            data_parts = (f"decoded:{content}", data.pool.labels, data.pool.domains)
        else:  # data built in memory: its pixels (what the README's artifacts were keyed by)
            data_parts = (data.pool.images, data.pool.labels, data.pool.domains, data.client_train.images)
        key = selection_key(
            data.name, *data_parts, self.phi.fingerprint(), sampler_spec(self.sampler), self.budget if self.sampler.uses_budget else None,
            self.seed, self.client_epsilon,
            # exact counts keep the keys they always had; a mechanism's noise depends on its kind and δ
            *(() if self.client_epsilon is None else (self.score_mechanism.mechanism, self.score_mechanism.delta)),
        )
        self._selection_path = Path(self.cache_dir).expanduser() / "selections" / f"{key}.npz"
        return self._selection_path

    def _selection_reusable(self) -> bool:
        """Whether this configuration's artifact exists and passes its checks (the same answer on every rank)."""
        path = self.selection_path()
        return path is not None and self.reuse_selection and self._checked_selection(path) is not None

    def _checked_selection(self, path: Path) -> tuple[Selection, dict] | None:
        """The artifact at `path`, loaded and checked once (None: absent or damaged; `_damaged_selection` says why)."""
        if self._checked is None:
            clean_dead_temporaries(path.parent)
            try:
                st = os.stat(path)
                self._checked = (st, load_selection(path, n_pool=len(self.load_data().pool)))
            except FileNotFoundError:
                self._checked = (None, None)
            except DamagedSelection as err:
                self._checked, self._damaged_selection = (st, None), str(err)
        return self._checked[1]

    def check_privacy_budget(self) -> float:
        """The ε of everything the client will release (scores, then labels when the scenario asks for them),
        checked against `client_max_epsilon` before anything is released; labels are counted for a full budget."""
        if self.sampler.releases_features:  # the privacy-violating reference: no ε bounds an upload
            check_budget(float("inf"), self.client_max_epsilon, "uploading every client feature (oracle_central)")
            return float("inf")
        asks = getattr(self.sampler, "asks_client", False)
        releases = [self.score_mechanism] if asks else []
        epsilons = getattr(self.proxy_labels, "epsilons", None)
        if epsilons is not None and not self.sampler.trains_on_client:
            total, what = epsilons(int(self.budget), releases)[1], f"scores and {self.budget} labels"
        else:
            from ecos_pl.protocol.privacy import composed_epsilon

            total, what = composed_epsilon([r.dp_event() for r in releases], self.score_mechanism.delta), "the scores"
            if asks and self.score_mechanism.mechanism != "none":
                total = self.score_mechanism.epsilon  # one release: its calibrated ε, exact
        check_budget(total, self.client_max_epsilon, what)
        return total

    def setup(self, stage: str | None = None) -> None:
        if self.selection is not None:
            return
        data = self.load_data()
        trainer = getattr(self, "trainer", None)
        world = trainer.world_size if trainer is not None else 1
        is_zero = trainer.is_global_zero if trainer is not None else True
        path = self.selection_path()
        reused = self._selection_reusable()
        if is_zero and reused:
            selection, extra = self._checked_selection(path)
        elif is_zero:
            if path is not None and self._damaged_selection is not None:  # never used; rebuilt below
                move_aside(path, self._damaged_selection, expected=self._checked[0])
            selection, extra = self._run_protocol(data)
            if path is not None:
                save_selection(selection, path, extra)
        if world > 1:
            if path is None:
                raise ValueError("cache_dir is None: under DDP the selection is shared through an artifact in cache_dir.")
            trainer.strategy.barrier("ecos-selection")
        if path is not None and not is_zero:  # rank zero checked it or has just written it
            selection, extra = load_selection(path, n_pool=len(data.pool))
        self.selection = sel = selection
        self.proxy = data.client_train if self.sampler.trains_on_client else data.pool.subset(sel.indices)
        self.report = self._report(data, sel, **extra)
        self.proxy_targets, label_report = self._assign_targets(data, sel)
        self.report.update(label_report)
        self.report["selection_artifact"] = None if path is None else str(path)
        self.report["selection_reused"] = bool(reused)
        self.report["feature_cache"] = self.feature_cache_info  # None when the selection was reused (no φ run)
        self.report["proxy_set_sha1_per_rank"] = self._check_same_proxy_set(trainer, world)
        log.info(
            "proxy set: %d of %d pool samples by %s, in-domain fraction %s%s",
            sel.n_selected, len(data.pool), sel.sampler, self.report["in_domain_fraction"],
            " (reused artifact)" if reused else "",
        )

    def _run_protocol(self, data: ECOSData) -> tuple[Selection, dict]:
        t0 = time.perf_counter()
        pool_features = self.pool_features
        t1 = time.perf_counter()
        client_features = self.client_features
        t2 = time.perf_counter()
        client = ECOSClient(client_features, epsilon=self.client_epsilon, mechanism=self.score_mechanism.mechanism,
                            delta=self.score_mechanism.delta, seed=self.seed)
        budget = self.budget if self.sampler.uses_budget else None
        selection = self.sampler.sample(pool_features, client, budget, self.seed)
        return selection, {"cloud_features_s": t1 - t0, "client_features_s": t2 - t1}

    def _assign_targets(self, data: ECOSData, sel: Selection) -> tuple[np.ndarray | None, dict]:
        """The proxy set's training targets (None: the scenario uses no labels); deterministic on every rank."""
        if self.proxy_labels is None:
            return None, {}
        if self.sampler.trains_on_client:  # the client-data reference trains on the client's own labels
            targets, report = np.asarray(self.proxy.labels, dtype=np.int64), {}
        else:
            targets, report = self.proxy_labels.assign(self._label_request(data, sel))
        report["n_trained"] = int((targets >= 0).sum())
        if report["n_trained"] < 2:  # batch-norm cannot train on one sample; nothing can on none
            raise ECOSInputError(
                f"only {report['n_trained']} of {len(targets)} proxy samples got a label, too few to train on; "
                "lower scenario.labels.threshold (or set it to null) or raise the budget."
            )
        report["proxy_targets_sha1"] = hashlib.sha1(np.ascontiguousarray(targets, dtype=np.int64).tobytes()).hexdigest()
        return targets, report

    def _label_request(self, data: ECOSData, sel: Selection) -> LabelRequest:
        proxy_features, client_features = self._label_features(data, sel)
        return LabelRequest(
            proxy=self.proxy,
            proxy_features=proxy_features,
            client_features=client_features,
            client_labels=data.client_train.labels,
            num_classes=data.num_classes,
            seed=self.seed,
            # what the selection already released about the client: nothing, or its scores
            score_releases=[] if sel.bytes_up == 0 else [self.score_mechanism],
            max_epsilon=self.client_max_epsilon,
        )

    def _label_features(self, data: ECOSData, sel: Selection):
        """(proxy, client) feature callables for the label round: the protocol's φ, or the labeller's own `phi`."""
        phi = getattr(self.proxy_labels, "phi", None)
        if phi is None:
            return (lambda: self.pool_features[sel.indices]), (lambda: self.client_features)
        fitted = functools.cache(lambda: phi.fit(data.pool.images))  # the cloud fits it on its pool, once
        return (lambda: fitted().transform(self.proxy.images)), (lambda: fitted().transform(data.client_train.images))

    def _training_split(self) -> tuple[DomainSplit, np.ndarray | None]:
        """The proxy set without the samples left unlabelled (target -1)."""
        if self.proxy_targets is None:
            return self.proxy, None
        keep = np.flatnonzero(self.proxy_targets >= 0)
        return self.proxy.subset(keep), self.proxy_targets[keep]

    def _check_same_proxy_set(self, trainer, world: int) -> list[str]:
        """Every rank's proxy-set hash; a mismatch stops the run instead of training on different data."""
        digest = self.report["proxy_set_sha1"]
        if self.proxy_targets is not None:  # the ranks must also agree on the targets
            digest = hashlib.sha1((digest + self.report["proxy_targets_sha1"]).encode()).hexdigest()
        if world <= 1:
            return [digest]
        local = torch.tensor([int(digest[i : i + 8], 16) for i in range(0, 40, 8)], dtype=torch.int64)
        gathered = trainer.strategy.all_gather(local).reshape(world, -1).cpu()
        digests = ["".join(f"{int(v):08x}" for v in row) for row in gathered]
        if len(set(digests)) != 1:
            raise RuntimeError(f"ranks selected different proxy sets: {digests}")
        return digests

    def _report(self, data: ECOSData, sel: Selection, *, cloud_features_s: float = 0.0, client_features_s: float = 0.0) -> dict:
        domains = self.proxy.domains
        composition = {name: int((domains == i).sum()) for i, name in enumerate(data.domain_names)}
        in_domain = float(np.mean(domains == data.client_domain_index)) if len(domains) else None
        return {
            "n_pool": len(data.pool),
            "n_client_train": len(data.client_train),
            "n_client_test": len(data.client_test),
            "n_selected": len(self.proxy),
            "proxy_set_sha1": hashlib.sha1(np.ascontiguousarray(sel.indices, dtype=np.int64).tobytes()).hexdigest(),
            "n_centroids": sel.n_centroids,
            "in_domain_fraction": in_domain,
            "pool_in_domain_fraction": float(np.mean(data.pool_in_domain())),
            "composition_by_domain": composition,
            "bytes_down": sel.bytes_down,
            "bytes_up": sel.bytes_up,
            "client_score_macs": sel.client_macs,
            "epsilon": sel.epsilon,
            # how the scores were privatised (what the client did, whatever the sampler asked)
            "score_privacy": self.score_mechanism.report() if sel.bytes_up and not self.sampler.releases_features else None,
            "timings": {
                "features": cloud_features_s + client_features_s,
                "features_cloud": cloud_features_s,
                "features_client": client_features_s,
                "compress": sel.timings.get("compress", 0.0),
                "score": sel.timings.get("score", 0.0),
                "select": sel.timings.get("select", 0.0),
            },
        }

    def _loader(self, dataset: Dataset, *, train: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if train else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            # a short last batch gives batch-norm statistics of a handful of samples: 2 of 322 pseudo-labelled
            # samples made seed 2 diverge at the one-cycle peak (test 0.13; 0.65 without it). Shuffling each epoch
            # still shows every sample; a set no larger than one batch is kept whole.
            drop_last=train and len(dataset) > self.batch_size,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(ImageArrayDataset(*self._training_split()), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(ImageArrayDataset(self.data.client_test), train=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def client_train_dataloader(self) -> DataLoader:
        """The client's own labelled data: only for the simulated teacher (the model the client already has)."""
        return self._loader(ImageArrayDataset(self.data.client_train), train=True)

    def pool_dataloader(self, labelled_only: bool = True) -> DataLoader:
        """The labelled pool, for the weaker teacher variant that the cloud trains itself."""
        pool = self.data.pool
        if labelled_only:
            pool = pool.subset(np.flatnonzero(pool.labels >= 0))
        return self._loader(ImageArrayDataset(pool), train=True)
