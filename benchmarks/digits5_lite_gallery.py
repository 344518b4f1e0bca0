"""A PNG grid of digits5_lite examples, one row per domain, so people can see what the domains look like.

    uv run python benchmarks/digits5_lite_gallery.py [--seed 1] [--per-domain 16] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecos_pl.data.digits5_lite import DOMAIN_NAMES, domain_arrays  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "digits5_lite_gallery.png"


def gallery(seed: int, per_domain: int, out: Path, cache_dir=None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ecos_pl.atomic import write_atomic

    arrays, _ = domain_arrays(seed, cache_dir)
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(DOMAIN_NAMES), per_domain, figsize=(per_domain * 0.8, len(DOMAIN_NAMES) * 0.95))
    for row, domain in zip(axes, DOMAIN_NAMES):
        images, labels = arrays[f"{domain}_train_images"], arrays[f"{domain}_train_labels"]
        pick = rng.choice(len(images), per_domain, replace=False)
        for ax, i in zip(row, pick):
            ax.imshow(images[i], interpolation="nearest")
            ax.set_title(str(labels[i]), fontsize=7, pad=1)
            ax.set_xticks([]), ax.set_yticks([])
        row[0].set_ylabel(domain, fontsize=9, rotation=0, ha="right", va="center")
    fig.suptitle(f"digits5_lite (seed {seed}): train examples per domain, label above", fontsize=9)
    fig.tight_layout(pad=0.3)
    write_atomic(out, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--per-domain", type=int, default=16)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    print(gallery(args.seed, args.per_domain, args.out))


if __name__ == "__main__":
    main()
