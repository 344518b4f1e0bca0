"""`ecos-cloud`: the cloud's side of ECOS as a program. It never sees a client's data, only message files.

    ecos-cloud compress       pool images (or features) -> DIR/centroids.ecos, DIR/phi.safetensors, DIR/state/
    ecos-cloud select         DIR/state + one scores.ecos per client -> proxy.json (one proxy set for the fleet)
    ecos-cloud proxy-features DIR/state + proxy.json -> proxy_features.ecos (pseudo_label: the client labels them)
    ecos-cloud labels         DIR/state + proxy.json + labels.ecos -> proxy_labels.json (after the cloud's neighbour vote)
    ecos-cloud split-folders  simulation helper: split a folders tree exactly as train.py does

The computation is the library's: the same strategies and driver as train.py's
(`ecos_pl.protocol.driver`); here the exchange is files (the message written by one step,
the clients' answers read by the next). This module is the parser; the commands live in
`cloud_compress` (compress, split-folders) and `cloud_round` (select, proxy-features, labels),
the state between them in `cloud_state`. Every default is train.py's
(`ecos_pl.protocol.settings`, conf/train.yaml), so the same features, seed and settings give
the same proxy set, and with the labelling φ (HOG) the same pseudo-labels.
"""

from __future__ import annotations

from ecos_pl.cli.cloud_compress import cmd_compress, cmd_split_folders
from ecos_pl.cli.cloud_round import cmd_labels, cmd_proxy_features, cmd_select
from ecos_pl.cli.cloud_state import ALLOCATION, CLUSTERING, LABELLING, SCORE_PRIVACY, defaults
from ecos_pl.cli.common import (
    add_command,
    add_max_pixels,
    finish_command,
    fraction,
    nonneg_int,
    phi_preset_names,
    positive_float,
    positive_int,
    program_parser,
    run_program,
)
from ecos_pl.protocol.label import CLOUD_VOTE_K

PROG = "ecos-cloud"


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
    p.add_argument("--phi", metavar="NAME|FILE", help=f"φ: a preset of conf/phi ({names}; default {defaults()['phi']}, as train.py) or a φ file")
    p.add_argument("--image-size", type=positive_int("--image-size"), default=None, help=f"decode images at this size (default {defaults()['image_size']}, as conf/data/folders.yaml, or the φ file's)")
    add_max_pixels(p)
    p.add_argument("--centroids", "-R", type=positive_int("--centroids"), required=True, metavar="R", help="number of k-means centroids R")
    p.add_argument("--label-phi", metavar="NAME|FILE|none", default=defaults()["label_phi"],
                   help="pseudo_label's labelling φ (a preset or a φ file), fitted on the pool, written as label_phi.safetensors; "
                        "none: the label round votes in φ (default %(default)s, as train.py's scenario=pseudo_label)")
    p.add_argument("--seed", type=nonneg_int("--seed"), default=defaults()["seed"], help="seed of φ's initialisation and of k-means (train.py's seed; default %(default)s)")
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
    p.add_argument("--client-fraction", type=float, default=defaults()["client_fraction"], help="share of the client domain's images that the client holds (default %(default)s)")
    p.add_argument("--test-fraction", type=float, default=defaults()["test_fraction"], help="share kept for the client's test split (default %(default)s)")
    p.add_argument("--seed", type=nonneg_int("--seed"), default=defaults()["seed"], help="train.py's seed (default %(default)s)")
    p.add_argument("--max-per-domain", type=positive_int("--max-per-domain"), default=None)
    p.add_argument("--pool-list", required=True, metavar="pool.txt")
    p.add_argument("--client-dir", required=True, metavar="FOLDER")
    finish_command(p, cmd_split_folders)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The program: `argv` (default: the command line) -> exit code."""
    return run_program(PROG, build_parser(), argv)
