"""`ecos-cloud`: the cloud's side of ECOS as a program. It never sees a client's data, only message files.

    ecos-cloud compress       pool images (or features) -> DIR/centroids.ecos, DIR/phi.safetensors, DIR/state/
    ecos-cloud select         DIR/state + one scores.ecos per client -> proxy.json (one proxy set for the fleet)
    ecos-cloud proxy-features DIR/state + proxy.json -> proxy_features.ecos (pseudo_label: the client labels them)
    ecos-cloud labels         DIR/state + proxy.json + labels.ecos -> proxy_labels.json (after the cloud's neighbour vote)
    ecos-cloud split-folders  simulation helper: split a folders tree exactly as train.py does

The computation is the library's: `ECOSSampler.cloud(...)` compresses and selects exactly
as it does behind train.py's in-process exchange; here the exchange is files (the message
written by one step, the clients' answers read by the next). Every default is train.py's
(`ecos_pl.protocol.settings`, conf/train.yaml), so the same features, seed and settings give
the same proxy set, and with the labelling φ (HOG) the same pseudo-labels.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecos_pl.atomic import naming
from ecos_pl.cli.common import (
    program_parser,
    finish_command,
    add_command,
    add_max_pixels,
    build_phi,
    check_image_size,
    read_images,
    eps_text,
    existing_dir,
    existing_file,
    file_identity,
    fraction,
    list_images,
    load_phi,
    nonneg_int,
    parse_path_list,
    path_list_text,
    phi_preset,
    phi_preset_names,
    positive_float,
    positive_int,
    read_features,
    read_list,
    read_message,
    refuse_overwrite,
    replace_dir,
    replace_entries,
    require_images,
    run_program,
    say,
    phi_file_bytes,
    sha1_indices,
    write_bytes_atomic,
    write_json_atomic,
)
from ecos_pl.protocol.compress import PoolClusters
from ecos_pl.protocol.errors import ECOSInputError, check_count
from ecos_pl.protocol.features import unit_rows
from ecos_pl.protocol.messages import (
    HEADER_BYTES,
    SCHEMA_VERSION,
    CentroidsMessage,
    LabelsMessage,
    ProxyFeaturesMessage,
    ScoresMessage,
    answer_tag,
    phi_tag,
)
from ecos_pl.protocol.label import CLOUD_VOTE_K, label_epsilon, neighbour_vote
from ecos_pl.protocol.parties import ECOSCloud
from ecos_pl.protocol.samplers import ECOSSampler
from ecos_pl.protocol.settings import Allocation, Clustering, Labelling, ScorePrivacy

PROG = "ecos-cloud"
#: 2: the clustering and allocation settings saved as their settings objects; the labelling φ's pool features
STATE_FORMAT = "ecos-cloud-state/2"
PROXY_FORMAT = "ecos-proxy/1"
LABEL_PHI_FILE = "label_phi.safetensors"
CLUSTERING, ALLOCATION, LABELLING, SCORE_PRIVACY = Clustering(), Allocation(), Labelling(), ScorePrivacy()


def _train_defaults() -> dict:
    """train.py's seed, φ and labelling φ, read from conf/ (the programs have no defaults of their own)."""
    from omegaconf import OmegaConf

    from ecos_pl.cli.common import CONF_DIR

    def choice(config, group: str):
        for entry in OmegaConf.load(config).get("defaults", []):
            if isinstance(entry, dict) or OmegaConf.is_dict(entry):
                for key, value in dict(entry).items():
                    if key.split("@")[0].lstrip("/") == group:
                        return value
        return None

    train, folders = CONF_DIR / "train.yaml", OmegaConf.load(CONF_DIR / "data" / "folders.yaml") if CONF_DIR.is_dir() else None
    if folders is None:  # an installed package without conf/: the values of conf/ at release
        return {"seed": 1, "phi": "random_cnn", "label_phi": "hog", "client_fraction": 0.5, "test_fraction": 0.2, "image_size": 32}
    return {"seed": int(OmegaConf.load(train).seed), "phi": choice(train, "phi"),
            "label_phi": choice(CONF_DIR / "scenario" / "pseudo_label.yaml", "phi"),
            **{k: folders[k] for k in ("client_fraction", "test_fraction", "image_size")}}


DEFAULTS = _train_defaults()


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


# --------------------------------------------------------------------------- compress


def _resolve_phi(spec: str | None, seed: int, image_size: int | None, flag: str = "--phi"):
    """(φ, its config, image size, φ file to copy or None) from a preset name or a φ file."""
    spec = spec or DEFAULTS["phi"]
    if Path(spec).expanduser().is_file() or spec.endswith(".safetensors"):
        phi, size = load_phi(spec, flag)
        if image_size is not None and image_size != size:
            raise ECOSInputError(f"--image-size {image_size} differs from the image size {size} that {flag} {spec} was saved with.")
        return phi, None, size, Path(spec).expanduser()
    try:
        config = phi_preset(spec, seed)
    except ECOSInputError as err:  # it names --phi
        raise ECOSInputError(str(err).replace("--phi", flag, 1)) from None
    return build_phi(config, flag), config, image_size or DEFAULTS["image_size"], None


def cmd_compress(args) -> int:
    out_dir = Path(args.out_dir).expanduser()
    files = {flag: getattr(args, flag[2:].replace("-", "_")) for flag in ("--phi", "--label-phi")}
    files = {flag: f for flag, f in files.items() if f is not None and Path(f).expanduser().is_file()}
    written = [out_dir / "centroids.ecos", out_dir / "state", out_dir / "phi.safetensors", out_dir / LABEL_PHI_FILE]
    # a φ file given from --out-dir itself is read before anything is written, and written back unchanged
    refuse_overwrite([("--out-dir", w) for w in written if not any(_same_file(w, f) for f in files.values())],
                     [("--features", args.features), ("--pool-list", args.pool_list), *files.items()])
    check_image_size(args.image_size)
    t0 = time.perf_counter()
    phi = phi_config = phi_source = None
    label_phi = label_features = label_source = None
    image_size = None
    if args.features is not None:
        if args.pool_list is not None:
            raise ECOSInputError("--pool-list goes with --pool (a folder of images), not with --features.")
        features = read_features(args.features, "--features")
        if args.phi is not None:  # only to stamp the centroids with φ's tag
            phi, phi_config, image_size, phi_source = _resolve_phi(args.phi, args.seed, args.image_size)
        pool_source, paths, root = {"kind": "features", **file_identity(Path(args.features).expanduser())}, None, None
    else:
        root = existing_dir(args.pool, "--pool").resolve()
        paths = require_images(read_list(args.pool_list, "--pool-list", root) if args.pool_list else list_images(root, "--pool"), "--pool", root)
        if len(paths) < args.centroids:
            raise ECOSInputError(f"--centroids {args.centroids} is larger than the pool ({len(paths)} images).")
        phi, phi_config, image_size, phi_source = _resolve_phi(args.phi, args.seed, args.image_size)
        say(f"pool: {len(paths):,} images under {root}; decoding at {image_size}x{image_size}")
        images, paths = read_images(root, paths, image_size, "--pool", args)
        if phi_config is not None:
            phi.fit(images)  # as the in-process pipeline does (a no-op for timm φ; PCA is fitted on the pool)
        say(f"φ: {type(phi).__name__} on {len(images):,} pool images")
        features = unit_rows(phi.transform(images), "pool features")
        if args.label_phi.lower() != "none":  # pseudo_label's labelling φ, fitted on the pool as train.py's label round does
            label_phi, label_config, _, label_source = _resolve_phi(args.label_phi, args.seed, image_size, "--label-phi")
            if label_config is not None:
                label_phi.fit(images)
            label_features = unit_rows(label_phi.transform(images), "pool label features")
            say(f"labelling φ: {type(label_phi).__name__} on the same images (pseudo_label's proxy features)")
        del images
        pool_source = {"kind": "images", "root": str(root), "n": len(paths)}
    t1 = time.perf_counter()
    n, d = features.shape
    check_count(args.centroids, "--centroids", high=n, high_name="the pool size")
    clustering = Clustering(n_centroids=args.centroids, niter=args.niter, max_points_per_centroid=args.max_points_per_centroid,
                            send_radii=args.radii, radius_quantile=args.radius_quantile)
    allocation = Allocation(temperature=args.temperature, client_cap=ALLOCATION.client_cap)
    cloud = ECOSSampler(clustering, allocation).cloud(features, args.seed)  # what train.py's sampler compresses with
    plain = cloud.compress()
    t2 = time.perf_counter()
    fingerprint = phi.fingerprint() if phi is not None else None
    message = CentroidsMessage(plain.centroids, plain.radii, tag=phi_tag(fingerprint) if fingerprint else None)
    data = message.to_bytes()
    phi_file = out_dir / "phi.safetensors"
    phi_bytes = None  # everything is computed and checked before the first file is written
    if phi is not None:
        phi_bytes = phi_file_bytes(phi, image_size) if phi_source is None else phi_source.read_bytes()
    label_phi_file = out_dir / LABEL_PHI_FILE
    label_bytes = None
    if label_phi is not None:
        label_bytes = label_source.read_bytes() if label_source is not None else phi_file_bytes(label_phi, image_size)
    settings = {
        "format": STATE_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "n_centroids": int(args.centroids),
        "dim": int(d),
        "n_pool": int(n),
        "seed": int(args.seed),
        "clustering": clustering.to_dict(),
        "allocation": allocation.to_dict(),
        "phi": None if phi is None else {"fingerprint": fingerprint, "tag": message.tag.hex(), "config": phi_config, "image_size": image_size},
        "label_phi": None if label_phi is None else {"fingerprint": label_phi.fingerprint(), "tag": phi_tag(label_phi.fingerprint()).hex()},
        "pool": pool_source,
        "centroids_tag": answer_tag(message).hex(),
        "bytes_down": message.nbytes,
        "timings": {"features": t1 - t0, "compress": t2 - t1},
    }

    def build_state(folder: Path) -> None:
        def write(name: str, save) -> None:
            with naming(out_dir / "state" / name):
                save(folder / name)

        write("settings.json", lambda p: p.write_text(json.dumps(settings, indent=2) + "\n"))
        write("clusters.npz", lambda p: np.savez(p, assignments=cloud.clusters.assignments, sq_distances=cloud.clusters.sq_distances,
                                                 sizes=cloud.clusters.sizes))
        write("centroids.ecos", lambda p: p.write_bytes(data))
        if pool_source["kind"] == "images":
            write("pool_features.npy", lambda p: np.save(p, np.ascontiguousarray(features, dtype=np.float32)))
            write("pool_paths.txt", lambda p: p.write_text(path_list_text(paths), encoding="utf-8"))
        if label_features is not None:
            write("pool_label_features.npy", lambda p: np.save(p, np.ascontiguousarray(label_features, dtype=np.float32)))

    def build(folder: Path) -> None:  # every file of --out-dir, renamed into place only once all are written
        (folder / "state").mkdir()
        build_state(folder / "state")
        for name, content in (("centroids.ecos", data), (phi_file.name, phi_bytes), (label_phi_file.name, label_bytes)):
            if content is not None:
                with naming(out_dir / name):
                    (folder / name).write_bytes(content)

    replace_entries(build, out_dir)
    sizes = cloud.clusters.sizes
    say(
        f"compressed {n:,} pool samples (d={d}) into R={args.centroids} centroids "
        f"(cluster sizes {int(sizes.min())}..{int(sizes.max())}) in {t2 - t1:.2f} s",
        f"wrote {out_dir / 'centroids.ecos'}: {len(data):,} bytes down ({HEADER_BYTES} + 4·R·d"
        + (" + 4·R radii" if args.radii else "") + ")",
    )
    if phi is not None:
        say(f"wrote {phi_file}: φ for the client ({phi_file.stat().st_size:,} bytes, once; fingerprint {fingerprint}, tag {message.tag.hex()})")
    else:
        say("no φ file: the pool came as features; the client must score features computed by the same φ (--features)")
    if label_phi is not None:
        say(f"wrote {label_phi_file}: the labelling φ, for pseudo_label's label round ({label_phi_file.stat().st_size:,} bytes)")
    say(f"wrote {out_dir / 'state'}/: the cloud's own state for select (nothing in it leaves the cloud)",
        "privacy: this step releases nothing about any client.")
    return 0


# --------------------------------------------------------------------------- select


def _client_entry(path: str, msg: ScoresMessage) -> dict:
    return {
        "scores_file": path,
        "epsilon": msg.epsilon,
        "differentially_private": msg.epsilon is not None,
        "bytes_up": msg.nbytes,
        "tag": None if msg.tag is None else msg.tag.hex(),
    }


def _same_file(a, b) -> bool:
    a, b = Path(a).expanduser(), Path(b).expanduser()
    return a.exists() and b.exists() and a.samefile(b)


def cmd_select(args) -> int:
    refuse_overwrite([("--out", args.out)], [*_state_inputs(args.state), *(("--scores", s) for s in args.scores)])
    state = load_state(args.state)
    n = len(state.pool_features)
    budget = check_count(args.budget, "--budget", high=n, high_name="the pool size")
    seen, replies, clients = set(), [], []
    for path in args.scores:
        key = str(Path(path).expanduser().resolve())
        if key in seen:
            raise ECOSInputError(f"--scores {path} is given twice; each client's scores count once.")
        seen.add(key)
        msg, _ = read_message(path, ScoresMessage, "--scores")
        if msg.n_centroids != state.n_centroids:
            raise ECOSInputError(f"--scores {path} has {msg.n_centroids} scores but the cloud's state has R={state.n_centroids} centroids.")
        if msg.tag is None:
            if not args.allow_untagged:
                raise ECOSInputError(
                    f"--scores {path} carries no tag, so nothing shows it answers these centroids; "
                    "pass --allow-untagged to use it unchecked."
                )
            warnings.warn(f"--scores {path} carries no tag; used unchecked (--allow-untagged).", stacklevel=1)
        elif msg.tag != state.answer_tag:
            raise ECOSInputError(
                f"--scores {path} answers other centroids (tag {msg.tag.hex()}) than this state's (tag {state.answer_tag.hex()}): "
                "it was scored against another compress run or with another φ."
            )
        replies.append(msg)
        clients.append(_client_entry(path, msg))
    cloud = state.cloud(client_cap=args.client_cap, **({} if args.temperature is None else {"temperature": args.temperature}))
    t0 = time.perf_counter()
    indices = cloud.select(replies, budget)
    seconds = time.perf_counter() - t0
    total = cloud.fleet_scores
    for entry, msg, scale in zip(clients, replies, cloud.client_scales):
        entry["cap_scale"] = scale
        if scale is not None:
            warnings.warn(
                f"--scores {entry['scores_file']} claims {msg.scores.sum():.6g} samples, more than --client-cap {args.client_cap:g} "
                f"times the other clients' median; its scores count {scale:.3g} of their value.",
                stacklevel=1,
            )
    proxy = {
        "format": PROXY_FORMAT,
        "budget": budget,
        "n_selected": int(len(indices)),
        "proxy_set_sha1": sha1_indices(indices),
        "indices": [int(i) for i in indices],
        "root": state.settings["pool"].get("root"),
        "paths": None if state.pool_paths is None else [state.pool_paths[i] for i in indices],
        "allocation": [int(a) for a in cloud.allocation],
        "cluster_sizes": [int(s) for s in state.clusters.sizes],
        "scores_total": [float(s) for s in total],
        "clients": clients,
        "bytes": {
            "down_per_client": state.centroids.nbytes,
            "up": sum(c["bytes_up"] for c in clients),
        },
        "settings": {"seed": state.settings["seed"], **state.settings["clustering"], **cloud.allocation_settings.to_dict(),
                     "phi_fingerprint": (state.settings.get("phi") or {}).get("fingerprint")},
        "centroids_tag": state.answer_tag.hex(),
        "state": str(state.folder.resolve()),
        "timings": {"select": seconds},
    }
    write_json_atomic(args.out, proxy)
    say(f"selected {len(indices):,} of {n:,} pool samples (budget {budget}) from {len(replies)} client(s) in {seconds:.2f} s",
        f"wrote {args.out} (proxy_set_sha1 {proxy['proxy_set_sha1']})",
        "privacy, per client (the selection is post-processing of the released scores: it costs no client anything more):")
    for c in clients:
        say(f"  {c['scores_file']}: {eps_text(c['epsilon'])}" + (" (as the client privatised them; ecos-client's default is Gaussian, δ = 1e-5)" if c["epsilon"] else "")
            + f"; {c['bytes_up']} bytes up")
    return 0


# --------------------------------------------------------------------------- pseudo_label round


def _proxy_features_message(state: CloudState, indices: np.ndarray) -> ProxyFeaturesMessage:
    """The proxy set in the labelling φ when the cloud ran one (train.py's label round), else in the protocol's φ."""
    if state.pool_label_features is not None:
        return ProxyFeaturesMessage(state.pool_label_features[indices], tag=bytes.fromhex(state.settings["label_phi"]["tag"]))
    return ProxyFeaturesMessage(state.pool_features[indices], tag=state.phi_tag)


def cmd_proxy_features(args) -> int:
    refuse_overwrite([("--out", args.out)], [*_state_inputs(args.state), ("--proxy", args.proxy)])
    state = load_state(args.state)
    proxy = load_proxy(args.proxy, state)
    msg = _proxy_features_message(state, proxy["indices"])
    write_bytes_atomic(args.out, msg.to_bytes())
    say(f"wrote {args.out}: φ of the {msg.n_samples} proxy samples, {msg.nbytes:,} bytes down ({HEADER_BYTES} + 4·B·d)",
        "privacy: this step releases nothing about any client (the proxy set is pool data).")
    return 0


def cmd_labels(args) -> int:
    from ecos_pl.protocol.privacy import ScoreMechanism

    refuse_overwrite([("--out", args.out)], [*_state_inputs(args.state), ("--proxy", args.proxy), ("--labels", args.labels)])
    state = load_state(args.state)
    proxy = load_proxy(args.proxy, state)
    msg, _ = read_message(args.labels, LabelsMessage, "--labels")
    indices = proxy["indices"]
    if msg.n_samples != len(indices):
        raise ECOSInputError(f"--labels {args.labels} holds {msg.n_samples} labels but the proxy set has {len(indices)} samples.")
    down = _proxy_features_message(state, indices)
    expected = answer_tag(down)
    if msg.tag is None and not args.allow_untagged:
        raise ECOSInputError(f"--labels {args.labels} carries no tag, so nothing shows it answers this proxy set; pass --allow-untagged to use it unchecked.")
    if msg.tag is not None and msg.tag != expected:
        raise ECOSInputError(f"--labels {args.labels} answers other proxy features (tag {msg.tag.hex()}) than this proxy set's (tag {expected.hex()}).")
    clients = proxy["clients"]
    names = [c["scores_file"] for c in clients]
    if args.client is not None and args.client not in names:
        raise ECOSInputError(f"--client {args.client} is not one of the clients in --proxy {args.proxy}: {', '.join(names)}.")
    client = args.client if args.client is not None else names[0] if len(names) == 1 else None
    # the messages carry ε and σ; the client's mechanism and subsample rate are what the two sides agreed (defaults: train.py's)
    scores = [ScoreMechanism.from_settings(next(c["epsilon"] for c in clients if c["scores_file"] == client), args.score_mechanism, args.delta)] if client is not None else []
    eps_labels = label_epsilon(msg.sigma, msg.n_samples, args.delta, sampling_rate=args.sampling_rate)
    eps_exchange = label_epsilon(msg.sigma, msg.n_samples, args.delta, scores, sampling_rate=args.sampling_rate) if client is not None else None
    released = msg.labels.astype(np.int64)
    labels = neighbour_vote(down.features, released, args.cloud_vote_k)  # train.py's clean-up, post-processing (no ε)
    out = {
        "format": "ecos-proxy-labels/1",
        "proxy_set_sha1": proxy["proxy_set_sha1"],
        "proxy_targets_sha1": sha1_indices(labels),  # train.py's name for the same digest of the same labels
        "indices": [int(i) for i in indices],
        "paths": proxy.get("paths"),
        "root": proxy.get("root"),
        "labels": [int(v) for v in labels],
        "labels_released": [int(v) for v in released],  # as the client sent them, before the cloud's vote
        "cloud_vote_k": args.cloud_vote_k,
        "n_labelled": int((labels >= 0).sum()),
        "n_dropped": int((labels < 0).sum()),
        "sigma": msg.sigma,
        "delta": args.delta,
        "client": client,
        "epsilon_labels": eps_labels if np.isfinite(eps_labels) else None,
        "epsilon_exchange": None if eps_exchange is None or not np.isfinite(eps_exchange) else eps_exchange,
        "bytes_up": msg.nbytes,
    }
    write_json_atomic(args.out, out)
    changed = int((labels != released).sum())
    say(f"wrote {args.out}: {out['n_labelled']} labelled, {out['n_dropped']} dropped of {len(labels)} proxy samples"
        + (f"; the cloud's {args.cloud_vote_k}-neighbour vote changed {changed} of them" if args.cloud_vote_k else ""),
        f"privacy of the labels ({msg.n_samples} Private-kNN answers, σ = {msg.sigma}, subsample rate γ = {args.sampling_rate:g}): {eps_text(eps_labels)}, δ = {args.delta:g} (RDP; dp-accounting)")
    if client is not None:
        say(f"privacy of {client}'s whole exchange (scores + labels): {eps_text(eps_exchange)}, δ = {args.delta:g}")
    else:
        say("several clients in the proxy set: pass --client SCORES_FILE to compose the labels with that client's scores")
    return 0


# --------------------------------------------------------------------------- simulation helper


def _data_text(text) -> str:
    """A `folders` message, with the config keys it names spelled as this command's flags."""
    text = str(text)
    for key, flag in (("data.root", "--root"), ("data.client_domain", "--client-domain"), ("data.client_fraction", "--client-fraction"),
                      ("data.test_fraction", "--test-fraction"), ("data.max_per_domain", "--max-per-domain")):
        text = text.replace(key, flag)
    return text


def cmd_split_folders(args) -> int:
    from ecos_pl.data.folders import split_folders

    refuse_overwrite([("--client-dir", args.client_dir), ("--pool-list", args.pool_list)], [("--root", f"{args.root}/")])
    refuse_overwrite([("--pool-list", args.pool_list)], [("--client-dir", f"{args.client_dir}/")])

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            splits = split_folders(args.root, args.client_domain, args.client_fraction, args.test_fraction, args.seed, args.max_per_domain)
    except ECOSInputError as err:
        raise ECOSInputError(_data_text(err)) from None
    finally:
        for w in caught:  # skipped files and folders, named as this command's flags name them
            warnings.warn(_data_text(w.message), w.category, stacklevel=1)
    client_dir = Path(args.client_dir).expanduser()
    if client_dir.exists() and (not client_dir.is_dir() or any(client_dir.iterdir())):
        raise ECOSInputError(f"--client-dir {args.client_dir} already exists and is not an empty folder; give a new one.")
    root = splits.root
    train = splits.paths["client_train"]

    def build(folder: Path) -> None:
        for path in train:  # <client_domain>/<class>/<file> -> <class>/<file>
            rel = Path(*Path(path).parts[1:])
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / path, folder / rel)

    comment = (f"pool of {root} (ecos-cloud split-folders --client-domain {args.client_domain} --seed {args.seed} "
               f"--client-fraction {args.client_fraction} --test-fraction {args.test_fraction}); paths relative to it")
    replace_dir(build, client_dir)  # the two outputs as one: the pool list only after the client's folder, which goes if it fails
    try:
        write_bytes_atomic(args.pool_list, path_list_text(splits.paths["pool"], comment).encode("utf-8"))
    except BaseException:
        shutil.rmtree(client_dir, ignore_errors=True)
        raise
    say(f"wrote {args.pool_list}: the pool, {len(splits.paths['pool']):,} images (for the cloud: --pool {root} --pool-list {args.pool_list})",
        f"copied the client's training split, {len(train):,} images in {len(splits.class_names)} class folders, to {client_dir}/ "
        f"(for the client: --images {client_dir}); its test split ({len(splits.paths['client_test'])} images) stays in the tree")
    return 0


# --------------------------------------------------------------------------- parser


EPILOG = """\
examples (a folders tree split as train.py does, then the two parties; files are handed over by hand):
  ecos-cloud split-folders --root tree --client-domain photo --seed 1 --pool-list pool.txt --client-dir client_images
  ecos-cloud compress --pool tree --pool-list pool.txt --centroids 64 --seed 1 --out-dir cloud
  ecos-client score --centroids cloud/centroids.ecos --phi cloud/phi.safetensors --images client_images --out scores.ecos
  ecos-cloud select --state cloud --scores scores.ecos --budget 400 --out proxy.json
"""


def build_parser():
    parser, sub = program_parser(PROG, "The cloud's side of ECOS: compress the pool, turn clients' scores into a proxy set.", EPILOG)

    p = add_command(sub, "compress", "pool -> centroids.ecos (down to the client), phi.safetensors, state/",
                    "Extract φ of every pool image (or take given features), cluster them into R k-means centroids, and write\n"
                    "  DIR/centroids.ecos    the message for the client (R·d floats + a 32-byte header)\n"
                    "  DIR/phi.safetensors   φ's weights, which the client needs to score its images (when the cloud ran φ)\n"
                    "  DIR/state/            the cloud's own state for `select` (pool features, clusters, settings, file list)",
                    "examples:\n"
                    "  ecos-cloud compress --pool tree --pool-list pool.txt --centroids 64 --seed 1 --out-dir cloud\n"
                    "  ecos-cloud compress --pool images/ --phi pca --centroids 256 --out-dir cloud\n"
                    "  ecos-cloud compress --features pool.npy --centroids 64 --out-dir cloud")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pool", metavar="FOLDER", help="folder of pool images (every image under it, sorted by path, unless --pool-list)")
    src.add_argument("--features", metavar="POOL.npy", help="the pool's φ features, float [N, d], computed elsewhere")
    p.add_argument("--pool-list", metavar="FILE", help="text file of image paths inside --pool, one a line (a name a line cannot hold "
                   "as it is, e.g. one with a newline, as a JSON string; # comments): the pool and its order")
    names = ", ".join(phi_preset_names()) or "random_cnn, pca"
    p.add_argument("--phi", metavar="NAME|FILE", help=f"φ: a preset of conf/phi ({names}; default {DEFAULTS['phi']}, as train.py) or a φ file")
    p.add_argument("--image-size", type=positive_int("--image-size"), default=None, help=f"decode images at this size (default {DEFAULTS['image_size']}, as conf/data/folders.yaml, or the φ file's)")
    add_max_pixels(p)
    p.add_argument("--centroids", "-R", type=positive_int("--centroids"), required=True, metavar="R", help="number of k-means centroids R")
    p.add_argument("--label-phi", metavar="NAME|FILE|none", default=DEFAULTS["label_phi"],
                   help="pseudo_label's labelling φ (a preset or a φ file), fitted on the pool, written as label_phi.safetensors; "
                        "none: the label round votes in φ (default %(default)s, as train.py's scenario=pseudo_label)")
    p.add_argument("--seed", type=nonneg_int("--seed"), default=DEFAULTS["seed"], help="seed of φ's initialisation and of k-means (train.py's seed; default %(default)s)")
    p.add_argument("--niter", type=positive_int("--niter"), default=CLUSTERING.niter, help="k-means iterations (default %(default)s)")
    p.add_argument("--radii", action="store_true", help="also send each cluster's radius; far client samples then do not vote")
    p.add_argument("--radius-quantile", type=fraction("--radius-quantile"), default=CLUSTERING.radius_quantile, help="quantile of member distances that defines a radius (default %(default)s)")
    p.add_argument("--temperature", type=positive_float("--temperature"), default=ALLOCATION.temperature, help="τ in b_r ∝ v_r^(1/τ), kept for select (default %(default)s)")
    p.add_argument("--max-points-per-centroid", type=positive_int("--max-points-per-centroid"), default=CLUSTERING.max_points_per_centroid, help="k-means subsample per centroid (default %(default)s)")
    p.add_argument("--out-dir", required=True, metavar="DIR", help="where centroids.ecos, phi.safetensors and state/ go")
    finish_command(p, cmd_compress)

    p = add_command(sub, "select", "state + scores.ecos of one or more clients -> proxy.json",
                    "Spend the budget where the clients' scores are (their scores summed: one proxy set for the fleet),\n"
                    "k-center greedy inside each cluster. Writes proxy.json: pool indices, file paths (when the pool was a\n"
                    "folder), the allocation per cluster, bytes, and each client's ε.",
                    "examples:\n"
                    "  ecos-cloud select --state cloud --scores scores.ecos --budget 400 --out proxy.json\n"
                    "  ecos-cloud select --state cloud --scores a.ecos b.ecos c.ecos --budget 1200 --out proxy.json")
    p.add_argument("--state", required=True, metavar="DIR", help="the --out-dir of compress (or its state/ folder)")
    p.add_argument("--scores", required=True, nargs="+", metavar="SCORES.ecos", help="one scores file per client")
    p.add_argument("--budget", "-B", required=True, type=positive_int("--budget"), metavar="B", help="proxy-set size")
    p.add_argument("--temperature", type=positive_float("--temperature"), default=None, help="override τ (default: compress's)")
    p.add_argument("--client-cap", type=positive_float("--client-cap", allow_none=True, at_least=1.0), default=ALLOCATION.client_cap, metavar="F",
                   help="no client's scores weigh more than F times the median of the other clients' totals (the samples they "
                        "claim); none (or 0): no cap (default %(default)s)")
    p.add_argument("--allow-untagged", action="store_true", help="use scores files that carry no tag (nothing checks what they answer)")
    finish_command(p, cmd_select, out="proxy.json")

    p = add_command(sub, "proxy-features", "pseudo_label: state + proxy.json -> proxy_features.ecos (down to the client)",
                    "Write φ of the selected proxy samples as a message for the client to label (B·d floats + header).",
                    "example:\n  ecos-cloud proxy-features --state cloud --proxy proxy.json --out proxy_features.ecos")
    p.add_argument("--state", required=True, metavar="DIR")
    p.add_argument("--proxy", required=True, metavar="proxy.json")
    finish_command(p, cmd_proxy_features, out="proxy_features.ecos")

    p = add_command(sub, "labels", "pseudo_label: labels.ecos from the client -> proxy_labels.json",
                    "Check the client's labels against the proxy set and join them with its indices and paths.",
                    "example:\n  ecos-cloud labels --state cloud --proxy proxy.json --labels labels.ecos --out proxy_labels.json")
    p.add_argument("--state", required=True, metavar="DIR")
    p.add_argument("--proxy", required=True, metavar="proxy.json")
    p.add_argument("--labels", required=True, metavar="labels.ecos")
    p.add_argument("--client", metavar="SCORES_FILE", help="which client labelled (its scores file as named in proxy.json), to compose its ε")
    p.add_argument("--sampling-rate", type=positive_float("--sampling-rate"), default=LABELLING.sampling_rate, help="the client's Private-kNN subsample rate γ, for its ε (default %(default)s, ecos-client's)")
    p.add_argument("--score-mechanism", choices=("gaussian", "laplace"), default=SCORE_PRIVACY.mechanism, help="how the client privatised its scores (default %(default)s)")
    p.add_argument("--delta", type=positive_float("--delta", below_one=True), default=LABELLING.delta, help="δ at which ε is reported (default %(default)s)")
    p.add_argument("--cloud-vote-k", type=nonneg_int("--cloud-vote-k"), default=CLOUD_VOTE_K,
                   help="re-vote each label among its k nearest labelled proxy samples in the proxy features' φ (free post-processing; 0: the client's labels as sent; default %(default)s, train.py's)")
    p.add_argument("--allow-untagged", action="store_true", help="use a labels file that carries no tag (nothing checks what it answers)")
    finish_command(p, cmd_labels, out="proxy_labels.json")

    p = add_command(sub, "split-folders", "simulation: split a folders tree as train.py does (pool list + client folder)",
                    "Split a <root>/<domain>/<class>/<image> tree with the same function and seed as train.py's `folders` data:\n"
                    "write the pool's file list (for compress --pool ROOT --pool-list) and copy the client's training split to\n"
                    "a folder of its own, <class>/<image> (for ecos-client --images). In a real deployment neither exists: the\n"
                    "cloud has its pool and the client its images.",
                    "example:\n  ecos-cloud split-folders --root tree --client-domain photo --seed 1 --pool-list pool.txt --client-dir client_images")
    p.add_argument("--root", required=True, metavar="TREE")
    p.add_argument("--client-domain", required=True, metavar="DOMAIN")
    p.add_argument("--client-fraction", type=float, default=DEFAULTS["client_fraction"], help="share of the client domain's images that the client holds (default %(default)s)")
    p.add_argument("--test-fraction", type=float, default=DEFAULTS["test_fraction"], help="share kept for the client's test split (default %(default)s)")
    p.add_argument("--seed", type=nonneg_int("--seed"), default=DEFAULTS["seed"], help="train.py's seed (default %(default)s)")
    p.add_argument("--max-per-domain", type=positive_int("--max-per-domain"), default=None)
    p.add_argument("--pool-list", required=True, metavar="pool.txt")
    p.add_argument("--client-dir", required=True, metavar="FOLDER")
    finish_command(p, cmd_split_folders)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The program: `argv` (default: the command line) -> exit code."""
    return run_program(PROG, build_parser(), argv)
