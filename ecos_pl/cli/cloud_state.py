"""`ecos-cloud`'s own state between its commands: what `compress` leaves for `select`, `proxy-features` and `labels`.

    DIR/state/settings.json, clusters.npz, centroids.ecos, pool_features.npy, pool_paths.txt, pool_label_features.npy
    proxy.json   the proxy set `select` wrote (checked against the state it came from)
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecos_pl.cli.common import existing_dir, existing_file, parse_path_list, read_features, read_message, sha1_indices
from ecos_pl.protocol.compress import PoolClusters
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.messages import CentroidsMessage, answer_tag
from ecos_pl.protocol.parties import ECOSCloud
from ecos_pl.protocol.samplers import ECOSSampler
from ecos_pl.protocol.settings import Allocation, Clustering, Labelling, ScorePrivacy

#: 2: the clustering and allocation settings saved as their settings objects; the labelling φ's pool features
STATE_FORMAT = "ecos-cloud-state/2"
PROXY_FORMAT = "ecos-proxy/1"
LABEL_PHI_FILE = "label_phi.safetensors"
CLUSTERING, ALLOCATION, LABELLING, SCORE_PRIVACY = Clustering(), Allocation(), Labelling(), ScorePrivacy()


@functools.cache
def defaults() -> dict:
    """train.py's seed, φ, labelling φ and `folders` split, from the config train.py composes (`compose.train_config`):
    the programs have no defaults of their own."""
    from ecos_pl.compose import train_config

    base = train_config("data=folders", hydra_node=True)
    labels = train_config("scenario=pseudo_label", hydra_node=True)
    return {"seed": int(base.seed), "phi": base.hydra.runtime.choices.phi,
            "label_phi": labels.hydra.runtime.choices["phi@scenario.labels.phi"],
            **{k: base.data[k] for k in ("client_fraction", "test_fraction", "image_size")}}


# --------------------------------------------------------------------------- state


@dataclass
class CloudState:
    folder: Path
    settings: dict
    clusters: PoolClusters
    centroids: CentroidsMessage
    centroids_bytes: bytes
    pool_features: np.ndarray
    pool_paths: list[str] | None
    #: the pool in the labelling φ (pseudo_label's proxy features), when the cloud ran one
    pool_label_features: np.ndarray | None = None

    @property
    def n_centroids(self) -> int:
        return int(self.settings["n_centroids"])

    @property
    def answer_tag(self) -> bytes:
        return answer_tag(self.centroids)

    @property
    def phi_tag(self) -> bytes | None:
        return self.centroids.tag

    def cloud(self, **allocation) -> ECOSCloud:
        """The same `ECOSCloud` that compressed the pool, with its clustering restored (`allocation`: overrides)."""
        s = self.settings
        settings = Allocation.from_mapping({**s["allocation"], **allocation})
        cloud = ECOSSampler(Clustering.from_mapping(s["clustering"]), settings).cloud(self.pool_features, s["seed"])
        cloud.clusters, cloud.message = self.clusters, self.centroids
        return cloud


def _state_folder(path) -> Path:
    p = existing_dir(path, "--state")
    if (p / "state" / "settings.json").is_file():
        return p / "state"
    if (p / "settings.json").is_file():
        return p
    raise ECOSInputError(f"--state {path} holds no cloud state (no state/settings.json); give the --out-dir of ecos-cloud compress.")


def _state_inputs(path) -> list[tuple[str, object]]:
    """What a command given `--state path` reads: the state folder, and compress's files beside it (nothing is read here)."""
    p = Path(path).expanduser()
    folder = next((f for f in (p / "state", p) if (f / "settings.json").is_file()), None)
    if folder is None:  # no state: load_state says so
        return []
    return [("--state", f"{folder}/"), *(("--state", folder.parent / n) for n in ("centroids.ecos", "phi.safetensors", LABEL_PHI_FILE))]


def load_state(path) -> CloudState:
    folder = _state_folder(path)
    try:
        settings = json.loads((folder / "settings.json").read_text())
        if settings.get("format") != STATE_FORMAT:
            raise ValueError(f"format {settings.get('format')!r}")
        with np.load(folder / "clusters.npz", allow_pickle=False) as z:
            clusters = PoolClusters(z["assignments"].astype(np.int64), z["sq_distances"].astype(np.float32), z["sizes"].astype(np.int64))
    except (OSError, ValueError, KeyError) as err:
        raise ECOSInputError(f"--state {path} is not a readable cloud state ({type(err).__name__}: {err}).") from None
    centroids, data = read_message(folder / "centroids.ecos", CentroidsMessage, "--state")
    pool = settings["pool"]
    if pool["kind"] == "features":
        feature_file = Path(pool["path"])
        if not feature_file.is_file():
            raise ECOSInputError(f"--state {path}: the pool features {feature_file} it was compressed from are gone.")
        st = feature_file.stat()
        if (st.st_size, st.st_mtime_ns) != (pool["size"], pool["mtime_ns"]):
            raise ECOSInputError(f"--state {path}: the pool features {feature_file} changed since compress; run compress again.")
    else:
        feature_file = folder / "pool_features.npy"
    features = read_features(feature_file, "--state")
    paths_file = folder / "pool_paths.txt"
    paths = parse_path_list(paths_file.read_text(encoding="utf-8"), f"--state {path}: {paths_file.name}") if paths_file.is_file() else None
    label_file = folder / "pool_label_features.npy"
    label_features = read_features(label_file, "--state") if label_file.is_file() else None
    n = len(features)
    if (len(clusters.assignments) != n or centroids.n_centroids != settings["n_centroids"] or (paths is not None and len(paths) != n)
            or (label_features is not None and len(label_features) != n)):
        raise ECOSInputError(f"--state {path} is inconsistent: its pool, clustering and centroids disagree in size.")
    return CloudState(folder, settings, clusters, centroids, data, features, paths, label_features)


def load_proxy(path, state: CloudState) -> dict:
    p = existing_file(path, "--proxy")
    try:
        proxy = json.loads(p.read_text())
        if proxy.get("format") != PROXY_FORMAT:
            raise ValueError(f"format {proxy.get('format')!r}")
        indices = np.asarray(proxy["indices"], dtype=np.int64)
    except (ValueError, KeyError, TypeError) as err:
        raise ECOSInputError(f"--proxy {path} is not a proxy.json written by ecos-cloud select ({type(err).__name__}).") from None
    if proxy.get("centroids_tag") != state.answer_tag.hex():
        raise ECOSInputError(f"--proxy {path} was selected from another cloud state than --state {state.folder}.")
    n = len(state.pool_features)
    if indices.ndim != 1 or len(indices) < 1 or (indices < 0).any() or (indices >= n).any() or len(np.unique(indices)) != len(indices):
        raise ECOSInputError(f"--proxy {path} must list distinct pool indices in [0, {n}).")
    if sha1_indices(indices) != proxy.get("proxy_set_sha1"):
        raise ECOSInputError(f"--proxy {path} was altered: its indices do not match its proxy_set_sha1.")
    proxy["indices"] = indices
    return proxy
