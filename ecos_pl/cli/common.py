"""What both programs share: one-sentence errors (exit code 2), argument types, message files, path lists, φ presets, ε lines.

Image listing and decoding (`list_images`, `decode_images`) live in `ecos_pl.data.images`, φ files
(`phi_file_bytes`, `load_phi`) in `ecos_pl.phi_file`, folder swaps (`replace_dir`) in `ecos_pl.atomic`;
they are importable from here too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from ecos_pl import atomic
from ecos_pl.atomic import replace_dir, replace_entries, write_atomic  # noqa: F401 - replace_dir, replace_entries: re-exported
from ecos_pl.bad_input import one_line as _one_line
from ecos_pl.data.images import IMAGE_EXTENSIONS, decode_images, list_images, require_images  # noqa: F401 - re-exported
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.features import unit_rows

#: names of `ecos_pl.phi_file` importable from here, imported on first use (it imports torch: `--help` stays fast)
_PHI_FILE_NAMES = ("PHI_FORMAT", "PHI_FORMAT_1", "phi_file_bytes", "load_phi_file")


def __getattr__(name: str):
    if name in _PHI_FILE_NAMES:
        from ecos_pl import phi_file

        return getattr(phi_file, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

#: exit code of every bad input (argparse uses it too)
EXIT_BAD_INPUT = 2
#: the project's Hydra configs (φ presets); present in a source checkout
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
DEFAULT_IMAGE_SIZE = 32  # conf/data/*.yaml image_size


# --------------------------------------------------------------------------- program frame


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one sentence (ECOSInputError), like every other bad input."""

    def error(self, message):  # noqa: D401 - argparse API
        raise ECOSInputError(f"{message[:1].upper()}{message[1:]} (see {self.prog} --help).")


def make_parser(prog: str, description: str, epilog: str = "") -> ArgumentParser:
    return ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def program_parser(prog: str, description: str, epilog: str):
    """(the program's parser, its subparsers): a program is a set of commands."""
    parser = make_parser(prog, description, epilog)
    return parser, parser.add_subparsers(title="commands", metavar="COMMAND")


def add_command(subparsers, name: str, help: str, description: str, epilog: str) -> ArgumentParser:
    return subparsers.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def finish_command(parser: ArgumentParser, func: Callable, out: str | None = None) -> None:
    """A command's last option, `--out FILE` (when it writes one), and the function that runs it."""
    if out is not None:
        parser.add_argument("--out", required=True, metavar=out)
    parser.set_defaults(func=func)


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


def _whole_number_at_least(low: int) -> Callable[[str], Callable[[str], int]]:
    def make(name: str) -> Callable[[str], int]:
        def parse(text: str) -> int:
            try:
                value = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
            if value < low:
                raise argparse.ArgumentTypeError(f"{name} must be at least {low}, got {value}")
            return value

        return parse

    return make


positive_int = _whole_number_at_least(1)
nonneg_int = _whole_number_at_least(0)


def _number(name: str, allow_none: bool, what: str, out_of_bounds: Callable[[float], str | None]) -> Callable[[str], float | None]:
    """A parser of a float (`none`/`null`/`off` -> None when `allow_none`); `out_of_bounds(value)` says what it must do, or None."""

    def parse(text: str):
        if allow_none and text.strip().lower() in ("none", "null", "off"):
            return None
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {what}, got {text!r}") from None
        must = out_of_bounds(value)
        if must:
            raise argparse.ArgumentTypeError(f"{name} must {must}, got {text!r}")
        return value

    return parse


def positive_float(name: str, *, allow_none: bool = False, below_one: bool = False, at_least: float | None = None) -> Callable[[str], float | None]:
    def out_of_bounds(value: float) -> str | None:
        if not np.isfinite(value) or value <= 0 or (below_one and value >= 1) or (at_least is not None and value < at_least):
            return "be " + ("in (0, 1)" if below_one else f"a finite number >= {at_least:g}" if at_least is not None else "a positive, finite number")
        return None

    return _number(name, allow_none, "a number", out_of_bounds)


def fraction(name: str, *, allow_none: bool = False) -> Callable[[str], float | None]:
    return _number(name, allow_none, "a number in [0, 1]", lambda value: None if 0.0 <= value <= 1.0 else "lie in [0, 1]")


# --------------------------------------------------------------------------- files


def _existing(path, flag: str, is_kind: Callable[[Path], bool], kind: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ECOSInputError(f"{flag} {path} does not exist.")
    if not is_kind(p):
        raise ECOSInputError(f"{flag} {path} is not a {kind}.")
    return p


def existing_file(path, flag: str) -> Path:
    return _existing(path, flag, Path.is_file, "file")


def existing_dir(path, flag: str) -> Path:
    return _existing(path, flag, Path.is_dir, "folder")


def _real(path) -> Path:
    return Path(path).expanduser().resolve()


def _same(a: Path, b: Path) -> bool:
    try:
        return a == b or (a.exists() and b.exists() and a.samefile(b))  # a hard link, a bind mount
    except OSError:
        return False


def refuse_overwrite(outputs, inputs) -> None:
    """Before anything is read: no output may be an input, lie inside an input folder, or hold an input.

    `outputs` and `inputs` are (flag, path) pairs (a None path is skipped); a path ending in "/" is a
    folder (the cloud's state). One sentence names both flags, and nothing has been read or written.
    """
    outs = [(flag, str(path), _real(path)) for flag, path in outputs if path is not None]
    for in_flag, src in inputs:
        if src is None:
            continue
        folder = str(src).endswith("/")
        s = _real(src)
        for out_flag, shown, o in outs:
            if _same(o, s) or (folder and o.is_relative_to(s)):
                where = f"inside {in_flag} {src}" if folder and not _same(o, s) else f"{in_flag}'s own file ({src})"
                raise ECOSInputError(f"{out_flag} {shown} is {where}; writing it would destroy an input, so give another path.")
            if s.is_relative_to(o) and o.is_dir():
                raise ECOSInputError(f"{out_flag} {shown} holds {in_flag} {src}, which writing it would replace; give another path.")


def write_bytes_atomic(path, data: bytes) -> Path:
    return write_atomic(path, lambda f: f.write(data))


def write_json_atomic(path, obj) -> Path:
    return atomic.write_json_atomic(obj, path)


def read_message(path, cls, flag: str, check: Callable | None = None):
    """(message, its bytes) from a file, bounded before it is read; `check` vets the values. Errors name the file."""
    from ecos_pl.protocol.messages import MAX_MESSAGE_BYTES

    p = existing_file(path, flag)
    if p.stat().st_size > MAX_MESSAGE_BYTES:
        raise ECOSInputError(f"{flag} {path} has {p.stat().st_size} bytes, more than any ECOS message can ({MAX_MESSAGE_BYTES}).")
    data = p.read_bytes()
    try:
        message = cls.from_bytes(data)
        return (message if check is None else check(message)), data
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


# A list of image paths is text, one path a line, as people write it; a path that a line cannot
# hold as it is (a newline or other control character in it, a leading quote, #, or space) is
# written as a JSON string literal on its line, so every file name survives a round trip.
_LIST_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\x9f\u2028\u2029]|^["#\s]|\s$')


def path_list_text(paths: list[str], comment: str = "") -> str:
    """The text of a list of paths (see `parse_path_list`), after `comment` as # lines."""
    lines = [f"# {line}" for line in comment.split("\n")] if comment else []
    lines += [json.dumps(q, ensure_ascii=False) if not q or _LIST_UNSAFE.search(q) else q for q in paths]
    return "".join(f"{line}\n" for line in lines)


def parse_path_list(text: str, where: str) -> list[str]:
    """Paths from `path_list_text`, or a hand-written list (blank lines and # comments ignored; CRLF allowed)."""
    paths = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith('"'):
            try:
                line = json.loads(line)
            except ValueError:
                raise ECOSInputError(f"{where}, line {number}: a quoted path must be one JSON string, got {line[:80]!r}.") from None
            if not isinstance(line, str):
                raise ECOSInputError(f"{where}, line {number}: a quoted path must be one JSON string.")
        if "\x00" in line:
            raise ECOSInputError(f"{where}, line {number}: a path cannot hold a NUL character.")
        paths.append(line)
    return paths


def read_list(path, flag: str, root: Path) -> list[str]:
    """Image paths relative to `root` (`parse_path_list`), each a file inside `root`: no absolute path, no `..`."""
    p = existing_file(path, flag)
    try:
        paths = parse_path_list(p.read_text(encoding="utf-8"), f"{flag} {path}")
    except UnicodeDecodeError:
        raise ECOSInputError(f"{flag} {path} is not a text file of image paths.") from None
    if not paths:
        raise ECOSInputError(f"{flag} {path} lists no images.")
    outside = [q for q in paths if q.startswith(("/", "\\")) or ".." in q.replace("\\", "/").split("/")]
    if outside:
        raise ECOSInputError(f"{flag} {path} lists {outside[0]!r}, which is not a path inside --pool {root} (no absolute paths, no ..).")
    missing = [q for q in paths if not (root / q).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ECOSInputError(f"{flag} {path} lists {missing[0]!r}{more}, which is not a file under {root}.")
    return paths


def add_max_pixels(parser) -> None:
    """`--max-pixels`: the pixel limit of `ecos_pl.data.images` (files over it are skipped with a warning naming them)."""
    from ecos_pl.data.images import MAX_IMAGE_PIXELS

    parser.add_argument("--max-pixels", type=positive_int("--max-pixels"), default=MAX_IMAGE_PIXELS, metavar="N",
                        help="skip, with a warning, an image file whose header promises more than N pixels, before it is decoded (default %(default)s)")


def read_images(root: Path, paths: list[str], size: int, flag: str, args) -> tuple[np.ndarray, list[str]]:
    """`decode_images` under the command's `--max-pixels`."""
    from ecos_pl.data.images import PixelLimit

    return decode_images(root, paths, size, flag, PixelLimit(args.max_pixels, "--max-pixels"))


def check_image_size(size: int | None) -> int | None:
    from ecos_pl.phi import check_phi_image_size

    return None if size is None else check_phi_image_size(size, "--image-size")


# --------------------------------------------------------------------------- φ


def phi_preset_names() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "phi").glob("*.yaml")) if (CONF_DIR / "phi").is_dir() else []


def phi_preset(name: str, seed: int) -> dict:
    """A φ preset from conf/phi/<name>.yaml as train.py composes it (its own defaults, e.g. style_hog's parts),
    resolved with `seed` (train.py's `${seed}`), as a plain dict."""
    from omegaconf import OmegaConf

    from ecos_pl.compose import train_config

    if name not in phi_preset_names():  # a name, never a path to some other yaml
        names = ", ".join(phi_preset_names()) or "(none found: no conf/ folder next to the package)"
        raise ECOSInputError(f"--phi {name} is neither a φ file nor a preset of conf/phi/ ({names}).")
    return OmegaConf.to_container(train_config(f"phi={name}", f"seed={int(seed)}").phi, resolve=True)


def build_phi(config: dict, flag: str = "--phi"):
    """φ of a conf/phi preset, by its class's own constructor (the preset's `_target_` must name a φ kind)."""
    from ecos_pl.phi import phi_from_spec, spec_from_config

    try:
        return phi_from_spec(spec_from_config(config), weights=True)
    except ECOSInputError as err:
        raise ECOSInputError(f"{flag}: {err}") from None
    except Exception as err:  # noqa: BLE001 - a φ that cannot be built: missing weights, a bad setting
        cause = err.__cause__ or err
        raise ECOSInputError(f"{flag}: φ {config.get('_target_')} cannot be built: {_one_line(cause)}") from None


def load_phi(path, flag: str = "--phi"):
    """(φ, its image size) from the φ file `path` named by `flag` (`ecos_pl.phi_file.load_phi_file`)."""
    from ecos_pl.phi_file import load_phi_file

    existing_file(path, flag)
    return load_phi_file(path, flag)


# --------------------------------------------------------------------------- privacy lines


def eps_text(eps: float | None) -> str:
    if eps is None or not np.isfinite(eps):
        return "ε = ∞ (not differentially private)"
    return f"ε = {eps:.6g}"


def scores_privacy_line(privacy) -> str:
    """What one score release guarantees (`privacy`: the client's `ScoreMechanism`)."""
    if privacy.mechanism == "none":
        return "privacy: ε = ∞: exact counts are not differentially private (--epsilon E adds calibrated noise)."
    if privacy.mechanism == "laplace":
        return f"privacy: ε = {privacy.epsilon:.6g}, δ = 0 (Laplace(1/ε) on each of the R counts: pure ε-DP)."
    return (f"privacy: ε = {privacy.epsilon:.6g}, δ = {privacy.delta:g} (Gaussian, σ = {privacy.noise_scale:.4g} on each of the R counts, "
            "calibrated by dp-accounting).")
