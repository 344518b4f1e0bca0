"""`ecos-cloud compress` (the pool into centroids, the first message of ECOS's round) and `split-folders` (a simulation
helper): the steps before any client answers."""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from ecos_pl.atomic import naming
from ecos_pl.cli.cloud_state import ALLOCATION, LABEL_PHI_FILE, STATE_FORMAT, defaults
from ecos_pl.cli.common import (
    build_phi,
    check_image_size,
    existing_dir,
    file_identity,
    list_images,
    load_phi,
    path_list_text,
    phi_file_bytes,
    phi_preset,
    read_features,
    read_images,
    read_list,
    refuse_overwrite,
    replace_dir,
    replace_entries,
    require_images,
    say,
    write_bytes_atomic,
)
from ecos_pl.protocol.errors import ECOSInputError, check_count
from ecos_pl.protocol.features import unit_rows
from ecos_pl.protocol.messages import HEADER_BYTES, SCHEMA_VERSION, CentroidsMessage, answer_tag, phi_tag
from ecos_pl.protocol.samplers import ECOSSampler
from ecos_pl.protocol.settings import Allocation, Clustering

def _resolve_phi(spec: str | None, seed: int, image_size: int | None, flag: str = "--phi"):
    """(φ, its config, image size, φ file to copy or None) from a preset name or a φ file."""
    spec = spec or defaults()["phi"]
    if Path(spec).expanduser().is_file() or spec.endswith(".safetensors"):
        phi, size = load_phi(spec, flag)
        if image_size is not None and image_size != size:
            raise ECOSInputError(f"--image-size {image_size} differs from the image size {size} that {flag} {spec} was saved with.")
        return phi, None, size, Path(spec).expanduser()
    try:
        config = phi_preset(spec, seed)
    except ECOSInputError as err:  # it names --phi
        raise ECOSInputError(str(err).replace("--phi", flag, 1)) from None
    return build_phi(config, flag), config, image_size or defaults()["image_size"], None


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


def _same_file(a, b) -> bool:
    a, b = Path(a).expanduser(), Path(b).expanduser()
    return a.exists() and b.exists() and a.samefile(b)


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
