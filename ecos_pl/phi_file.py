"""A φ file: one φ as one safetensors file of data only (format `ecos-phi/2`), and how it is read back.

What the cloud sends the client besides the centroids: φ's declarative spec (a known kind
and bounded fields, `FeatureExtractor.spec`), its state tensors, the image size, its
fingerprint, and φ's features of two fixed probe images. Reading rebuilds φ through its
kind's constructor (nothing in the file is imported, called or unpickled), every field
bounded first, and checks that the rebuilt φ has the saved fingerprint and computes the
saved probe features. Format 1 (a Hydra config naming φ's class) is still read, as data,
against the same allow-list. `FeatureExtractor.to_bytes` / `FeatureExtractor.from_file` are
the same two functions as methods.

Error sentences name the program's flag (`flag`, `size_flag`) and the path as given.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ecos_pl.bad_input import one_line
from ecos_pl.phi import FeatureExtractor, check_phi_image_size, check_phi_spec, phi_from_spec, spec_from_config
from ecos_pl.protocol.errors import ECOSInputError

#: φ files: data only (a declarative spec of a known φ kind + tensors); format 1 named the class in a Hydra config
PHI_FORMAT = "ecos-phi/2"
PHI_FORMAT_1 = "ecos-phi/1"
_PROBE_SEED = 20221024
_PROBE = "probe.features"


def probe_images(size: int) -> np.ndarray:
    """The two fixed random images whose features a φ file carries (a check of the weights)."""
    return np.random.default_rng(_PROBE_SEED).integers(0, 256, size=(2, size, size, 3), dtype=np.uint8)


def phi_file_bytes(phi: FeatureExtractor, image_size: int, size_flag: str = "--image-size") -> bytes:
    """φ as one safetensors file of data only: its spec, state tensors, image size, fingerprint and a probe."""
    import torch
    from safetensors.torch import save

    spec = check_phi_spec(phi.spec())  # what the client will accept
    check_phi_image_size(image_size, size_flag)
    tensors = phi.state_tensors()
    tensors[_PROBE] = torch.from_numpy(phi.transform(probe_images(image_size)))
    meta = {"format": PHI_FORMAT, "spec": spec, "image_size": int(image_size), "fingerprint": phi.fingerprint()}
    return save(tensors, metadata={"ecos_phi": json.dumps(meta)})


def _header(p: Path, flag: str, path) -> tuple[dict, int, str, dict]:
    """(spec, image size, fingerprint, tensor shapes) from a φ file's header; no tensor is read yet."""
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["ecos_phi"])
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
        if not isinstance(meta, dict) or meta.get("format") not in (PHI_FORMAT, PHI_FORMAT_1):
            raise ValueError(f"format {meta.get('format') if isinstance(meta, dict) else None!r}")
        fingerprint, image_size = meta["fingerprint"], meta["image_size"]
    except Exception as err:  # noqa: BLE001 - not a safetensors file, or not ours
        raise ECOSInputError(f"{flag} {path} is not a φ file written by ecos-cloud ({type(err).__name__}).") from None
    # format 1 named φ's class in a Hydra config; it is read as data, against the same allow-list
    spec = meta.get("spec") if meta["format"] == PHI_FORMAT else spec_from_config(meta.get("config"))
    return spec, image_size, str(fingerprint), shapes


def load_phi_file(path, flag: str = "--phi") -> tuple[FeatureExtractor, int]:
    """(φ, its image size) from a φ file: data only, rebuilt by its kind's constructor, every field bounded first.

    Nothing in the file is imported, called or unpickled. The rebuilt φ must have the
    saved fingerprint and compute the saved features of the probe images.
    """
    from safetensors import safe_open

    p = Path(path).expanduser()
    try:
        spec, image_size, fingerprint, shapes = _header(p, flag, path)
        image_size = check_phi_image_size(image_size)  # before anything is allocated for it
        shapes.pop(_PROBE, None)
        phi = phi_from_spec(spec, state_shapes=shapes)
        try:
            with safe_open(str(p), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # noqa: BLE001 - a header that parses over a damaged body
            raise ECOSInputError(f"its tensors cannot be read ({type(err).__name__}).") from None
        probe = tensors.pop(_PROBE, None)
        phi.load_state_tensors(tensors, image_size)
    except ECOSInputError as err:
        raise ECOSInputError(f"{flag} {path}: {err}") from None
    if phi.fingerprint() != fingerprint:
        raise ECOSInputError(f"{flag} {path} does not rebuild the φ it was saved from (fingerprint {phi.fingerprint()} != {fingerprint}).")
    # a sanity check of the weights, tolerant of device arithmetic (the cloud may have run φ on a GPU, in TF32)
    try:
        features = phi.transform(probe_images(image_size))
    except Exception as err:  # noqa: BLE001 - e.g. a network too deep for images this small
        raise ECOSInputError(f"{flag} {path}: its φ cannot compute features of {image_size}-pixel images ({one_line(err)[:160]}).") from None
    if probe is None or tuple(probe.shape) != features.shape:
        raise ECOSInputError(f"{flag} {path}: its probe features do not match its φ (shape {None if probe is None else tuple(probe.shape)}).")
    cosine = np.sum(features * probe.numpy(), axis=1)
    if not (cosine > 0.999).all():
        raise ECOSInputError(f"{flag} {path}: the rebuilt φ computes different features than the cloud's on its probe images.")
    return phi, image_size
