"""`ecos-cloud` and `ecos-client` as programs: the same proxy set as in process, clear failures, nothing per sample."""

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from ecos_pl.cli import client, cloud
from ecos_pl.protocol import ECOSClient
from ecos_pl.protocol.messages import (
    HEADER_BYTES,
    SCHEMA_VERSION,
    CentroidsMessage,
    LabelsMessage,
    ProxyFeaturesMessage,
    ScoresMessage,
)
from ecos_pl.protocol.label import CLOUD_VOTE_K, neighbour_vote
from ecos_pl.protocol.samplers import ECOSSampler

R = 20


def call(main, *argv):
    """Run a program's main in process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def ok(main, *argv):
    rc, out, err = call(main, *argv)
    assert rc == 0, err + out
    return out


def raw_message(kind, values, *, r=None, d=1, flags=0, dtype=1, value=0.0, tag=bytes(4), version=SCHEMA_VERSION, fmt="<f4"):
    """A message built from the documented header layout, with a valid CRC (to reach the checks behind it)."""
    values = np.asarray(values, dtype=fmt)
    r = len(values) if r is None else r
    body = struct.pack("<4sBBBBIId4s", b"ECOS", version, kind, flags, dtype, r, d, value, tag) + values.tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.fixture(scope="module")
def world(tmp_path_factory, mixture):
    """Pool and client features on disk, and one compressed cloud state (R=20) that tests only read."""
    root = tmp_path_factory.mktemp("cli")
    np.save(root / "pool.npy", mixture["pool"])
    np.save(root / "client.npy", mixture["client"])
    ok(cloud.main, "compress", "--features", root / "pool.npy", "--centroids", R, "--seed", 3, "--out-dir", root / "cloud")
    # exact counts: the tests below compare against in-process selections (the default, Gaussian ε = 0.58, is tested on its own)
    ok(client.main, "score", "--centroids", root / "cloud/centroids.ecos", "--features", root / "client.npy", "--epsilon", "none",
       "--out", root / "scores.ecos")
    return root


def test_help_of_every_program_and_command():
    for main, commands in ((cloud.main, ["compress", "select", "proxy-features", "labels", "split-folders"]), (client.main, ["score", "label"])):
        rc, out, _ = call(main, "--help")
        assert rc == 0 and "examples" in out
        for command in commands:
            rc, out, _ = call(main, command, "--help")
            assert rc == 0 and "usage:" in out and "example" in out, command


def test_entry_points_run_as_programs():
    bindir = Path(sys.executable).parent
    for name in ("ecos-cloud", "ecos-client"):
        exe = shutil.which(name, path=str(bindir)) or shutil.which(name)
        assert exe, f"{name} is not installed: run `uv sync`"
        proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "usage:" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "ecos_pl.cli.client", "score", "--epsilon", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--epsilon" in proc.stderr


@pytest.mark.parametrize("epsilon", [None, 0.5])
def test_programs_select_exactly_what_the_in_process_sampler_selects(world, mixture, tmp_path, epsilon):
    noise = ["--epsilon", "none"] if epsilon is None else ["--epsilon", epsilon, "--seed", 3]
    out = ok(client.main, "score", "--centroids", world / "cloud/centroids.ecos", "--features", world / "client.npy", *noise, "--out", tmp_path / "s.ecos")
    assert "privacy: ε = " + ("∞" if epsilon is None else "0.5") in out
    ok(cloud.main, "select", "--state", world / "cloud", "--scores", tmp_path / "s.ecos", "--budget", 300, "--out", tmp_path / "proxy.json")
    proxy = json.loads((tmp_path / "proxy.json").read_text())
    sel = ECOSSampler(n_centroids=R).sample(mixture["pool"], ECOSClient(mixture["client"], epsilon=epsilon, seed=3), 300, 3)
    np.testing.assert_array_equal(proxy["indices"], sel.indices)
    assert proxy["allocation"] == sel.diagnostics["allocation"].tolist()
    assert proxy["bytes"]["down_per_client"] == sel.bytes_down and proxy["clients"][0]["bytes_up"] == sel.bytes_up
    assert proxy["clients"][0]["epsilon"] == epsilon
    assert proxy["paths"] is None  # the pool came as features


def test_serialised_scores_hold_no_per_sample_values(world, mixture):
    data = (world / "scores.ecos").read_bytes()
    centroids = CentroidsMessage.from_bytes((world / "cloud/centroids.ecos").read_bytes())
    assert len(data) == HEADER_BYTES + 4 * R == ScoresMessage.from_bytes(data).nbytes
    exact = ECOSClient(mixture["client"]).score(centroids).scores
    np.testing.assert_array_equal(np.frombuffer(data[28 : 28 + 4 * R], "<f4"), exact)
    unit = mixture["client"] / np.linalg.norm(mixture["client"], axis=1, keepdims=True)
    for rows in (mixture["client"], unit.astype(np.float32)):
        for row in rows:
            assert row.tobytes() not in data and row[:2].tobytes() not in data


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_released_noise_of_the_program_passes_a_ks_test(world, tmp_path, mechanism):
    """Many releases of known counts (200 per centroid: never clipped); released - exact ~ the mechanism's noise.

    Gaussian is the program's default (no --mechanism), calibrated to (ε, δ = 1e-5) by dp-accounting.
    """
    from ecos_pl.protocol.privacy import gaussian_sigma

    centroids = CentroidsMessage.from_bytes((world / "cloud/centroids.ecos").read_bytes()).centroids
    np.save(tmp_path / "c.npy", np.repeat(centroids, 200, axis=0))
    eps, noise = 0.5, []
    chosen = ["--mechanism", "laplace"] if mechanism == "laplace" else []
    for seed in range(50):
        out = tmp_path / f"s{seed}.ecos"
        printed = ok(client.main, "score", "--centroids", world / "cloud/centroids.ecos", "--features", tmp_path / "c.npy",
                     "--epsilon", eps, *chosen, "--seed", seed, "--out", out)
        msg = ScoresMessage.from_bytes(out.read_bytes())
        assert msg.epsilon == eps
        noise.append(msg.scores.astype(np.float64) - 200.0)
    noise = np.concatenate(noise)
    # independent draws: float32 counts near 200 collide only by chance (a few in a thousand at most)
    assert len(noise) == 50 * R and len(np.unique(noise)) >= len(noise) - 5
    if mechanism == "laplace":
        right, wrong_scale, wrong_shape = stats.laplace(0, 1 / eps), stats.laplace(0, 2 / eps), stats.norm(0, np.sqrt(2) / eps)
        assert "Laplace(1/ε)" in printed
    else:
        sigma = gaussian_sigma(eps, 1e-5)
        right, wrong_scale, wrong_shape = stats.norm(0, sigma), stats.norm(0, 1.5 * sigma), stats.laplace(0, sigma / np.sqrt(2))  # 20 %: test_privacy
        assert f"σ = {sigma:.4g}" in printed and "δ = 1e-05" in printed
    assert stats.kstest(noise, right.cdf).pvalue > 1e-3
    assert stats.kstest(noise, wrong_scale.cdf).pvalue < 1e-3  # a wrong scale is rejected
    assert stats.kstest(noise, wrong_shape.cdf).pvalue < 1e-3  # and so is the wrong shape


def test_three_clients_on_three_domains_share_one_proxy_set(tmp_path):
    rng = np.random.default_rng(7)
    k, d = 20, 32
    means = rng.normal(size=(k, d)) * 3.0
    pool = np.concatenate([means[i] + rng.normal(size=(400, d)) for i in range(k)]).astype(np.float32)
    component = np.repeat(np.arange(k), 400)
    np.save(tmp_path / "pool.npy", pool)
    ok(cloud.main, "compress", "--features", tmp_path / "pool.npy", "--centroids", 40, "--seed", 1, "--out-dir", tmp_path / "cloud")
    domains, epsilons, files = [3, 9, 15], [0.5, 2.0, None], []
    for dom, eps in zip(domains, epsilons):
        np.save(tmp_path / f"c{dom}.npy", (means[dom] + rng.normal(size=(300, d))).astype(np.float32))
        files.append(tmp_path / f"scores{dom}.ecos")
        ok(client.main, "score", "--centroids", tmp_path / "cloud/centroids.ecos", "--features", tmp_path / f"c{dom}.npy",
           "--epsilon", "none" if eps is None else eps, "--seed", dom, "--out", files[-1])
    # τ = 1 splits the budget in proportion to the summed scores: each client's domain gets about its third.
    # The default τ = 0.5 favours the clusters with the most votes, so a domain that k-means split in two gets less.
    for tau, share in (("1", 60), (None, 30)):
        out = ok(cloud.main, "select", "--state", tmp_path / "cloud", "--scores", *files, "--budget", 300,
                 *([] if tau is None else ["--temperature", tau]), "--out", tmp_path / "proxy.json")
        proxy = json.loads((tmp_path / "proxy.json").read_text())
        got = component[proxy["indices"]]
        assert len(got) == 300 and len(set(proxy["indices"])) == 300
        for dom in domains:
            assert (got == dom).sum() >= share, (tau, dom, np.bincount(got, minlength=k))
        # Gaussian noise at ε = 0.5 (σ ≈ 9.6) leaves clipped positive mass on the 37 empty clusters
        assert np.isin(got, domains).mean() >= 0.85
    assert [c["epsilon"] for c in proxy["clients"]] == epsilons  # each client's ε is its own
    assert "ε = 0.5" in out and "ε = 2" in out and "ε = ∞" in out
    assert proxy["bytes"]["up"] == 3 * (HEADER_BYTES + 4 * 40)


def test_pseudo_label_round(world, mixture, tmp_path):
    ok(cloud.main, "select", "--state", world / "cloud", "--scores", world / "scores.ecos", "--budget", 100, "--out", tmp_path / "proxy.json")
    out = ok(cloud.main, "proxy-features", "--state", world / "cloud", "--proxy", tmp_path / "proxy.json", "--out", tmp_path / "pf.ecos")
    pf = ProxyFeaturesMessage.from_bytes((tmp_path / "pf.ecos").read_bytes())
    assert pf.n_samples == 100 and "ε" not in out.split("privacy:")[0]
    labels = (np.arange(len(mixture["client"])) % 3).astype(np.int64)
    np.save(tmp_path / "labels.npy", labels)
    eps_scores = tmp_path / "noisy.ecos"
    ok(client.main, "score", "--centroids", world / "cloud/centroids.ecos", "--features", world / "client.npy", "--epsilon", 1, "--out", eps_scores)
    out = ok(client.main, "label", "--proxy-features", tmp_path / "pf.ecos", "--features", world / "client.npy", "--labels", tmp_path / "labels.npy",
             "--sigma", 2, "--k", 10, "--scores", eps_scores, "--seed", 0, "--out", tmp_path / "labels.ecos")
    data = (tmp_path / "labels.ecos").read_bytes()
    msg = LabelsMessage.from_bytes(data)
    assert len(data) == HEADER_BYTES + 2 * 100 and msg.sigma == 2.0 and set(np.unique(msg.labels)) <= {-1, 0, 1, 2}
    assert "whole exchange" in out and "δ = 1e-05" in out
    out = ok(cloud.main, "labels", "--state", world / "cloud", "--proxy", tmp_path / "proxy.json", "--labels", tmp_path / "labels.ecos",
             "--out", tmp_path / "proxy_labels.json")
    joined = json.loads((tmp_path / "proxy_labels.json").read_text())
    assert joined["labels_released"] == msg.labels.tolist() and joined["indices"] == json.loads((tmp_path / "proxy.json").read_text())["indices"]
    # the cloud's neighbour vote, train.py's default, over the very features it sent down
    assert joined["cloud_vote_k"] == CLOUD_VOTE_K and joined["labels"] == neighbour_vote(pf.features, msg.labels, CLOUD_VOTE_K).tolist()
    assert joined["labels"] != joined["labels_released"] and "neighbour vote changed" in out
    assert joined["epsilon_exchange"] is None  # those scores were exact counts: the exchange is not DP
    assert np.isfinite(joined["epsilon_labels"]) and "whole exchange" in out
    ok(cloud.main, "labels", "--state", world / "cloud", "--proxy", tmp_path / "proxy.json", "--labels", tmp_path / "labels.ecos",
       "--cloud-vote-k", 0, "--out", tmp_path / "as_sent.json")
    assert json.loads((tmp_path / "as_sent.json").read_text())["labels"] == msg.labels.tolist()  # k = 0: the client's labels


# --------------------------------------------------------------------------- bad inputs


def _bad_cases(world: Path, tmp: Path):
    """(name, program, argv, words the one-line error must contain); every argv writes to tmp/out.*"""
    sc = ScoresMessage.from_bytes((world / "scores.ecos").read_bytes())
    good = (world / "scores.ecos").read_bytes()
    (tmp / "v1.ecos").write_bytes(good[:4] + bytes([1]) + good[5:])
    (tmp / "trunc.ecos").write_bytes(good[:-6])
    flipped = bytearray(good)
    flipped[HEADER_BYTES] ^= 0x10
    (tmp / "altered.ecos").write_bytes(bytes(flipped))
    (tmp / "nan.ecos").write_bytes(raw_message(2, [1.0, np.nan] + [1.0] * (R - 2), tag=sc.tag, flags=4))
    (tmp / "neg.ecos").write_bytes(raw_message(2, [1.0, -2.0] + [1.0] * (R - 2), tag=sc.tag, flags=4))
    (tmp / "short.ecos").write_bytes(ScoresMessage(np.ones(R - 1), tag=sc.tag).to_bytes())
    (tmp / "other.ecos").write_bytes(ScoresMessage(sc.scores, tag=b"\x00\x01\x02\x03").to_bytes())
    (tmp / "lie.ecos").write_bytes(raw_message(2, [1.0] * R, r=R + 1, tag=sc.tag, flags=4))
    np.save(tmp / "wrongdim.npy", np.ones((10, 5), np.float32))
    nan = np.ones((10, 32), np.float32)
    nan[3, 4] = np.nan
    np.save(tmp / "nan.npy", nan)
    (tmp / "junk.npy").write_bytes(b"not an array")
    state = ["--state", world / "cloud"]
    sel = lambda f: ["select", *state, "--scores", f, "--budget", 100, "--out", tmp / "out.json"]  # noqa: E731
    score = lambda *a: ["score", "--centroids", world / "cloud/centroids.ecos", *a, "--out", tmp / "out.ecos"]  # noqa: E731
    return [
        ("wrong version", cloud.main, sel(tmp / "v1.ecos"), ["schema version 1"]),
        ("truncated", cloud.main, sel(tmp / "trunc.ecos"), ["checksum"]),
        ("altered", cloud.main, sel(tmp / "altered.ecos"), ["checksum"]),
        ("nan scores", cloud.main, sel(tmp / "nan.ecos"), ["NaN"]),
        ("negative scores", cloud.main, sel(tmp / "neg.ecos"), ["negative"]),
        ("wrong-length scores", cloud.main, sel(tmp / "short.ecos"), [f"{R - 1} scores", f"R={R}"]),
        ("length field lies", cloud.main, sel(tmp / "lie.ecos"), ["R=21", "values"]),
        ("scores of other centroids", cloud.main, sel(tmp / "other.ecos"), ["other centroids"]),
        ("wrong kind", cloud.main, sel(world / "cloud/centroids.ecos"), ["centroids message", "wrong file"]),
        ("missing scores", cloud.main, sel(tmp / "nothing.ecos"), ["does not exist"]),
        ("same client twice", cloud.main, ["select", *state, "--scores", world / "scores.ecos", world / "scores.ecos", "--budget", 5, "--out", tmp / "out.json"], ["twice"]),
        ("cloud vote k < 0", cloud.main, ["labels", *state, "--proxy", tmp / "proxy.json", "--labels", world / "scores.ecos", "--cloud-vote-k", -1, "--out", tmp / "out.json"], ["--cloud-vote-k", "at least 0"]),
        ("budget 0", cloud.main, ["select", *state, "--scores", world / "scores.ecos", "--budget", 0, "--out", tmp / "out.json"], ["--budget", "at least 1"]),
        ("budget > pool", cloud.main, ["select", *state, "--scores", world / "scores.ecos", "--budget", 10**6, "--out", tmp / "out.json"], ["--budget", "pool"]),
        ("epsilon 0", client.main, score("--features", world / "client.npy", "--epsilon", 0), ["--epsilon", "positive"]),
        ("epsilon nan", client.main, score("--features", world / "client.npy", "--epsilon", "nan"), ["--epsilon"]),
        ("wrong dimension", client.main, score("--features", tmp / "wrongdim.npy"), ["dimension 5", "dimension 32"]),
        ("nan features", client.main, score("--features", tmp / "nan.npy"), ["NaN"]),
        ("not an npy", client.main, score("--features", tmp / "junk.npy"), ["not a readable .npy"]),
        ("scores as centroids", client.main, ["score", "--centroids", world / "scores.ecos", "--features", world / "client.npy", "--out", tmp / "out.ecos"], ["scores message"]),
        ("no data", client.main, ["score", "--centroids", world / "cloud/centroids.ecos", "--out", tmp / "out.ecos"], ["--images", "--features"]),
        ("R > pool", cloud.main, ["compress", "--features", world / "pool.npy", "--centroids", 10**6, "--out-dir", tmp / "out.d"], ["--centroids", "pool"]),
        ("no state", cloud.main, ["select", "--state", tmp, "--scores", world / "scores.ecos", "--budget", 5, "--out", tmp / "out.json"], ["no cloud state"]),
    ]


def test_every_bad_input_is_one_sentence_exit_2_and_nothing_written(world, tmp_path):
    for name, main, argv, words in _bad_cases(world, tmp_path):
        before = sorted(p.name for p in tmp_path.iterdir())
        rc, out, err = call(main, *argv)
        assert rc == 2, (name, rc, err, out)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(("ecos-cloud: error:", "ecos-client: error:")), (name, err)
        for word in words:
            assert word in lines[0], (name, word, lines[0])
        assert sorted(p.name for p in tmp_path.iterdir()) == before, name  # nothing written, no temporary left
    assert not list(world.glob("**/.*.tmp"))


# --------------------------------------------------------------------------- images and φ files


def _image_folder(root: Path, colour, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.clip(np.asarray(colour, np.float32) + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            img[4:12, 7 if c == "a" else 2 : 9 if c == "a" else 14] = 255 - np.asarray(colour, np.uint8)
            Image.fromarray(img).save(root / c / f"{i:02d}.png")


def test_images_phi_file_and_phi_checks(tmp_path):
    for name, colour, seed in (("red", (200, 40, 40), 0), ("blue", (40, 40, 200), 1), ("grey", (120, 120, 120), 2)):
        _image_folder(tmp_path / "pool" / name, colour, 15, seed)
    _image_folder(tmp_path / "mine", (200, 40, 40), 10, 5)
    (tmp_path / "mine" / "broken.png").write_bytes(b"not a png")
    for seed in (1, 2):
        out = ok(cloud.main, "compress", "--pool", tmp_path / "pool", "--phi", "pca", "--image-size", 16, "--centroids", 6,
                 "--seed", seed, "--out-dir", tmp_path / f"cloud{seed}")
        assert "phi.safetensors" in out
    rc, out, err = call(client.main, "score", "--centroids", tmp_path / "cloud1/centroids.ecos", "--images", tmp_path / "mine", "--epsilon", "none", "--out", tmp_path / "s.ecos")
    assert rc == 0, err
    assert "skipping broken.png" in err  # an undecodable image is named and skipped
    ok(cloud.main, "select", "--state", tmp_path / "cloud1", "--scores", tmp_path / "s.ecos", "--budget", 10, "--out", tmp_path / "proxy.json")
    proxy = json.loads((tmp_path / "proxy.json").read_text())
    assert sum(p.startswith("red/") for p in proxy["paths"]) >= 8  # the client's domain, by file name
    # a φ that is not the one the centroids were computed with is refused, and nothing is written
    for argv, words in (
        (["--centroids", tmp_path / "cloud1/centroids.ecos", "--phi", tmp_path / "cloud2/phi.safetensors"], "another φ"),
        (["--centroids", tmp_path / "cloud1/centroids.ecos", "--phi", tmp_path / "cloud1/centroids.ecos"], "not a φ file"),
    ):
        rc, _, err = call(client.main, "score", *argv, "--images", tmp_path / "mine", "--out", tmp_path / "bad.ecos")
        assert rc == 2 and words in err and err.count("\n") == 1, err
        assert not (tmp_path / "bad.ecos").exists()
    # scores computed against other centroids (another seed: another φ and clustering) are refused by select
    ok(client.main, "score", "--centroids", tmp_path / "cloud2/centroids.ecos", "--images", tmp_path / "mine", "--epsilon", "none", "--out", tmp_path / "s2.ecos")
    rc, _, err = call(cloud.main, "select", "--state", tmp_path / "cloud1", "--scores", tmp_path / "s2.ecos", "--budget", 10, "--out", tmp_path / "p2.json")
    assert rc == 2 and "other centroids" in err and not (tmp_path / "p2.json").exists()
    # pool features computed elsewhere, stamped with the φ file they came from: the same centroids, tag and proxy set
    out = ok(cloud.main, "compress", "--features", tmp_path / "cloud1/state/pool_features.npy", "--phi", tmp_path / "cloud1/phi.safetensors",
             "--centroids", 6, "--seed", 1, "--out-dir", tmp_path / "cloud3")
    assert (tmp_path / "cloud3/centroids.ecos").read_bytes() == (tmp_path / "cloud1/centroids.ecos").read_bytes()
    assert (tmp_path / "cloud3/phi.safetensors").read_bytes() == (tmp_path / "cloud1/phi.safetensors").read_bytes()
    ok(client.main, "score", "--centroids", tmp_path / "cloud3/centroids.ecos", "--images", tmp_path / "mine", "--epsilon", "none", "--out", tmp_path / "s3.ecos")
    assert (tmp_path / "s3.ecos").read_bytes() == (tmp_path / "s.ecos").read_bytes()
    # labels from class folders
    ok(cloud.main, "proxy-features", "--state", tmp_path / "cloud1", "--proxy", tmp_path / "proxy.json", "--out", tmp_path / "pf.ecos")
    out = ok(client.main, "label", "--proxy-features", tmp_path / "pf.ecos", "--phi", tmp_path / "cloud1/label_phi.safetensors",
             "--images", tmp_path / "mine", "--k", 5, "--sigma", "none", "--out", tmp_path / "labels.ecos")
    assert "0=a, 1=b" in out and "ε = ∞" in out and "HOGFeatures" in out  # the vote is in the labelling φ the cloud sent
    # the protocol's φ is refused for proxy features that came in the labelling φ
    with pytest.raises(AssertionError, match="another φ"):
        ok(client.main, "label", "--proxy-features", tmp_path / "pf.ecos", "--phi", tmp_path / "cloud1/phi.safetensors",
           "--images", tmp_path / "mine", "--k", 5, "--out", tmp_path / "labels2.ecos")
