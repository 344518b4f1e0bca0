"""What both programs share: one-sentence errors (exit code 2), atomic writes, message files, images, φ files, ε lines."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from ecos_pl import atomic
from ecos_pl.atomic import _umask, write_atomic
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.features import unit_rows

#: exit code of every bad input (argparse uses it too)
EXIT_BAD_INPUT = 2
#: the project's Hydra configs (φ presets); present in a source checkout
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"})
DEFAULT_IMAGE_SIZE = 32  # conf/data/*.yaml image_size
PHI_FORMAT = "ecos-phi/1"


# --------------------------------------------------------------------------- program frame


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one sentence (ECOSInputError), like every other bad input."""

    def error(self, message):  # noqa: D401 - argparse API
        raise ECOSInputError(f"{message[:1].upper()}{message[1:]} (see {self.prog} --help).")


def make_parser(prog: str, description: str, epilog: str = "") -> ArgumentParser:
    return ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_command(subparsers, name: str, help: str, description: str, epilog: str) -> ArgumentParser:
    return subparsers.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def run_program(prog: str, parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse, run `args.func(args)`; a bad input is one line on stderr and exit code 2, with nothing written."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {_one_line(message)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)  # ours name a file each; never swallow a repeat
        warnings.showwarning = show
        try:
            args = parser.parse_args(argv)
            if getattr(args, "func", None) is None:
                parser.print_help()
                return EXIT_BAD_INPUT
            return int(args.func(args) or 0)
        except SystemExit as exit_:  # --help, --version
            return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else EXIT_BAD_INPUT
        except ECOSInputError as err:
            print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except OSError as err:  # a folder that cannot be written, a disk that is full
            what = f" {err.filename}" if err.filename else ""
            print(f"{prog}: error: cannot read or write{what}: {err.strerror or err}.", file=sys.stderr)
            return EXIT_BAD_INPUT


def say(*lines: str) -> None:
    for line in lines:
        print(line, flush=True)


# --------------------------------------------------------------------------- argument types


def positive_int(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be at least 1, got {value}")
        return value

    return parse


def nonneg_int(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{name} must be at least 0, got {value}")
        return value

    return parse


def positive_float(name: str, *, allow_none: bool = False, below_one: bool = False) -> Callable[[str], float | None]:
    def parse(text: str):
        if allow_none and text.strip().lower() in ("none", "null", "off", "0"):
            return None
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not np.isfinite(value) or value <= 0 or (below_one and value >= 1):
            bound = "in (0, 1)" if below_one else "a positive, finite number"
            raise argparse.ArgumentTypeError(f"{name} must be {bound}, got {text!r}")
        return value

    return parse


def fraction(name: str, *, allow_none: bool = False) -> Callable[[str], float | None]:
    def parse(text: str):
        if allow_none and text.strip().lower() in ("none", "null", "off"):
            return None
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number in [0, 1], got {text!r}") from None
        if not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(f"{name} must lie in [0, 1], got {text!r}")
        return value

    return parse


def fresh_seed(seed: int | None) -> int:
    """The given seed, or fresh OS randomness: noise whose seed is known can be subtracted again."""
    return secrets.randbits(63) if seed is None else int(seed)


# --------------------------------------------------------------------------- files


def existing_file(path, flag: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ECOSInputError(f"{flag} {path} does not exist.")
    if not p.is_file():
        raise ECOSInputError(f"{flag} {path} is not a file.")
    return p


def existing_dir(path, flag: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ECOSInputError(f"{flag} {path} does not exist.")
    if not p.is_dir():
        raise ECOSInputError(f"{flag} {path} is not a folder.")
    return p


def write_bytes_atomic(path, data: bytes) -> Path:
    return write_atomic(path, lambda f: f.write(data))


def write_json_atomic(path, obj) -> Path:
    return atomic.write_json_atomic(obj, path)


def replace_dir(build: Callable[[Path], None], target: Path) -> Path:
    """Build a folder under a temporary name next to `target`, then swap it in (the old one goes only afterwards)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    old = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        build(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
            os.rmdir(old)
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists():
            shutil.rmtree(old, ignore_errors=True)
    return target


def read_message(path, cls, flag: str):
    """(message, its bytes) from a file; anything wrong is one sentence that names the file."""
    p = existing_file(path, flag)
    data = p.read_bytes()
    try:
        return cls.from_bytes(data), data
    except ECOSInputError as err:
        raise ECOSInputError(f"{flag} {path}: {err}") from None


def read_features(path, flag: str, *, dim: int | None = None) -> np.ndarray:
    """A float [N, d] .npy file as L2-normalised float32 rows (one clear sentence if it is not one)."""
    p = existing_file(path, flag)
    try:
        x = np.load(p, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - np.load fails in many ways on a bad file
        raise ECOSInputError(f"{flag} {path} is not a readable .npy array ({type(err).__name__}).") from None
    if not isinstance(x, np.ndarray):
        raise ECOSInputError(f"{flag} {path} holds several arrays; give one [N, d] .npy array.")
    return unit_rows(x, f"{flag} {path}", dim=dim)


def file_identity(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def sha1_indices(indices: np.ndarray) -> str:
    """The same digest as train.py's `proxy_set_sha1`: sha1 of the sorted int64 pool indices."""
    return hashlib.sha1(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()


# --------------------------------------------------------------------------- images


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[str]:
    """Every image under `folder` (any depth), as sorted "/"-separated relative paths; hidden entries are skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(folder)
        found += [(rel / f).as_posix() for f in filenames if not f.startswith(".") and _is_image(f)]
    return sorted(found)


def read_list(path, flag: str, root: Path) -> list[str]:
    """Image paths relative to `root`, one a line (blank lines and lines starting with # are ignored)."""
    p = existing_file(path, flag)
    try:
        lines = p.read_text().splitlines()
    except UnicodeDecodeError:
        raise ECOSInputError(f"{flag} {path} is not a text file of image paths.") from None
    paths = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not paths:
        raise ECOSInputError(f"{flag} {path} lists no images.")
    missing = [q for q in paths if not (root / q).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ECOSInputError(f"{flag} {path} lists {missing[0]}{more}, which is not a file under {root}.")
    return paths


def decode_images(root: Path, paths: list[str], size: int, flag: str) -> tuple[np.ndarray, list[str]]:
    """uint8 [N, size, size, 3] decoded exactly as the `folders` data source does; undecodable files skipped with a warning."""
    from ecos_pl.data.folders import decode_all

    if not paths:
        raise ECOSInputError(f"{flag} {root} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    images, ok, failed = decode_all(root, paths, size)
    for path, reason in failed[:20]:
        warnings.warn(f"skipping {path} under {root}: it cannot be decoded as an image ({reason}).", stacklevel=2)
    if len(failed) > 20:
        warnings.warn(f"skipped {len(failed) - 20} more undecodable files under {root}.", stacklevel=2)
    if not ok.any():
        raise ECOSInputError(f"{flag} {root} holds no image that can be decoded.")
    return images[ok], [p for p, k in zip(paths, ok) if k]


def check_image_size(size: int | None) -> int | None:
    if size is not None and not 8 <= size <= 512:
        raise ECOSInputError(f"--image-size must lie in [8, 512], got {size}.")
    return size


# --------------------------------------------------------------------------- φ


def phi_preset_names() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "phi").glob("*.yaml")) if (CONF_DIR / "phi").is_dir() else []


def phi_preset(name: str, seed: int) -> dict:
    """A φ preset from conf/phi/<name>.yaml, resolved with `seed` (train.py's `${seed}`), as a plain dict."""
    from omegaconf import OmegaConf

    path = CONF_DIR / "phi" / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(phi_preset_names()) or "(none found: no conf/ folder next to the package)"
        raise ECOSInputError(f"--phi {name} is neither a φ file nor a preset of conf/phi/ ({names}).")
    root = OmegaConf.create({"seed": int(seed), "phi": OmegaConf.load(path)})
    return OmegaConf.to_container(root.phi, resolve=True)


def build_phi(config: dict):
    import hydra.utils

    try:
        return hydra.utils.instantiate(dict(config))
    except Exception as err:  # noqa: BLE001 - a φ that cannot be built: missing weights, a bad setting
        cause = err.__cause__ or err
        raise ECOSInputError(f"φ {config.get('_target_')} cannot be built: {_one_line(cause)}") from None


def _phi_state(phi) -> dict:
    """The tensors that, with the config, rebuild `phi` exactly."""
    import torch

    from ecos_pl.phi import PCAProjected, TimmFeatures

    if isinstance(phi, TimmFeatures):
        return {f"model.{k}": v.detach().cpu().contiguous() for k, v in phi.model.state_dict().items()}
    if isinstance(phi, PCAProjected):
        pca = getattr(phi, "_pca", None)
        if pca is None:
            raise ECOSInputError(f"φ ({type(phi).__name__}) was never fitted, so it cannot be saved.")
        arrays = {"components_": pca.components_, "mean_": pca.mean_, "explained_variance_": pca.explained_variance_}
        return {f"pca.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    raise ECOSInputError(f"φ of type {type(phi).__name__} cannot be saved to a φ file (only timm and PCA-projected φ can).")


def _probe_images(size: int) -> np.ndarray:
    return np.random.default_rng(20221024).integers(0, 256, size=(2, size, size, 3), dtype=np.uint8)


def phi_file_bytes(phi, config: dict, image_size: int) -> bytes:
    """φ as one pickle-free safetensors file: its weights (or fitted PCA), its config, image size, fingerprint and a probe."""
    import torch
    from safetensors.torch import save

    tensors = _phi_state(phi)
    tensors["probe.features"] = torch.from_numpy(phi.transform(_probe_images(image_size)))
    meta = {"format": PHI_FORMAT, "config": config, "image_size": int(image_size), "fingerprint": phi.fingerprint()}
    return save(tensors, metadata={"ecos_phi": json.dumps(meta)})


def load_phi(path, flag: str = "--phi"):
    """(φ, its image size) from a φ file; checks that the rebuilt φ has the saved fingerprint and features."""
    from safetensors import safe_open

    from ecos_pl.phi import PCAProjected, TimmFeatures

    p = existing_file(path, flag)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["ecos_phi"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        config, image_size, fingerprint = dict(meta["config"]), int(meta["image_size"]), str(meta["fingerprint"])
        if meta.get("format") != PHI_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
    except Exception as err:  # noqa: BLE001 - not a safetensors file, or not ours
        raise ECOSInputError(f"{flag} {path} is not a φ file written by ecos-cloud ({type(err).__name__}).") from None
    original_pretrained = config.get("pretrained")
    if "pretrained" in config:
        config["pretrained"] = False  # the weights come from the file, never from a cache or the network
    phi = build_phi(config)
    try:
        if isinstance(phi, TimmFeatures):
            state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
            phi.model.load_state_dict(state, strict=True)
            phi.pretrained = original_pretrained  # part of the fingerprint
        elif isinstance(phi, PCAProjected):
            from sklearn.decomposition import PCA

            comps = tensors["pca.components_"].numpy()
            pca = PCA(n_components=comps.shape[0], random_state=getattr(phi, "seed", 0), svd_solver="randomized")
            pca.components_ = comps
            pca.mean_ = tensors["pca.mean_"].numpy()
            pca.explained_variance_ = tensors["pca.explained_variance_"].numpy()
            pca.n_components_ = comps.shape[0]
            pca.n_features_in_ = comps.shape[1]
            phi._pca = pca
        else:
            raise ECOSInputError(f"{flag} {path} holds a φ of type {type(phi).__name__}, which this program cannot load.")
    except (RuntimeError, KeyError) as err:
        raise ECOSInputError(f"{flag} {path}: its weights do not fit its φ config ({type(err).__name__}).") from None
    if phi.fingerprint() != fingerprint:
        raise ECOSInputError(f"{flag} {path} does not rebuild the φ it was saved from (fingerprint {phi.fingerprint()} != {fingerprint}).")
    # a sanity check of the weights, tolerant of device arithmetic (the cloud may have run φ on a GPU, in TF32)
    cosine = np.sum(phi.transform(_probe_images(image_size)) * tensors["probe.features"].numpy(), axis=1)
    if not (cosine > 0.999).all():
        raise ECOSInputError(f"{flag} {path}: the rebuilt φ computes different features than the cloud's on its probe images.")
    return phi, image_size


# --------------------------------------------------------------------------- privacy lines


def eps_text(eps: float | None) -> str:
    if eps is None or not np.isfinite(eps):
        return "ε = ∞ (not differentially private)"
    return f"ε = {eps:.6g}"


def scores_privacy_line(epsilon: float | None) -> str:
    """The ε of one score release (`laplace_epsilon`: one Laplace release is ε itself, pure DP)."""
    from ecos_pl.protocol.privacy import laplace_epsilon

    if epsilon is None:
        return "privacy: ε = ∞: exact counts are not differentially private (pass --epsilon E for Laplace(1/E) noise)."
    return f"privacy: ε = {laplace_epsilon([epsilon]):.6g}, δ = 0 (Laplace(1/ε) on each of the R counts: pure ε-DP)."
