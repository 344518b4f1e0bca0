"""`ecos-cloud select`, `proxy-features` and `labels`: the cloud's halves of ECOS's round and of the label round, run
by the same driver and strategies as train.py's (`ecos_pl.protocol.driver`), the clients' answers being the files given.

`compress` ran the sampler's first half and saved it (`cloud_state`); `select` resumes it with the
scores files (`AnsweredExchange`); `proxy-features` is the label round's first half, `labels` its second.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from ecos_pl.cli.cloud_state import PROXY_FORMAT, CloudState, _state_inputs, load_proxy, load_state
from ecos_pl.cli.common import eps_text, read_message, refuse_overwrite, say, sha1_indices, write_bytes_atomic, write_json_atomic
from ecos_pl.protocol import driver
from ecos_pl.protocol.errors import ECOSInputError, check_count
from ecos_pl.protocol.exchange import AnsweredExchange
from ecos_pl.protocol.labels import ClientKNNLabels, LabelRequest
from ecos_pl.protocol.messages import HEADER_BYTES, LabelsMessage, ScoresMessage, answer_tag
from ecos_pl.protocol.samplers import ECOSSampler, Task
from ecos_pl.protocol.settings import Clustering, Labelling


def _client_entry(path: str, msg: ScoresMessage) -> dict:
    return {
        "scores_file": path,
        "epsilon": msg.epsilon,
        "differentially_private": msg.epsilon is not None,
        "bytes_up": msg.nbytes,
        "tag": None if msg.tag is None else msg.tag.hex(),
    }


def _read_scores(args, state: CloudState) -> tuple[list[ScoresMessage], list[dict]]:
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
    return replies, clients


def cmd_select(args) -> int:
    refuse_overwrite([("--out", args.out)], [*_state_inputs(args.state), *(("--scores", s) for s in args.scores)])
    state = load_state(args.state)
    n = len(state.pool_features)
    budget = check_count(args.budget, "--budget", high=n, high_name="the pool size")
    replies, clients = _read_scores(args, state)
    overrides = {"client_cap": args.client_cap, **({} if args.temperature is None else {"temperature": args.temperature})}
    cloud = state.cloud(**overrides)
    sampler = ECOSSampler(Clustering.from_mapping(state.settings["clustering"]), cloud.allocation_settings)
    # compress ran the sampler's first half; the scores files are the round's answers
    task = Task(state.pool_features, budget, int(state.settings["seed"]), cloud=cloud)
    selection = driver.resume(sampler, AnsweredExchange(replies), state.centroids, task)
    indices, seconds, total = selection.indices, selection.timings["select"], cloud.fleet_scores
    for entry, msg, scale in zip(clients, replies, cloud.client_scales):
        entry["cap_scale"] = scale
        if scale is not None:
            warnings.warn(
                f"--scores {entry['scores_file']} claims {msg.scores.sum():.6g} samples, and more than --client-cap {args.client_cap:g} "
                f"times the other clients' median total or largest count; its scores count {scale:.3g} of their value.",
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
        "bytes": {"down_per_client": state.centroids.nbytes, "up": selection.bytes_up},
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


def _label_request(state: CloudState, indices: np.ndarray, score_releases: list | None = None) -> LabelRequest:
    """The proxy set in the labelling φ when the cloud ran one (train.py's label round), else in the protocol's φ."""
    if state.pool_label_features is not None:
        features, tag = state.pool_label_features[indices], bytes.fromhex(state.settings["label_phi"]["tag"])
    else:
        features, tag = state.pool_features[indices], state.phi_tag
    return LabelRequest(proxy_features=lambda: features, score_releases=score_releases or [], tag=tag)


def cmd_proxy_features(args) -> int:
    refuse_overwrite([("--out", args.out)], [*_state_inputs(args.state), ("--proxy", args.proxy)])
    state = load_state(args.state)
    proxy = load_proxy(args.proxy, state)
    msg, _ = ClientKNNLabels().configure(request=_label_request(state, proxy["indices"]))  # the label round's first half
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
    clients = proxy["clients"]
    names = [c["scores_file"] for c in clients]
    if args.client is not None and args.client not in names:
        raise ECOSInputError(f"--client {args.client} is not one of the clients in --proxy {args.proxy}: {', '.join(names)}.")
    client = args.client if args.client is not None else names[0] if len(names) == 1 else None
    # the messages carry ε and σ; the client's mechanism and subsample rate are what the two sides agreed (defaults: train.py's)
    scores = [ScoreMechanism.from_settings(next(c["epsilon"] for c in clients if c["scores_file"] == client), args.score_mechanism, args.delta)] if client is not None else []
    labeller = ClientKNNLabels(settings=Labelling(sigma=msg.sigma, sampling_rate=args.sampling_rate, delta=args.delta),
                               cloud_vote_k=args.cloud_vote_k)
    down, round_state = labeller.configure(request=_label_request(state, indices, scores))
    expected = answer_tag(down)
    if msg.tag is None and not args.allow_untagged:
        raise ECOSInputError(f"--labels {args.labels} carries no tag, so nothing shows it answers this proxy set; pass --allow-untagged to use it unchecked.")
    if msg.tag is not None and msg.tag != expected:
        raise ECOSInputError(f"--labels {args.labels} answers other proxy features (tag {msg.tag.hex()}) than this proxy set's (tag {expected.hex()}).")
    # the label round's second half, the labels file being its answer (the cloud's neighbour vote: post-processing, no ε)
    labels, report = driver.resume(labeller, AnsweredExchange([msg]), down, round_state)
    released = msg.labels.astype(np.int64)
    eps_labels, eps_exchange = report["label_epsilon"], report["exchange_epsilon"] if client is not None else None
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
