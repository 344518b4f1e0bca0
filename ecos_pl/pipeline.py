"""The protocol as one plain-Python pipeline (no Lightning): data, φ, features, selection, label round, report.

    pipeline = ProtocolPipeline(source, phi, sampler, budget=B, seed=1, ...)   # B: train.yaml's `budget`
    pipeline.check_privacy_budget()       # before anything is released
    selection, report = pipeline.select() # the cached artifact, or the protocol run through an exchange
    targets, label_report = pipeline.label(selection)

`ECOSDataModule.setup()` runs `select` on rank zero and `load_selection` on the
others; the programs run the same steps one at a time. φ is fitted on the pool
before anything is keyed by it, so no step depends on the order in which the
others were asked for. One data identity (`data_id`) keys the feature cache, the
selection and the teacher.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecos_pl.atomic import clean_dead_temporaries, move_aside
from ecos_pl.data.base import DomainSplit, ECOSData
from ecos_pl.data.splits import check_val_fraction, with_validation
from ecos_pl.progress import logged_stage
from ecos_pl.protocol import ECOSClient, Sampler, Selection
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.labels import LabelRequest
from ecos_pl.protocol.privacy import check_budget, composed_epsilon
from ecos_pl.protocol.settings import ScorePrivacy
from ecos_pl.protocol.store import DamagedSelection, load_selection, save_selection, selection_key
from ecos_pl.protocol.transport import InProcess, Transport

log = logging.getLogger(__name__)


def sha1_of(array: np.ndarray) -> str:
    """The digest every party names a proxy set (or its targets) by: sha1 of the int64 values."""
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.int64).tobytes()).hexdigest()


def client_shards(n: int, n_clients: int, seed: int) -> list[np.ndarray]:
    """`n_clients` disjoint, seeded shards of the client's training split (one client each), sorted within."""
    if n_clients > n:
        raise ECOSInputError(f"clients={n_clients} is more than the client's {n} training samples.")
    if n_clients == 1:
        return [np.arange(n)]
    order = np.random.default_rng([int(seed), 0xC11E]).permutation(n)
    return [np.sort(part) for part in np.array_split(order, n_clients)]


@dataclass
class ProtocolReport:
    """What the selection cost and what it picked (the labels' fields come from the labeller, as it names them)."""

    n_pool: int
    n_client_train: int
    n_client_test: int
    n_client_val: int
    n_clients: int
    n_selected: int
    proxy_set_sha1: str
    n_centroids: int | None
    in_domain_fraction: float | None
    pool_in_domain_fraction: float
    composition_by_domain: dict
    bytes_down: int
    bytes_up: int
    client_score_macs: int
    epsilon: float | None
    score_privacy: dict | None
    timings: dict
    selection_artifact: str | None = None
    selection_reused: bool = False
    feature_cache: dict | None = None
    #: a strategy of several rounds (`ecos_adaptive`): each round's centroids, share of ε, ε, σ, bytes
    rounds: list | None = None

    def to_dict(self) -> dict:
        return dict(vars(self))


class ProtocolPipeline:
    """Everything between the data and the proxy set's training split, for one configuration."""

    def __init__(self, source, phi, sampler: Sampler, *, budget: int | None, seed: int = 1,
                 score_privacy: ScorePrivacy = ScorePrivacy(), max_epsilon: float | None = None, proxy_labels=None,
                 clients: int = 1, val_fraction: float = 0.0, cache_dir: str | None = None, reuse_selection: bool = True,
                 cache_features: bool = True, feature_dtype: str = "auto", transport: Transport | None = None):
        #: how the strategies' messages reach the clients (`transport=`): the same proxy set on every one
        self.transport = InProcess() if transport is None else transport
        self.source, self.phi, self.sampler, self.budget, self.seed = source, phi, sampler, budget, int(seed)
        self.score_privacy = score_privacy
        self.mechanism = score_privacy.mechanism_object()
        self.max_epsilon, self.proxy_labels, self.n_clients = max_epsilon, proxy_labels, int(clients)
        self.val_fraction = check_val_fraction(val_fraction)
        self.cache_dir, self.reuse_selection = cache_dir, reuse_selection
        #: with cache_dir: the pool's φ features live in cache_dir/features/ (ecos_pl.feature_cache)
        self.cache_features, self.feature_dtype = cache_features, feature_dtype
        self.feature_cache_info: dict | None = None
        self._data: ECOSData | None = None
        self._pool_features: np.ndarray | None = None
        self._phi_fitted = False
        self._checked: tuple | None = None  # (stat, loaded artifact or None) of the selection artifact, read once
        self._damaged: str | None = None

    # ------------------------------------------------------------------ data and φ

    @property
    def data(self) -> ECOSData:
        if self._data is None:
            self._data = with_validation(self.source.load(), self.val_fraction, self.seed)
        return self._data

    @functools.cached_property
    def data_id(self) -> str:
        """The data's one identity in every cache key (features, selection, teacher): an on-disk source's decode-cache
        key (every file's path, size and mtime, the image size and the split), else a hash of every split's arrays."""
        from ecos_pl.feature_cache import array_fingerprint

        d = self.data
        content = d.meta.get("data_key")
        if content:  # the validation split is seeded: its fraction and the seed name it
            content += f":val{d.meta['val_fraction']:g}-{self.seed}" if d.client_val is not None else ""
        else:
            splits = [d.pool, d.client_train, d.client_test] + ([d.client_val] if d.client_val is not None else [])
            parts = [array_fingerprint(np.asarray(a)) for s in splits for a in (s.images, s.labels, s.domains)]
            content = hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]
        return f"{self.data.name}:{content}"

    def fitted_phi(self):
        """φ fitted on the pool (the cloud's public data), once; deterministic, so every rank fits the same φ."""
        if not self._phi_fitted:
            with logged_stage(log, f"fitting φ ({type(self.phi).__name__}) on {len(self.data.pool):,} pool images"):
                self.phi.fit(self.data.pool.images)
            self._phi_fitted = True
        return self.phi

    def _feature_cache(self) -> tuple[Path, dict, bool] | None:
        """(path, meta, whether it holds valid features) of the pool's feature-cache entry; None without a cache."""
        from ecos_pl.feature_cache import cache_entry, cache_valid

        if self.cache_dir is None or not self.cache_features:
            return None
        path, meta = cache_entry(self.cache_dir, self.fitted_phi(), self.data_id, self.feature_dtype)
        return path, meta, cache_valid(path, len(self.data.pool))

    def feature_cache_entry(self) -> tuple[Path, dict] | None:
        """(path, meta) of the pool's feature-cache entry when it must still be written (else None)."""
        entry = None if self.selection_reusable() else self._feature_cache()
        return None if entry is None or entry[2] else entry[:2]

    @property
    def pool_features(self) -> np.ndarray:
        """φ of the pool [N, d], rows L2-normalised: from the feature cache (written first if missing), or computed."""
        if self._pool_features is None:
            from ecos_pl.feature_cache import cached_features

            phi, pool = self.fitted_phi(), self.data.pool.images
            if self.cache_dir is None or not self.cache_features:
                self._pool_features = phi.transform(pool)
            else:
                self._pool_features, info = cached_features(self.cache_dir, phi, pool, data_id=self.data_id, dtype=self.feature_dtype)
                if self.feature_cache_info is None or self.feature_cache_info["path"] != info["path"]:
                    self.feature_cache_info = info
        return self._pool_features

    def pool_features_at_hand(self) -> np.ndarray | None:
        """The pool's features if they need no φ run (computed already, or in the feature cache); else None."""
        if self._pool_features is None and (entry := self._feature_cache()) is not None and entry[2]:
            return self.pool_features
        return self._pool_features

    @property
    def sampler_budget(self) -> int | None:
        """The budget the sampler is given (None for one that takes none)."""
        return self.sampler.given_budget(self.budget)

    @functools.cached_property
    def shards(self) -> list[np.ndarray]:
        return client_shards(len(self.data.client_train), self.n_clients, self.seed)

    @functools.cached_property
    def client_features(self) -> np.ndarray:
        """φ of the client's training split (every shard's rows), computed once."""
        return self.fitted_phi().transform(self.data.client_train.images)

    def clients(self) -> list[ECOSClient]:
        """The clients in this process: one per shard, each with its features and (lazily) its labeller."""
        p, train = self.score_privacy, self.data.client_train
        labeller = getattr(self.proxy_labels, "client_labeller", None)
        out = []
        for i, rows in enumerate(self.shards):
            seed = self.seed if self.n_clients == 1 else self.seed * 1000 + i
            make = None if labeller is None else functools.partial(labeller, train.subset(rows), self.data, seed=seed,
                                                                 protocol_phi=self.fitted_phi())
            out.append(ECOSClient(self.client_features[rows], epsilon=p.epsilon, mechanism=p.mechanism, delta=p.delta,
                                  seed=seed, labeller=make, **self.fleet_settings))
        return out

    @property
    def fleet_settings(self) -> dict:
        """How the devices bound and noise their counts (client.noise, unit, clip_norm, min_answers: all by default)."""
        p = self.score_privacy
        return {"noise": p.noise, "unit": p.unit, "clip_norm": p.clip_norm,
                "min_answers": self.n_clients if p.min_answers is None else min(p.min_answers, self.n_clients)}

    # ------------------------------------------------------------------ the selection and its artifact

    @functools.cached_property
    def selection_path(self) -> Path | None:
        """Where this configuration's selection lives (φ fitted first: its fingerprint is part of the key)."""
        if self.cache_dir is None:
            return None
        from ecos_pl.protocol.store import sampler_spec

        privacy = () if self.score_privacy.epsilon is None else (self.score_privacy.mechanism, self.score_privacy.delta)
        key = selection_key(
            self.data_id, self.fitted_phi().fingerprint(), sampler_spec(self.sampler),
            self.sampler_budget, self.seed, self.score_privacy.epsilon, *privacy,
            *(() if self.n_clients == 1 else (f"clients:{self.n_clients}",)),
            *self._fleet_key(),
        )
        return Path(self.cache_dir).expanduser() / "selections" / f"{key}.npz"

    def _fleet_key(self) -> list[str]:
        """The fleet settings that change the selection, where they are not the defaults (older keys stay valid)."""
        f = self.fleet_settings
        key = [f"noise:{f['noise']}"] if f["noise"] != "local" else []
        key += [f"unit:device", f"clip_norm:{f['clip_norm']:g}"] if f["unit"] == "device" else []
        return key + ([f"min_answers:{f['min_answers']}"] if f["noise"] == "distributed" else [])

    def _checked_selection(self) -> tuple[Selection, dict] | None:
        """The artifact, loaded and checked once (None: absent or damaged; `_damaged` says why)."""
        if self._checked is None:
            path = self.selection_path
            clean_dead_temporaries(path.parent)
            try:
                st = os.stat(path)
                self._checked = (st, load_selection(path, n_pool=len(self.data.pool)))
            except FileNotFoundError:
                self._checked = (None, None)
            except DamagedSelection as err:
                self._checked, self._damaged = (st, None), str(err)
        return self._checked[1]

    def selection_reusable(self) -> bool:
        """Whether this configuration's artifact exists and passes its checks (the same answer on every rank)."""
        return self.selection_path is not None and self.reuse_selection and self._checked_selection() is not None

    def select(self) -> tuple[Selection, ProtocolReport]:
        """The proxy set: this configuration's artifact if it is sound, else the protocol, run and saved."""
        path = self.selection_path
        reused = self.selection_reusable()
        if reused:
            selection, extra = self._checked_selection()
        else:
            if path is not None and self._damaged is not None:  # never used; rebuilt below
                move_aside(path, self._damaged, expected=self._checked[0])
            selection, extra = self._run_protocol()
            if path is not None:
                save_selection(selection, path, extra)
        return selection, self.report(selection, reused=reused, **extra)

    def load_selection(self) -> tuple[Selection, ProtocolReport]:
        """The artifact another process (rank zero) has just written or checked."""
        selection, extra = load_selection(self.selection_path, n_pool=len(self.data.pool))
        return selection, self.report(selection, reused=True, **extra)

    def _run_protocol(self) -> tuple[Selection, dict]:
        t0 = time.perf_counter()
        with logged_stage(log, f"φ features of the {len(self.data.pool):,} pool images"):
            pool_features = self.pool_features
        t1 = time.perf_counter()
        # the client computes φ of its data once, before it answers (timed apart from the round)
        with logged_stage(log, "the client's φ features"):
            clients = self.clients() if self.sampler.asks_clients else None
            if clients and self.n_clients > 1 and self.score_privacy.noise == "local" and self.mechanism.mechanism != "none":
                log.warning("client.noise=local: each of the %d devices adds the full σ = %.3g for ε = %g, so their summed "
                            "scores carry √%d·σ = %.3g (client.noise=distributed, under a secure sum, adds it once).",
                            self.n_clients, self.mechanism._sigma(), self.mechanism.epsilon, self.n_clients,
                            self.mechanism._sigma() * self.n_clients**0.5)
        t2 = time.perf_counter()
        budget = self.sampler_budget
        with logged_stage(log, f"{type(self.sampler).__name__}: choosing the proxy set (k-means, the client's scores, "
                               f"the allocation; transport={self.transport.name})"):
            transport = self.transport
            if self.score_privacy.noise == "distributed":  # the devices' shares go to a secure sum, not to the cloud
                transport = transport.with_secure_sum()
            selection = transport.run(self.sampler, clients, pool_features=pool_features, budget=budget, seed=self.seed)
        return selection, {"cloud_features_s": t1 - t0, "client_features_s": t2 - t1}

    def proxy(self, selection: Selection) -> DomainSplit:
        """The selected pool samples (the client-data reference: the client's own training split)."""
        return self.data.client_train if self.sampler.trains_on_client else self.data.pool.subset(selection.indices)

    def report(self, selection: Selection, *, reused: bool, cloud_features_s: float = 0.0, client_features_s: float = 0.0) -> ProtocolReport:
        data, domains = self.data, self.proxy(selection).domains
        return ProtocolReport(
            n_pool=len(data.pool), n_client_train=len(data.client_train), n_client_test=len(data.client_test),
            n_client_val=0 if data.client_val is None else len(data.client_val),
            n_clients=self.n_clients, n_selected=len(domains), proxy_set_sha1=sha1_of(selection.indices),
            n_centroids=selection.n_centroids,
            in_domain_fraction=float(np.mean(domains == data.client_domain_index)) if len(domains) else None,
            pool_in_domain_fraction=float(np.mean(data.pool_in_domain())),
            composition_by_domain={name: int((domains == i).sum()) for i, name in enumerate(data.domain_names)},
            bytes_down=selection.bytes_down, bytes_up=selection.bytes_up, client_score_macs=selection.client_macs,
            epsilon=selection.epsilon if selection.epsilon is not None or "round_share" not in selection.diagnostics
            else self.mechanism.epsilon,  # the rounds together spend the client's whole ε
            # how the scores were privatised (what the client did, whatever the sampler asked)
            score_privacy=({**self.mechanism.report(), **self.fleet_report(selection.n_centroids)}
                           if selection.bytes_up and not self.sampler.releases_features else None),
            timings={"features": cloud_features_s + client_features_s, "features_cloud": cloud_features_s,
                     "features_client": client_features_s, **{k: selection.timings.get(k, 0.0) for k in ("compress", "score", "select")}},
            selection_artifact=None if self.selection_path is None else str(self.selection_path),
            selection_reused=bool(reused), feature_cache=self.feature_cache_info,
            rounds=self._rounds(selection),
        )

    def _rounds(self, selection: Selection) -> list | None:
        """Each round of a multi-round strategy, with the ε and σ the client's mechanism gave it (dp-accounting)."""
        from ecos_pl.protocol.adaptive import round_epsilons, round_table

        table = round_table(selection.diagnostics)
        if table is None:
            return None
        data = self.data
        for r, picks in zip(table, selection.diagnostics["round_selection"]):  # what the cloud would pick had it stopped
            domains = data.pool.domains[picks[picks >= 0]]
            r["in_domain_fraction"] = float(np.mean(domains == data.client_domain_index)) if len(domains) else None
            r["composition_by_domain"] = {name: int((domains == i).sum()) for i, name in enumerate(data.domain_names)}
        if self.mechanism.mechanism == "none":
            return table
        privacy = round_epsilons(self.mechanism, [r["share"] for r in table])
        for r, eps, sigma in zip(table, privacy["round_epsilon"], privacy["round_sigma"]):
            r.update(epsilon=eps, noise_sigma=sigma)
        table[-1]["all_rounds_epsilon_pld"] = privacy["composed_epsilon_pld"]  # dp-accounting's composition of them all
        return table

    # ------------------------------------------------------------------ privacy and the label round

    def fleet_report(self, n_centroids: int | None) -> dict:
        """The devices' noise: per device and in the sum (`device.fleet_report`); nothing for one client with the
        default noise and unit (its `score_privacy` stays what it was)."""
        from ecos_pl.protocol.device import fleet_report

        f = self.fleet_settings
        if self.n_clients == 1 and f["noise"] == "local" and f["unit"] == "sample":
            return {}
        return fleet_report(self.mechanism, f["noise"], f["unit"], f["clip_norm"], self.n_clients, f["min_answers"], n_centroids)

    def check_privacy_budget(self) -> float:
        """The ε of everything the client will release (scores, then labels when the scenario asks for them),
        checked against `max_epsilon` before anything is released; labels are counted for a full budget."""
        if self.sampler.releases_features:  # the privacy-violating reference: no ε bounds an upload
            check_budget(float("inf"), self.max_epsilon, "uploading every client feature (oracle_central)")
            return float("inf")
        releases = [self.mechanism] if self.sampler.asks_clients else []
        epsilons = getattr(self.proxy_labels, "epsilons", None)
        if epsilons is not None and not self.sampler.trains_on_client:
            total, what = epsilons(int(self.budget), releases)[1], f"scores and {self.budget} labels"
        elif releases and self.mechanism.mechanism != "none":
            total, what = self.mechanism.epsilon, "the scores"  # one release: its calibrated ε, exact
        else:
            total, what = composed_epsilon([r.dp_event() for r in releases], self.mechanism.delta), "the scores"
        check_budget(total, self.max_epsilon, what)
        return total

    def label(self, selection: Selection) -> tuple[np.ndarray | None, dict]:
        """The proxy set's training targets (None: the scenario uses no labels) and what the labelling reported."""
        if self.proxy_labels is None:
            return None, {}
        proxy = self.proxy(selection)
        if self.sampler.trains_on_client:  # the client-data reference trains on the client's own labels
            targets, report = np.asarray(proxy.labels, dtype=np.int64), {}
        else:
            request = LabelRequest(
                truth=proxy.labels, proxy_features=lambda: self._label_proxy_features(selection, proxy), seed=self.seed,
                # what the selection already released about the clients: nothing, or their scores
                score_releases=[] if selection.bytes_up == 0 else [self.mechanism], max_epsilon=self.max_epsilon,
            )
            targets, report = self.transport.run(self.proxy_labels, self.clients(), request=request)
        report["n_trained"] = int((targets >= 0).sum())
        if report["n_trained"] < 2:  # batch-norm cannot train on one sample; nothing can on none
            raise ECOSInputError(
                f"only {report['n_trained']} of {len(targets)} proxy samples got a label, too few to train on; "
                "lower scenario.labels.threshold (or set it to null) or raise the budget."
            )
        report["proxy_targets_sha1"] = sha1_of(targets)
        return targets, report

    def _label_proxy_features(self, selection: Selection, proxy: DomainSplit) -> np.ndarray:
        """The proxy set in the labelling φ (the labeller's own, fitted by the cloud on its pool; else the protocol's)."""
        phi = self.proxy_labels.fitted_phi(self.data.pool.images) if getattr(self.proxy_labels, "phi", None) is not None else None
        return self.pool_features[selection.indices] if phi is None else phi.transform(proxy.images)
