"""`ecos-client`: the client's side of ECOS as a program. Its images never leave it; only the files it writes do.

    ecos-client score   centroids.ecos + own images (or features) -> scores.ecos  (R numbers)
    ecos-client label   proxy_features.ecos + own labelled images -> labels.ecos  (pseudo_label: B labels)

Each prints the ε of what it released (the scores: Gaussian at ε = 0.58, δ = 1e-5 by default, as
train.py; the labels: Private-kNN, composed with the scores by dp-accounting's RDP accountant) and
writes exactly one message file: R scores, or one label per proxy sample, with a 32-byte header.
Without --seed the noise (and Private-kNN's subsamples) come from the OS's CSPRNG.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

from ecos_pl.cli.common import (
    program_parser,
    finish_command,
    add_command,
    add_max_pixels,
    read_images,
    existing_dir,
    existing_file,
    fraction,
    list_images,
    load_phi,
    nonneg_int,
    positive_float,
    positive_int,
    read_features,
    read_message,
    refuse_overwrite,
    run_program,
    say,
    scores_privacy_line,
    write_bytes_atomic,
    eps_text,
)
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.features import is_l2_normalized, unit_rows
from ecos_pl.protocol.messages import (
    HEADER_BYTES,
    CentroidsMessage,
    LabelsMessage,
    ProxyFeaturesMessage,
    ScoresMessage,
    answer_tag,
    phi_tag,
)
from ecos_pl.protocol.parties import ECOSClient
from ecos_pl.protocol.score import check_centroids
from ecos_pl.protocol.settings import Labelling, ScorePrivacy

PROG = "ecos-client"
PHI_FILE = "phi.safetensors"
#: the labelling φ the cloud sends with the proxy features (pseudo_label; train.py's scenario.labels.phi)
LABEL_PHI_FILE = "label_phi.safetensors"
#: the defaults are train.py's: one settings object per protocol part (`ecos_pl.protocol.settings`)
LABELLING, SCORE_PRIVACY = Labelling(), ScorePrivacy()


def _refuse_overwrite(args, message_flag: str, *others: str) -> None:
    """--out is none of the files this command reads (the message, φ given or next to it, features, `others`' flags)."""
    message = getattr(args, message_flag.lstrip("-").replace("-", "_"))
    folder = Path(message).expanduser().parent
    phis = [("--phi", args.phi)] if args.phi is not None else [("--phi", folder / n) for n in (PHI_FILE, LABEL_PHI_FILE)]
    inputs = [(message_flag, message), *phis, ("--features", args.features)]
    refuse_overwrite([("--out", args.out)], inputs + [(flag, getattr(args, flag.lstrip("-").replace("-", "_"))) for flag in others])


def _client_phi(args, message, message_flag: str, default_names: tuple[str, ...] = (PHI_FILE,)):
    """φ for --images: --phi, else the first of `default_names` next to the message; checked against the message's φ tag."""
    explicit = args.phi is not None
    folder = Path(getattr(args, message_flag.lstrip("-").replace("-", "_"))).expanduser().parent
    path = Path(args.phi) if explicit else next((folder / n for n in default_names if (folder / n).is_file()), folder / default_names[-1])
    if not explicit and not path.is_file():
        raise ECOSInputError(f"--images needs φ: pass --phi FILE (the cloud writes it as {' or '.join(default_names)} next to {message_flag}'s file).")
    phi, image_size = load_phi(path, "--phi")
    if args.image_size is not None and args.image_size != image_size:
        raise ECOSInputError(f"--image-size {args.image_size} differs from the image size {image_size} that --phi {path} was saved with.")
    mine = phi_tag(phi.fingerprint())
    if message.tag is None:
        if not explicit:
            raise ECOSInputError(f"{message_flag} carries no φ tag (the cloud clustered features it was given), so φ cannot be checked; pass --phi FILE to use one anyway, or --features.")
        warnings.warn(f"{message_flag} carries no φ tag; trusting --phi {path} without a check.", stacklevel=1)
    elif message.tag != mine:
        raise ECOSInputError(
            f"{message_flag} was computed with another φ (tag {message.tag.hex()}) than --phi {path} (tag {mine.hex()}); "
            "use the φ file that came with it."
        )
    return phi, image_size


def _client_features(args, message, message_flag: str, *, labelled: bool = False):
    """(unit features [N, d], labels or None, class names or None, content keys [N]) of the client's own data.

    The keys (`content_keys` of each sample's pixels, or of its feature row) make seeded
    Private-kNN subsamples independent of the order the files are listed in.
    """
    from ecos_pl.protocol.label import content_keys

    if args.features is not None:
        if args.phi is not None:
            raise ECOSInputError("--phi goes with --images; with --features the features are already computed.")
        x = read_features(args.features, "--features", dim=message.dim)
        if message.tag is not None:
            say(f"φ not checked: --features are taken as they are; they must come from the φ with tag {message.tag.hex()}.")
        return x, None, None, content_keys(x)
    phi, image_size = _client_phi(args, message, message_flag, (LABEL_PHI_FILE, PHI_FILE) if labelled else (PHI_FILE,))
    root = existing_dir(args.images, "--images")
    paths = list_images(root, "--images")
    if labelled:
        loose = [p for p in paths if "/" not in p]
        if loose:
            warnings.warn(f"--images {root}: {len(loose)} image(s) directly in the folder have no class folder and do not vote.", stacklevel=1)
        paths = [p for p in paths if "/" in p]
        if not paths:
            raise ECOSInputError(f"--images {root} has no class folders with images (<class>/<image>); label needs labelled images.")
    images, paths = read_images(root, paths, image_size, "--images", args)
    say(f"φ: {type(phi).__name__} on {len(images):,} own images under {root}")
    x = unit_rows(phi.transform(images), f"--images {root} features", dim=message.dim)
    if not labelled:
        return x, None, None, None
    classes = [p.split("/", 1)[0] for p in paths]
    names = sorted(set(classes))
    index = {c: i for i, c in enumerate(names)}
    return x, np.asarray([index[c] for c in classes], dtype=np.int64), names, content_keys(images)


# --------------------------------------------------------------------------- score


def cmd_score(args) -> int:
    _refuse_overwrite(args, "--centroids")
    message, _ = read_message(args.centroids, CentroidsMessage, "--centroids", check_centroids)
    features, _, _, _ = _client_features(args, message, "--centroids")
    client = ECOSClient(features, epsilon=args.epsilon, mechanism=args.mechanism, delta=args.delta, seed=args.seed,
                        use_radii=not args.ignore_radii)
    plain = client.score(message)
    reply = ScoresMessage(plain.scores, plain.epsilon, tag=answer_tag(message))
    data = reply.to_bytes()
    write_bytes_atomic(args.out, data)
    say(f"scored {client.n_samples:,} own samples against R={message.n_centroids} centroids "
        f"({client.score_macs:,} multiply-adds, {client.score_seconds:.3f} s)",
        f"released: {args.out}: {len(data)} bytes = {HEADER_BYTES} + 4·R; R scores and nothing per sample",
        scores_privacy_line(client.privacy))
    if args.epsilon is not None and args.seed is not None:
        say("note: --seed makes the noise reproducible; whoever knows the seed can remove it. Leave --seed out for a real release.")
    return 0


# --------------------------------------------------------------------------- label


def _unit_proxy_features(message: ProxyFeaturesMessage) -> ProxyFeaturesMessage:
    """Proxy features are φ's features of pool samples, so every row is unit-norm (or zero)."""
    if not is_l2_normalized(message.features):
        raise ECOSInputError("proxy features message holds rows that are not unit-norm; φ's features always are.")
    return message


def cmd_label(args) -> int:
    from ecos_pl.protocol.label import PseudoLabeller, label_epsilon
    from ecos_pl.protocol.privacy import ScoreMechanism, check_budget

    _refuse_overwrite(args, "--proxy-features", "--labels", "--scores")
    message, _ = read_message(args.proxy_features, ProxyFeaturesMessage, "--proxy-features", _unit_proxy_features)
    if args.features is not None and args.labels is None:
        raise ECOSInputError("--features needs --labels (one class index per row) to label the proxy set.")
    if args.features is None and (args.labels is not None or args.num_classes is not None):
        raise ECOSInputError("--labels and --num-classes go with --features; with --images the class folders are the labels.")
    score_release = None
    if args.scores is not None:
        mine, _ = read_message(args.scores, ScoresMessage, "--scores")
        # the file records ε; how it was privatised is this program's --mechanism/--delta (as when it was scored)
        score_release = ScoreMechanism.from_settings(mine.epsilon, args.mechanism, args.delta)
    features, labels, names, keys = _client_features(args, message, "--proxy-features", labelled=True)
    if labels is None:
        path = existing_file(args.labels, "--labels")
        try:
            labels = np.load(path, allow_pickle=False)
        except Exception as err:  # noqa: BLE001
            raise ECOSInputError(f"--labels {args.labels} is not a readable .npy array ({type(err).__name__}).") from None
        if labels.ndim != 1 or len(labels) != len(features) or not np.issubdtype(labels.dtype, np.integer):
            raise ECOSInputError(f"--labels {args.labels} must hold one integer class per row of --features ({len(features)}), got {labels.dtype} {labels.shape}.")
        if (labels < 0).any():
            raise ECOSInputError(f"--labels {args.labels} holds negative classes; every labelled sample needs a class >= 0.")
        num_classes = int(labels.max()) + 1 if args.num_classes is None else args.num_classes
        if labels.max() >= num_classes:
            raise ECOSInputError(f"--labels {args.labels} holds class {int(labels.max())}, not below --num-classes {num_classes}.")
    else:
        num_classes = len(names)
    if args.k > len(features):
        raise ECOSInputError(f"--k {args.k} is larger than the number of labelled client samples ({len(features)}).")
    settings = Labelling(k=args.k, sigma=args.sigma, sampling_rate=args.sampling_rate, threshold=args.threshold,
                         screen_sigma=args.screen_sigma, delta=args.delta)
    eps = label_epsilon(args.sigma, message.n_samples, args.delta, **settings.accounting)
    total = None if score_release is None else label_epsilon(args.sigma, message.n_samples, args.delta, [score_release], **settings.accounting)
    check_budget(eps if total is None else total, args.max_epsilon, f"labelling {message.n_samples} proxy samples")
    labeller = PseudoLabeller.from_settings(features, labels, num_classes, settings, seed=args.seed, sample_keys=keys)
    plain = labeller.label(message)
    reply = LabelsMessage(plain.labels, plain.sigma, tag=answer_tag(message))
    data = reply.to_bytes()
    write_bytes_atomic(args.out, data)
    kept = int((reply.labels >= 0).sum())
    say(f"labelled {reply.n_samples} proxy samples by a {args.k}-NN vote over {len(features):,} own samples "
        f"({kept} labelled, {reply.n_samples - kept} abstained) in {labeller.seconds:.3f} s")
    if names is not None:
        say("labels are indices into your class folders: " + ", ".join(f"{i}={n}" for i, n in enumerate(names)))
    say(f"released: {args.out}: {len(data)} bytes = {HEADER_BYTES} + 2·B; one class (or -1) per proxy sample and nothing else")
    say(f"privacy of the labels ({reply.n_samples} Private-kNN answers, subsample rate γ = {args.sampling_rate:g}, σ = {reply.sigma}): "
        f"{eps_text(eps)}, δ = {args.delta:g} (RDP; dp-accounting)")
    if total is not None:
        say(f"privacy of your whole exchange (scores {eps_text(score_release.epsilon)} + labels): {eps_text(total)}, δ = {args.delta:g}")
    else:
        say("pass --scores YOUR_SCORES.ecos to compose this with the ε of the scores you released.")
    return 0


# --------------------------------------------------------------------------- parser

EPILOG = """\
examples:
  ecos-client score --centroids cloud/centroids.ecos --phi cloud/phi.safetensors --images client_images --out scores.ecos
  ecos-client score --centroids centroids.ecos --features mine.npy --epsilon 1 --out scores.ecos
  ecos-client label --proxy-features proxy_features.ecos --phi cloud/phi.safetensors --images client_images \\
                    --scores scores.ecos --out labels.ecos
"""


def _add_own_data(p, *, labelled: bool) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="FOLDER", help="your images (every image under it)" + ("; <class>/<image>: the class folders are the labels" if labelled else ""))
    src.add_argument("--features", metavar="CLIENT.npy", help="your φ features, float [N, d], computed with the cloud's φ")
    p.add_argument("--phi", metavar="FILE", help=f"φ file from the cloud (default: next to the message file, {LABEL_PHI_FILE + ' or ' if labelled else ''}{PHI_FILE})")
    p.add_argument("--image-size", type=positive_int("--image-size"), default=None, help="must equal the φ file's (default: the φ file's)")
    add_max_pixels(p)


def rate(name: str):
    """A sampling rate in (0, 1], refused by argparse with the flag's name."""
    import argparse

    from ecos_pl.protocol.privacy import check_rate

    def parse(text: str) -> float:
        try:
            return check_rate(text, name)
        except ECOSInputError as err:
            raise argparse.ArgumentTypeError(str(err).rstrip(".")) from None

    return parse


def _add_score_privacy(p) -> None:
    p.add_argument("--mechanism", choices=("gaussian", "laplace"), default=SCORE_PRIVACY.mechanism, help="noise on the counts (default %(default)s)")
    p.add_argument("--epsilon", type=positive_float("--epsilon", allow_none=True), default=SCORE_PRIVACY.epsilon,
                   help="ε of the release (default %(default)s, the paper's); none: exact counts, no guarantee")
    p.add_argument("--delta", type=positive_float("--delta", below_one=True), default=SCORE_PRIVACY.delta, help="δ of the Gaussian mechanism (default %(default)s)")


def build_parser():
    parser, sub = program_parser(PROG, "The client's side of ECOS: answer the cloud with R scores (and, for pseudo_label, labels); nothing else leaves.", EPILOG)

    p = add_command(sub, "score", "centroids.ecos + your data -> scores.ecos (R numbers up)",
                    "Each of your samples votes for its nearest centroid; the R vote counts, with Gaussian noise calibrated to\n"
                    "(ε, δ) by dp-accounting (or Laplace(1/ε)), clipped at 0, are written as scores.ecos: 32 + 4·R bytes,\n"
                    "nothing per sample. Defaults are train.py's: Gaussian, ε = 0.58, δ = 1e-5.",
                    "examples:\n"
                    "  ecos-client score --centroids cloud/centroids.ecos --phi cloud/phi.safetensors --images client_images --out scores.ecos\n"
                    "  ecos-client score --centroids centroids.ecos --features mine.npy --epsilon 1 --out scores.ecos")
    p.add_argument("--centroids", required=True, metavar="centroids.ecos")
    _add_own_data(p, labelled=False)
    _add_score_privacy(p)
    p.add_argument("--seed", type=nonneg_int("--seed"), default=None, help="seed of the noise (reproducible runs only; default: fresh randomness)")
    p.add_argument("--ignore-radii", action="store_true", help="let every sample vote even if the centroids came with radii")
    finish_command(p, cmd_score, out="scores.ecos")

    p = add_command(sub, "label", "pseudo_label: proxy_features.ecos + your labelled data -> labels.ecos (B labels up)",
                    "Label each proxy sample by the vote of its k nearest labelled samples of yours, with N(0, σ²) noise on the\n"
                    "vote histogram (Gaussian noisy max), abstaining (-1) when the noisy top vote is under threshold·k.\n"
                    "The vote is taken in the labelling φ the cloud sent (label_phi.safetensors, HOG by default). With --seed the\n"
                    "subsamples depend on each image's pixels, not on the order of the files: the labels are train.py's.\n"
                    "Writes labels.ecos: 32 + 2·B bytes. Defaults are train.py's (ecos_pl.protocol.settings.Labelling).",
                    "examples:\n"
                    "  ecos-client label --proxy-features proxy_features.ecos --phi cloud/phi.safetensors --images client_images --out labels.ecos\n"
                    "  ecos-client label --proxy-features pf.ecos --features mine.npy --labels mine_labels.npy --sigma 4 --out labels.ecos")
    p.add_argument("--proxy-features", required=True, metavar="proxy_features.ecos")
    _add_own_data(p, labelled=True)
    p.add_argument("--labels", metavar="LABELS.npy", help="with --features: one class index per row")
    p.add_argument("--num-classes", type=positive_int("--num-classes"), default=None, help="with --features (default: largest label + 1)")
    p.add_argument("--k", type=positive_int("--k"), default=LABELLING.k, help="neighbours that vote (default %(default)s)")
    p.add_argument("--sigma", type=positive_float("--sigma", allow_none=True), default=LABELLING.sigma, help="Gaussian noise on each vote histogram; none: exact votes, not private (default %(default)s)")
    p.add_argument("--threshold", type=fraction("--threshold", allow_none=True), default=LABELLING.threshold, help="abstain under threshold·k noisy votes; none: never (default %(default)s)")
    p.add_argument("--sampling-rate", type=rate("--sampling-rate"), default=LABELLING.sampling_rate,
                   help="γ: each query votes in a fresh subsample holding each of your samples with this probability (default %(default)s)")
    p.add_argument("--screen-sigma", type=positive_float("--screen-sigma", allow_none=True), default=LABELLING.screen_sigma,
                   help="screen on the top vote + N(0, σ₁²) instead of the answer's own noise (accounted; default: none)")
    p.add_argument("--mechanism", choices=("gaussian", "laplace"), default=SCORE_PRIVACY.mechanism, help="how --scores were privatised (default %(default)s)")
    p.add_argument("--delta", type=positive_float("--delta", below_one=True), default=LABELLING.delta, help="δ at which ε is reported (default %(default)s)")
    p.add_argument("--max-epsilon", type=positive_float("--max-epsilon", allow_none=True), default=None, help="refuse to release if the exchange would cost more (default: no budget)")
    p.add_argument("--scores", metavar="scores.ecos", help="the scores you released earlier, to compose the whole exchange's ε")
    p.add_argument("--seed", type=nonneg_int("--seed"), default=None, help="seed of the noise (reproducible runs only; default: fresh randomness)")
    finish_command(p, cmd_label, out="labels.ecos")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The program: `argv` (default: the command line) -> exit code."""
    return run_program(PROG, build_parser(), argv)


if __name__ == "__main__":  # python -m ecos_pl.cli.client
    sys.exit(main())
