"""Issue 16, findings 1, 6, 7 replayed against the programs: hostile φ files, valid-looking hostile messages, trees and lists.

Each attack is planted as the issue describes it; the programs must answer with one sentence
naming the flag or file, exit code 2, no file written and nothing run.
"""

import functools
import json
import os
import struct
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save
import test_cli
from test_cli import _image_folder, call, ok
from test_data_sources import write_pngs

from ecos_pl.cli import client, cloud, cloud_compress, cloud_state
from ecos_pl.cli.common import phi_file_bytes
from ecos_pl.data.folders import split_folders
from ecos_pl.phi import TimmFeatures, phi_from_spec
from ecos_pl.protocol import ECOSInputError
from ecos_pl.protocol.messages import MAX_MESSAGE_BYTES, MESSAGE_TYPES, CentroidsMessage, ScoresMessage, parse_message
from ecos_pl.protocol.parties import CLIENT_CAP, ECOSCloud, cap_client_scores
from ecos_pl.protocol.score import check_centroids, coverage_scores

world = test_cli.world  # test_cli's module fixture, used here too


def refused(main, *argv, words=(), folder=None):
    """The program's answer to a bad input: exit 2, one line naming `words`, nothing new in `folder`."""
    before = None if folder is None else sorted(p.name for p in Path(folder).iterdir())
    rc, out, err = call(main, *argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and ": error: " in lines[0], (rc, err, out)
    for word in words:
        assert word in lines[0], (word, lines[0])
    if folder is not None:
        assert sorted(p.name for p in Path(folder).iterdir()) == before, "a file was written"
    return lines[0]


# --------------------------------------------------------------------------- finding 1: φ files are data


@pytest.fixture(scope="module")
def phi_world(tmp_path_factory):
    """A PCA φ file and its centroids (compress --pool --phi pca), a timm φ file with tagged centroids, client images."""
    root = tmp_path_factory.mktemp("phi")
    for name, colour, seed in (("red", (200, 40, 40), 0), ("blue", (40, 40, 200), 1)):
        _image_folder(root / "pool" / name, colour, 6, seed)
    _image_folder(root / "mine", (200, 40, 40), 4, 5)
    ok(cloud.main, "compress", "--pool", root / "pool", "--phi", "pca", "--image-size", 16, "--centroids", 4, "--seed", 1, "--out-dir", root / "pca")
    phi = TimmFeatures("test_resnet", pooling="style", stages=(0, 1), seed=3, device="cpu", progress=False)
    (root / "timm.safetensors").write_bytes(phi_file_bytes(phi, 16))
    from ecos_pl.cli.common import decode_images, list_images

    images, _ = decode_images(root / "pool", list_images(root / "pool", "--pool"), 16, "--pool")
    np.save(root / "timm_pool.npy", phi.transform(images))
    ok(cloud.main, "compress", "--features", root / "timm_pool.npy", "--phi", root / "timm.safetensors", "--centroids", 4, "--out-dir", root / "timm")
    return root


def forge_phi(src: Path, dst: Path, *, meta=None, tensors=None) -> Path:
    """A copy of φ file `src` with its metadata fields and tensors replaced (a valid safetensors file)."""
    with safe_open(str(src), framework="pt") as f:
        old = json.loads(f.metadata()["ecos_phi"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    old.update(meta or {})
    state.update(tensors or {})
    dst.write_bytes(save(state, metadata={"ecos_phi": json.dumps(old)}))
    return dst


def as_format_1(src: Path, dst: Path, target: str | None = None, **fields) -> Path:
    """φ file `src` rewritten as format 1 wrote it: a Hydra config whose `_target_` names a callable."""
    with safe_open(str(src), framework="pt") as f:
        spec = json.loads(f.metadata()["ecos_phi"])["spec"]
    kind = spec.pop("kind")
    config = {"_target_": target or f"ecos_pl.phi.{ {'pca': 'PCAPixels', 'hog': 'HOGFeatures', 'timm': 'TimmFeatures'}[kind]}", **spec, **fields}
    return forge_phi(src, dst, meta={"format": "ecos-phi/1", "config": config})


def score_with_phi(world_dir: Path, phi_file: Path, out: Path, *extra):
    # exact counts: these tests compare the bytes of two releases (noise would differ between them)
    return ("score", "--centroids", world_dir / "centroids.ecos", "--phi", phi_file, "--images", world_dir.parent / "mine",
            "--epsilon", "none", *extra, "--out", out)


CODE_TARGETS = [
    ("numpy.savetxt", lambda d: {"fname": str(d / "pwned.txt"), "X": [1.0, 2.0]}),
    ("builtins.open", lambda d: {"file": str(d / "pwned.txt"), "mode": "w"}),
    ("torch.save", lambda d: {"obj": [1], "f": str(d / "pwned.txt")}),
    ("os.system", lambda d: {"command": f"touch {d / 'pwned.txt'}"}),
]


@pytest.mark.parametrize("target, args", CODE_TARGETS, ids=[t for t, _ in CODE_TARGETS])
def test_a_phi_file_naming_a_callable_runs_nothing(phi_world, tmp_path, target, args):
    """Format 1 named φ's class in `_target_`; a file naming any other callable is refused and nothing runs."""
    evil = as_format_1(phi_world / "pca/phi.safetensors", tmp_path / "evil.safetensors", target, **args(tmp_path))
    for main, argv in (
        (client.main, score_with_phi(phi_world / "pca", evil, tmp_path / "s.ecos")),
        (cloud.main, ["compress", "--pool", phi_world / "pool", "--phi", evil, "--centroids", 4, "--out-dir", tmp_path / "out"]),
    ):
        line = refused(main, *argv, words=["--phi", "evil.safetensors", target, "nothing was run"], folder=tmp_path)
        assert "pwned" not in line
    assert not (tmp_path / "pwned.txt").exists()


@pytest.mark.parametrize("spec, words", [
    ({"kind": "numpy.savetxt"}, ["kind 'numpy.savetxt'"]),
    ({"kind": "pca", "_target_": "numpy.savetxt", "n_components": 4, "seed": 1}, ["no field '_target_'"]),
    ({"kind": "pca", "n_components": 10**9, "seed": 1}, ["n_components", "[1, 4096]"]),
    ({"kind": "pca", "n_components": "4", "seed": 1}, ["n_components"]),
    ({"kind": "timm", "model": "hf-hub:timm/resnet18"}, ["model", "timm model name"]),
    ({"kind": "timm", "model": "../../x"}, ["model"]),
    ({"kind": "timm", "model": "test_resnet", "stages": list(range(50))}, ["stages"]),
    ({"kind": "timm", "model": "test_resnet", "input_size": 100000}, ["input_size", "[8, 512]"]),
    ("not a mapping", ["kind"]),
])
def test_a_phi_spec_outside_the_allow_list_is_refused(phi_world, tmp_path, spec, words):
    evil = forge_phi(phi_world / "pca/phi.safetensors", tmp_path / "evil.safetensors", meta={"spec": spec})
    refused(client.main, *score_with_phi(phi_world / "pca", evil, tmp_path / "s.ecos"), words=["--phi", *words], folder=tmp_path)


def test_a_huge_image_size_is_refused_before_any_allocation(phi_world, tmp_path):
    evil = forge_phi(phi_world / "pca/phi.safetensors", tmp_path / "evil.safetensors", meta={"image_size": 100000})
    tracemalloc.start()
    try:
        refused(client.main, *score_with_phi(phi_world / "pca", evil, tmp_path / "s.ecos"),
                words=["--phi", "image_size", "[8, 512]", "100000"], folder=tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, peak


def test_timm_weights_that_do_not_fit_are_refused_before_the_network_is_built(phi_world, tmp_path, monkeypatch):
    """A file that names a big model but carries a small one's weights never gets the big one allocated."""
    evil = forge_phi(phi_world / "timm.safetensors", tmp_path / "evil.safetensors",
                     meta={"spec": {"kind": "timm", "model": "resnet50", "pooling": "style", "stages": [0, 1], "seed": 3}})
    built = []
    original = TimmFeatures.__init__

    @functools.wraps(original)
    def init(self, *args, **kwargs):
        built.append(kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(TimmFeatures, "__init__", init)
    refused(client.main, *score_with_phi(phi_world / "timm", evil, tmp_path / "s.ecos"), words=["--phi", "do not fit"], folder=tmp_path)
    assert built == []
    key = next(k for k in _keys(phi_world / "timm.safetensors") if k.endswith(".weight"))
    nan = forge_phi(phi_world / "timm.safetensors", tmp_path / "nan.safetensors",
                    tensors={key: torch.full_like(_tensor(phi_world / "timm.safetensors", key), float("nan"))})
    refused(client.main, *score_with_phi(phi_world / "timm", nan, tmp_path / "s.ecos"), words=["--phi", "finite"], folder=tmp_path)


def _keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _tensor(path: Path, key: str) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(key)


def test_pca_state_of_the_wrong_shape_is_refused(phi_world, tmp_path):
    comps = _tensor(phi_world / "pca/phi.safetensors", "pca.components_")
    evil = forge_phi(phi_world / "pca/phi.safetensors", tmp_path / "evil.safetensors", tensors={"pca.components_": comps[:, :-1].contiguous()})
    refused(client.main, *score_with_phi(phi_world / "pca", evil, tmp_path / "s.ecos"), words=["--phi", "pca.components_", "shape"], folder=tmp_path)


def test_phi_files_round_trip_and_format_1_files_still_load(phi_world, tmp_path):
    """Today's format (a spec) and format 1 (a config naming φ's own class) both score exactly as the φ they came from."""
    for kind in ("pca", "timm"):
        src = phi_world / "pca/phi.safetensors" if kind == "pca" else phi_world / "timm.safetensors"
        with safe_open(str(src), framework="pt") as f:
            meta = json.loads(f.metadata()["ecos_phi"])
        assert meta["format"] == "ecos-phi/2" and meta["spec"]["kind"] == kind and "config" not in meta
        ok(client.main, *score_with_phi(phi_world / kind, src, tmp_path / f"{kind}.ecos"))
        old = as_format_1(src, tmp_path / f"{kind}1.safetensors")
        ok(client.main, *score_with_phi(phi_world / kind, old, tmp_path / f"{kind}1.ecos"))
        assert (tmp_path / f"{kind}1.ecos").read_bytes() == (tmp_path / f"{kind}.ecos").read_bytes()


def test_a_phi_file_never_loads_pretrained_weights():
    """`pretrained` in a φ file only labels the weights (for the fingerprint); nothing is looked up for it."""
    phi = phi_from_spec({"kind": "timm", "model": "test_resnet", "pretrained": "/nonexistent/weights.pth", "seed": 1})
    assert phi.pretrained == "/nonexistent/weights.pth"
    with pytest.raises(ECOSInputError, match="kind"):
        phi_from_spec({"kind": "ecos_pl.phi.TimmFeatures"})


# --------------------------------------------------------------------------- finding 6: valid-looking hostile messages


def test_centroids_of_huge_norm_with_a_right_checksum_and_tag_are_refused(world, tmp_path):
    real = CentroidsMessage.from_bytes((world / "cloud/centroids.ecos").read_bytes())
    for name, values in (("huge", np.full_like(real.centroids, 1e30)), ("big", real.centroids * 3.0)):
        (tmp_path / f"{name}.ecos").write_bytes(CentroidsMessage(values, tag=b"\x01\x02\x03\x04").to_bytes())
        refused(client.main, "score", "--centroids", tmp_path / f"{name}.ecos", "--features", world / "client.npy", "--out", tmp_path / "s.ecos",
                words=["--centroids", f"{name}.ecos", "norm"], folder=tmp_path)
    radii = CentroidsMessage(real.centroids, radii=np.full(real.n_centroids, 1e30, np.float32))
    with pytest.raises(ECOSInputError, match="radius"):
        check_centroids(radii)


def test_coverage_scores_refuse_a_sample_faiss_finds_no_centroid_for(world, monkeypatch):
    message = CentroidsMessage.from_bytes((world / "cloud/centroids.ecos").read_bytes())
    features = np.load(world / "client.npy")
    monkeypatch.setattr("ecos_pl.protocol.score.nearest_centroid", lambda x, c: (np.zeros(len(x), np.float32), np.full(len(x), -1)))
    with pytest.raises(ECOSInputError, match="no finite distance"):
        coverage_scores(features, message)


def test_untagged_scores_need_allow_untagged(world, tmp_path):
    stripped = ScoresMessage(ScoresMessage.from_bytes((world / "scores.ecos").read_bytes()).scores)
    (tmp_path / "untagged.ecos").write_bytes(stripped.to_bytes())
    argv = ["select", "--state", world / "cloud", "--scores", tmp_path / "untagged.ecos", "--budget", 50]
    refused(cloud.main, *argv, "--out", tmp_path / "p.json", words=["--scores", "untagged.ecos", "no tag", "--allow-untagged"], folder=tmp_path)
    rc, _, err = call(cloud.main, *argv, "--allow-untagged", "--out", tmp_path / "p.json")
    assert rc == 0 and "unchecked" in err
    ok(cloud.main, "select", "--state", world / "cloud", "--scores", world / "scores.ecos", "--budget", 50, "--out", tmp_path / "q.json")
    assert json.loads((tmp_path / "p.json").read_text())["indices"] == json.loads((tmp_path / "q.json").read_text())["indices"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Three honest clients on three domains of a 20-domain pool (R=40), as in test_cli's fleet test."""
    root = tmp_path_factory.mktemp("fleet")
    rng = np.random.default_rng(7)
    k, d = 20, 32
    means = rng.normal(size=(k, d)) * 3.0
    pool = np.concatenate([means[i] + rng.normal(size=(400, d)) for i in range(k)]).astype(np.float32)
    np.save(root / "pool.npy", pool)
    ok(cloud.main, "compress", "--features", root / "pool.npy", "--centroids", 40, "--seed", 1, "--out-dir", root / "cloud")
    files = []
    for dom, eps in zip([3, 9, 15], [0.5, 2.0, None]):
        np.save(root / f"c{dom}.npy", (means[dom] + rng.normal(size=(300, d))).astype(np.float32))
        files.append(root / f"scores{dom}.ecos")
        ok(client.main, "score", "--centroids", root / "cloud/centroids.ecos", "--features", root / f"c{dom}.npy",
           *([] if eps is None else ["--epsilon", eps, "--seed", dom]), "--out", files[-1])
    return {"root": root, "files": files, "component": np.repeat(np.arange(k), 400), "honest": [3, 9, 15]}


def _select(fleet, files, out, *extra):
    rc, _, err = call(cloud.main, "select", "--state", fleet["root"] / "cloud", "--scores", *files, "--budget", 40, *extra, "--out", out)
    assert rc == 0, err
    return json.loads(out.read_text()), err


def test_one_forged_client_with_counts_of_1e9_does_not_take_most_of_a_fleet_selection(fleet, tmp_path):
    tag = ScoresMessage.from_bytes(fleet["files"][0].read_bytes()).tag
    (tmp_path / "forged.ecos").write_bytes(ScoresMessage(np.full(40, 1e9, np.float32), tag=tag).to_bytes())
    files = [*fleet["files"], tmp_path / "forged.ecos"]
    uncapped, _ = _select(fleet, files, tmp_path / "none.json", "--client-cap", "none")
    capped, err = _select(fleet, files, tmp_path / "capped.json")
    outside = lambda proxy: int((~np.isin(fleet["component"][proxy["indices"]], fleet["honest"])).sum())  # noqa: E731
    assert outside(uncapped) > 30  # without the cap the forger takes nearly all 40 picks
    assert outside(capped) < 20, outside(capped)
    assert "forged.ecos claims 4e+10 samples" in err and f"--client-cap {CLIENT_CAP:g}" in err
    assert [c["cap_scale"] is None for c in capped["clients"]] == [True, True, True, False]


def test_the_cap_touches_an_honest_client_only_above_its_bounds_and_bounds_a_forger_to_cap_times_the_median(fleet, tmp_path):
    honest, _ = _select(fleet, fleet["files"], tmp_path / "a.json")
    uncapped, _ = _select(fleet, fleet["files"], tmp_path / "b.json", "--client-cap", "none")
    scores = [ScoresMessage.from_bytes(f.read_bytes()).scores.astype(np.float64) for f in fleet["files"]]
    # three clients on three domains: the exact one (domain 15) has all 300 samples in one cluster, a largest count
    # above 2 x the others' median largest count, so it alone is bounded; the proxy set moves by a pick or two of 40
    peaks, totals = np.array([s.max() for s in scores]), np.array([s.sum() for s in scores])
    above = [peaks[i] > CLIENT_CAP * np.median(np.delete(peaks, i)) or totals[i] > CLIENT_CAP * np.median(np.delete(totals, i))
             for i in range(3)]
    assert [c["cap_scale"] is not None for c in honest["clients"]] == above == [False, False, True]
    assert 0 < len(set(honest["indices"]) ^ set(uncapped["indices"])) <= 4
    assert cap_client_scores(scores[:2])[1] == [None, None]  # two comparable clients: untouched
    forged = np.zeros(40)
    forged[7] = 1e9
    capped, scales = cap_client_scores([*scores, forged])
    assert scales[:3] == [None, None, None]
    assert capped[3][7] == pytest.approx(CLIENT_CAP * np.median([s.max() for s in scores]))  # the per-count bound
    assert capped[3].sum() <= CLIENT_CAP * np.median([s.sum() for s in scores]) * (1 + 1e-9)  # and the total's
    assert cap_client_scores([forged])[1] == [None]  # one client: its scores are the selection
    cloud_ = ECOSCloud(np.load(fleet["root"] / "pool.npy"), 40, seed=1)
    cloud_.compress()
    cloud_.select([ScoresMessage(s) for s in [*scores, forged]], 40)
    assert np.array_equal(cloud_.fleet_scores, np.sum(capped, axis=0))  # it weighs as an honest client of that size would


def test_a_forger_that_puts_an_honest_total_on_one_centroid_is_clipped_to_the_others_median_largest_count():
    """The total bound alone lets a forger concentrate `cap` × the median total on one centroid, which at τ = 0.5
    weighs as its square; the per-count bound holds it to `cap` × the others' median largest count."""
    honest = [np.r_[np.full(4, 10.0 + i), np.zeros(4)] for i in range(9)]  # 4 clusters each, totals 40-72, peaks 10-18
    forged = np.r_[np.zeros(7), 40.0]  # a total under the total bound, all on one centroid no honest client holds
    capped, scales = cap_client_scores([*honest, forged])
    assert scales[:9] == [None] * 9 and all(np.array_equal(c, h) for c, h in zip(capped, honest))
    assert capped[9][7] == pytest.approx(CLIENT_CAP * 14.0) and scales[9] == pytest.approx(28.0 / 40.0)
    spread = np.r_[np.full(4, 9.0), np.zeros(4)]  # an honest-looking newcomer is not touched
    assert cap_client_scores([*honest, spread])[1][9] is None


# --------------------------------------------------------------------------- the header fields, by hypothesis

#: the flags each kind uses (radii 1 for centroids, value 2 for scores and labels, tag 4 for all)
_KIND_FLAGS = {1: [0, 1, 4, 5], 2: [0, 2, 4, 6], 3: [0, 4], 4: [0, 2, 4, 6]}


@st.composite
def headers(draw):
    """Header fields that are mostly self-consistent (so parsing reaches the checks behind the envelope), sometimes anything."""

    def pick(usual, other):  # usual seven times in eight; hypothesis alone favours small numbers, not consistency
        return usual if draw(st.sampled_from([True] * 7 + [False])) else other

    def mostly(usual, other):
        return draw(pick(usual, other))

    kind = mostly(st.integers(1, 4), st.integers(0, 255))
    flags = mostly(st.sampled_from(_KIND_FLAGS.get(kind, [0])), st.integers(0, 255))
    dtype = mostly(st.just(2 if kind == 4 else 1), st.integers(0, 3))
    r = mostly(st.integers(1, 6), st.integers(0, 2**32 - 1) | st.sampled_from([0, 2**24, 2**24 + 1, 2**28 + 1]))
    d = mostly(st.just(1) if kind in (2, 4) else st.integers(1, 6), st.integers(0, 2**32 - 1) | st.sampled_from([0, 2**16, 2**16 + 1]))
    value = mostly(st.floats(1e-3, 100), st.floats()) if flags & 2 else mostly(st.just(0.0), st.floats())
    tag = draw(st.binary(min_size=4, max_size=4)) if flags & 4 else mostly(st.just(bytes(4)), st.binary(min_size=4, max_size=4))
    n = r * (d if kind in (1, 3) else 1) + (r if kind == 1 and flags & 1 else 0)
    n = mostly(st.just(n), st.integers(0, 64)) if n <= 64 else draw(st.integers(0, 64))  # mostly the stated length
    if dtype == 2:
        values = np.asarray(draw(st.lists(pick(st.integers(-1, 40), st.integers(-2**15, 2**15 - 1)), min_size=n, max_size=n)), "<i2")
    else:  # unit-scale values (centroids, features), counts, or anything a float32 holds
        element = pick(st.floats(-0.25, 1, width=32) | st.floats(0, 1e6, width=32), st.floats(width=32))
        values = np.asarray(draw(st.lists(element, min_size=n, max_size=n)), "<f4")
    body = struct.pack("<4sBBBBIId4s", b"ECOS", 2, kind, flags, dtype, r, d, value, tag) + values.tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers())
def test_any_header_fields_parse_into_a_valid_message_or_fail_clearly(data):
    """Random kind, R, d (B), flags, dtype, value and tag under a valid checksum: a valid message or one ECOSInputError, little memory."""
    tracemalloc.start()
    try:
        msg = parse_message(data)
    except ECOSInputError as err:
        assert str(err) and "\n" not in str(err)
        return
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 2**20 + 8 * len(data), peak
    assert type(msg) in MESSAGE_TYPES.values() and msg.to_bytes() == data
    if isinstance(msg, CentroidsMessage):
        assert np.isfinite(msg.centroids).all()
        try:
            check_centroids(msg)
        except ECOSInputError as err:
            assert "norm" in str(err) or "radius" in str(err)
    if isinstance(msg, ScoresMessage):
        assert np.isfinite(msg.scores).all() and (msg.scores >= 0).all()
        assert msg.epsilon is None or (np.isfinite(msg.epsilon) and msg.epsilon > 0)


def test_a_message_file_larger_than_any_message_is_refused_unread(world, tmp_path):
    with open(tmp_path / "huge.ecos", "wb") as f:  # sparse: no disk, and reading it would take GiBs of memory
        f.write((world / "scores.ecos").read_bytes())
        f.truncate(MAX_MESSAGE_BYTES + 1)
    tracemalloc.start()
    try:
        refused(cloud.main, "select", "--state", world / "cloud", "--scores", tmp_path / "huge.ecos", "--budget", 5, "--out", tmp_path / "p.json",
                words=["--scores", "huge.ecos", "more than any ECOS message"], folder=tmp_path)
        assert tracemalloc.get_traced_memory()[1] < 2**26
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------- finding 7: trees and lists


@pytest.fixture
def tree(tmp_path):
    """Domains a and b with classes x, y (6 images each), and the traps: a symlink loop, a newline and a non-UTF-8 name."""
    root = tmp_path / "tree"
    for k, d in enumerate("ab"):
        for c in "xy":
            write_pngs(root / d / c, 6, seed=k)
    os.symlink("loop.png", root / "b" / "x" / "loop.png")
    (root / "b" / "y" / "new\nline.png").write_bytes((root / "b" / "y" / "img000.png").read_bytes())
    os.link(root / "b" / "x" / "img000.png", os.fsencode(root / "b" / "x") + b"/bad\xff.png")
    return root


def test_a_symlink_loop_or_a_bad_name_in_a_folders_tree_is_skipped_with_a_warning(tree):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = split_folders(tree, "a", seed=1)
    text = "\n".join(str(w.message) for w in caught)
    assert "loop.png" in text and "cannot be read" in text and "not valid UTF-8" in text
    assert "b/y/new\nline.png" in splits.paths["pool"] and not any("loop" in p or "\udcff" in p for p in splits.paths["pool"])


def test_an_unreadable_folder_is_skipped_with_a_warning(tree, monkeypatch):
    real = os.scandir

    def scandir(path):
        if str(path).endswith("b/y"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = split_folders(tree, "a", seed=1)
    assert any("b/y" in str(w.message) and "Permission denied" in str(w.message) for w in caught)
    assert not any(p.startswith("b/y/") for p in splits.paths["pool"]) and any(p.startswith("b/x/") for p in splits.paths["pool"])


def test_a_newline_in_a_file_name_survives_the_pool_list(tree, tmp_path):
    rc, _, err = call(cloud.main, "split-folders", "--root", tree, "--client-domain", "a", "--seed", 1,
                      "--pool-list", tmp_path / "pool.txt", "--client-dir", tmp_path / "client")
    assert rc == 0, err
    assert "--root: skipping" in err and "loop.png" in err  # named with this command's flag
    assert '"b/y/new\\nline.png"' in (tmp_path / "pool.txt").read_text().splitlines()
    ok(cloud.main, "compress", "--pool", tree, "--pool-list", tmp_path / "pool.txt", "--phi", "pca", "--image-size", 8,
       "--centroids", 3, "--out-dir", tmp_path / "cloud")
    assert "b/y/new\nline.png" in cloud_state.load_state(tmp_path / "cloud").pool_paths
    rc, _, err = call(cloud.main, "compress", "--pool", tree, "--phi", "pca", "--image-size", 8, "--centroids", 3, "--out-dir", tmp_path / "all")
    assert rc == 0 and "loop.png" in err and "not valid UTF-8" in err


@pytest.mark.parametrize("entry", ["../escape.png", "a/../../escape.png", "/etc/passwd"])
def test_pool_list_entries_outside_the_pool_are_refused(tree, tmp_path, entry):
    (tmp_path / "escape.png").write_bytes((tree / "a/x/img000.png").read_bytes())
    (tmp_path / "list.txt").write_text(f"a/x/img000.png\n{entry}\n")
    refused(cloud.main, "compress", "--pool", tree, "--pool-list", tmp_path / "list.txt", "--centroids", 1, "--out-dir", tmp_path / "out",
            words=["--pool-list", "list.txt", entry, "not a path inside --pool"], folder=tmp_path)


def test_an_empty_pool_blames_pool_before_any_phi_work(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()

    def no_phi(*args):
        raise AssertionError("φ was built for an empty pool")

    monkeypatch.setattr(cloud_compress, "_resolve_phi", no_phi)
    start = time.perf_counter()
    refused(cloud.main, "compress", "--pool", tmp_path / "empty", "--centroids", 8, "--out-dir", tmp_path / "out",
            words=["--pool", "holds no images"], folder=tmp_path)
    assert time.perf_counter() - start < 10
