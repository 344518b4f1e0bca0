"""The bounded fields a φ spec may carry (what a φ file or a conf/phi preset says), each checked before anything is built."""

from __future__ import annotations

import inspect
import re

from ecos_pl.data.images import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from ecos_pl.protocol.errors import ECOSInputError

#: the longest descriptor a PCA-projected φ may project (PCA pixels at the largest image size)
MAX_DESCRIPTOR = 3 * MAX_IMAGE_SIZE**2
#: timm model names: a registered architecture, optionally with a weights tag; never a hub address or path
TIMM_NAME = re.compile(r"[a-z0-9_]{1,96}(\.[a-z0-9_]{1,96})?")


def check_phi_image_size(size, name: str = "image_size") -> int:
    """The image sizes (pixels a side) a φ may be built for: this bounds every allocation a φ file can ask for."""
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ECOSInputError(f"{name} must be a whole number in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {size!r}.")
    return size


# --------------------------------------------------------------------------- declarative specs
#
# A φ file carries data only: a spec (kind + a few bounded fields, checked below) and tensors.
# φ is rebuilt by its own class's constructor; nothing named in a file is imported or called.


def _whole(lo: int, hi: int):
    def check(value, name):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ECOSInputError(f"φ field {name} must be a whole number in [{lo}, {hi}], got {value!r}.")
        return value

    return check


def _choice(*options):
    def check(value, name):
        if value not in options:
            raise ECOSInputError(f"φ field {name} must be one of {', '.join(map(repr, options))}, got {value!r}.")
        return value

    return check


def _timm_name(value, name):
    if not isinstance(value, str) or not TIMM_NAME.fullmatch(value):
        raise ECOSInputError(f"φ field {name} must be a timm model name (letters, digits, _ and one .tag), got {value!r:.120}.")
    import timm

    if not timm.is_model(value):
        raise ECOSInputError(f"φ field {name}={value!r} is not a timm model (see timm.list_models()).")
    return value


def _pretrained_label(value, name):
    """What the weights were made from (part of the fingerprint); weights in a φ file come from the file, never from this."""
    if not isinstance(value, (bool, str)) or (isinstance(value, str) and len(value) > 1024):
        raise ECOSInputError(f"φ field {name} must be true, false or a weights file name, got {value!r:.120}.")
    return value


def _stages(value, name):
    whole = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not whole or not 1 <= len(value) <= 8 or len(set(value)) != len(value) or not all(0 <= v <= 7 for v in value):
        raise ECOSInputError(f"φ field {name} must list 1 to 8 distinct stage indices in [0, 7], got {value!r:.120}.")
    return [int(v) for v in value]


def _input_size(value, name):
    if value is None or value == "auto":
        return value
    pair = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise ECOSInputError(f"φ field {name} must be null, 'auto' or pixels [H, W], got {value!r:.120}.")
    return [check_phi_image_size(v, f"φ field {name}") for v in pair]


def _check_fields(cls, spec: dict) -> dict:
    """The constructor arguments of `cls` from a spec: every field known and within its bounds, the rest the defaults."""
    if not isinstance(spec, dict):
        raise ECOSInputError(f"φ spec must be a mapping of fields, got {type(spec).__name__}.")
    unknown = sorted(set(spec) - set(cls.SPEC_FIELDS) - {"kind"})
    if unknown:
        raise ECOSInputError(f"φ kind {cls.kind!r} has no field {unknown[0]!r} (its fields: {', '.join(cls.SPEC_FIELDS)}).")
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
    return {k: check(spec.get(k, defaults[k]), k) for k, check in cls.SPEC_FIELDS.items()}


def _first_line(err) -> str:
    return " ".join(str(err).split())[:200]
