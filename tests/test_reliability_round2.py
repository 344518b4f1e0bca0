"""Issue 32 (reliability, round two), each finding replayed: memory bombs in tiny files, 16-bit and float pixels, outputs
written over inputs, partial output on a full disk, settings that passed the startup check and failed late, a killed
run that reported success, and a value that overflowed on its way into float32."""

import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ecos_pl.data.images import (
    PixelLimit,
    decode_all,
    decode_image,
    decode_images,
    pixel_limit,
)
from ecos_pl.protocol import ECOSInputError
from ecos_pl.protocol.messages import (
    CentroidsMessage,
    ProxyFeaturesMessage,
    ScoresMessage,
)
from ecos_pl.protocol.parties import cap_client_scores

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- 1. memory from tiny images


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, side: int, *, bit_depth: int, colour_type: int, extra: bytes = b"") -> Path:
    """A PNG of side x side zero pixels, compressed row by row (a few KB on disk, never built in memory here)."""
    row = b"\0" * (1 + (side * bit_depth + 7) // 8)  # filter byte + packed pixels
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


def palette_bomb(path: Path, side: int = 13375) -> Path:
    """The issue's 21.9 KB palette PNG (1 bit per index) with transparency: 13375², just under Pillow's own refusal."""
    return bomb_png(path, side, bit_depth=1, colour_type=3,
                    extra=_chunk(b"PLTE", bytes([10, 20, 30, 200, 100, 50])) + _chunk(b"tRNS", b"\0"))


PEAK_SCRIPT = textwrap.dedent("""
    import sys, warnings
    from pathlib import Path
    from ecos_pl.cli import client
    from ecos_pl.cli.common import read_images
    root = Path(sys.argv[1])
    args = client.build_parser().parse_args(["score", "--centroids", "c.ecos", "--images", str(root), "--out", "s.ecos"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, kept = read_images(root, sorted(p.name for p in root.iterdir()), 32, "--images", args)
    # VmHWM: this process's own peak (ru_maxrss would carry over the forking pytest's RSS across exec)
    print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) // 1024)
    print(len(images), *kept)
    for w in caught:
        print(w.message)
""")


def test_image_bombs_are_skipped_from_their_header_and_memory_stays_bounded(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    palette_bomb(root / "palette.png")
    bomb_png(root / "bilevel.png", 13000, bit_depth=1, colour_type=0)  # the 52 KB 1-bit file
    Image.new("RGB", (40, 30), (200, 40, 40)).save(root / "ok.png")
    assert (root / "palette.png").stat().st_size < 30_000
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(root)], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    peak_mb, kept, *messages = proc.stdout.strip().splitlines()
    assert int(peak_mb) < 400, f"peak RSS {peak_mb} MB"
    assert kept == "1 ok.png"
    for name, side in (("palette.png", 13375), ("bilevel.png", 13000)):
        assert any(name in m and f"{side} x {side}" in m and "--max-pixels" in m for m in messages), messages


def test_the_pixel_limit_is_a_setting_of_the_data_sources_and_the_programs(tmp_path):
    Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), (4, 5, 6)).save(tmp_path / "b.png")
    with pixel_limit(100, "data.max_image_pixels"):
        _, ok, failed = decode_all(tmp_path, ["a.png", "b.png"], 8)
    assert ok.tolist() == [False, True]
    assert failed == [("a.png", "it is 20 x 20 = 400 pixels, more than data.max_image_pixels=100 allows")]
    with pytest.warns(UserWarning, match=r"--max-pixels=100"):
        _, kept = decode_images(tmp_path, ["a.png", "b.png"], 8, "--images", PixelLimit(100, "--max-pixels"))
    assert kept == ["b.png"]
    with pytest.raises(ECOSInputError, match=r"^data\.max_image_pixels must be at least 1, got 0\.$"), pixel_limit(0, "data.max_image_pixels"):
        pass


# --------------------------------------------------------------------------- 2. every mode decodes to its RGB pixels


def _grey(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.uint8)[None, :]
    return np.repeat(v[..., None], 3, axis=2)


def _mode_files(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """(file, reference uint8 RGB [1, 4, 3]) per Pillow mode."""
    sixteen = np.array([[0, 1000, 30000, 65535]], dtype=np.uint16)
    expect16 = _grey(np.rint(sixteen[0] / 257))
    out = {}
    Image.fromarray(sixteen).save(folder / "i16.png")  # opens as I;16: once solid white
    out["I;16"] = (folder / "i16.png", expect16)
    Image.frombytes("I;16B", (4, 1), sixteen.astype(">u2").tobytes()).save(folder / "i16b.tif")
    out["I;16B"] = (folder / "i16b.tif", expect16)
    Image.fromarray(sixteen.astype(np.int32)).save(folder / "i32.tif")  # mode I
    out["I"] = (folder / "i32.tif", expect16)
    Image.fromarray(np.array([[0, 0.25, 0.5, 1.0]], dtype=np.float32)).save(folder / "f.tif")
    out["F"] = (folder / "f.tif", _grey([0, 64, 128, 255]))
    p = Image.new("P", (4, 1))
    p.putpalette([10, 20, 30, 200, 100, 50])
    p.putdata([0, 1, 1, 0])
    p.save(folder / "p.png", transparency=0)
    out["P"] = (folder / "p.png", np.array([[[10, 20, 30], [200, 100, 50], [200, 100, 50], [10, 20, 30]]], dtype=np.uint8))
    cmyk = Image.new("CMYK", (4, 1))
    cmyk.putdata([(100, 50, 0, 60), (0, 0, 0, 0), (255, 255, 255, 255), (0, 0, 0, 255)])
    cmyk.save(folder / "cmyk.tif")
    ref = [[round(255 * (1 - c / 255) * (1 - k / 255)) for c in px[:3]] for px, k in
           (((100, 50, 0), 60), ((0, 0, 0), 0), ((255, 255, 255), 255), ((0, 0, 0), 255))]
    out["CMYK"] = (folder / "cmyk.tif", np.array([ref], dtype=np.uint8))
    la = Image.new("LA", (4, 1))
    la.putdata([(0, 255), (77, 0), (128, 128), (255, 10)])
    la.save(folder / "la.png")
    out["LA"] = (folder / "la.png", _grey([0, 77, 128, 255]))
    Image.fromarray(np.array([[0, 1, 1, 0]], dtype=bool)).save(folder / "one.png")
    out["1"] = (folder / "one.png", _grey([0, 255, 255, 0]))
    return out


def test_every_mode_decodes_to_its_reference_rgb(tmp_path):
    files = _mode_files(tmp_path)
    for mode, (path, expected) in files.items():
        with Image.open(path) as im:
            assert im.mode == mode, (path, im.mode)
        got = decode_image(path, 4)[:1]  # 4 x 1 -> 4 x 4: rows are the same pixels
        assert np.array_equal(got, expected), (mode, got.tolist(), expected.tolist())
    # float greys beyond [0, 1] are read as 0..255
    Image.fromarray(np.array([[0, 100.0, 255.0, 300.0]], dtype=np.float32)).save(tmp_path / "f255.tif")
    assert decode_image(tmp_path / "f255.tif", 4)[0, :, 0].tolist() == [0, 100, 255, 255]


def test_a_16_bit_image_is_resized_in_full_precision(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    got = decode_image(tmp_path / "ramp.png", 8)[..., 0].astype(int)
    reference = np.asarray(Image.fromarray(np.rint(ramp / 257).astype(np.uint8)).resize((8, 8), Image.Resampling.BILINEAR), dtype=int)
    assert np.abs(got - reference).max() <= 1 and got.min() < 20 and got.max() > 235


# --------------------------------------------------------------------------- 7. values checked after the cast to float32


def test_a_value_that_overflows_float32_is_refused_not_stored_as_inf():
    with pytest.raises(ECOSInputError, match=r"^scores hold 1e\+39, beyond the float32 range of a message"):
        ScoresMessage(np.array([1e39, 1.0]))
    with pytest.raises(ECOSInputError, match=r"^centroids hold 1e\+39"):
        CentroidsMessage(np.array([[1e39, 0.0]]))
    with pytest.raises(ECOSInputError, match=r"^radii hold"):
        CentroidsMessage(np.ones((2, 2)), radii=np.array([1e40, 1.0]))
    with pytest.raises(ECOSInputError, match=r"^proxy features hold"):
        ProxyFeaturesMessage(np.array([[-1e39, 0.0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the largest float32 is taken as it is, and the cap stays finite
        big = ScoresMessage(np.array([3.4e38, 1.0]))
        capped, _ = cap_client_scores([big.scores, np.array([1.0, 1.0], dtype=np.float32)])
    assert np.isfinite(big.scores).all() and all(np.isfinite(c).all() for c in capped)


# --------------------------------------------------------------------------- 3. outputs written over inputs


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """A compressed cloud from images (φ file, state) and one client's scores, built once; tests copy what they change."""
    from test_cli import _image_folder, ok

    from ecos_pl.cli import client, cloud

    root = tmp_path_factory.mktemp("programs")
    for name, colour, seed in (("red", (200, 40, 40), 0), ("blue", (40, 40, 200), 1)):
        _image_folder(root / "pool" / name, colour, 6, seed)
    _image_folder(root / "mine", (200, 40, 40), 4, 5)
    ok(cloud.main, "compress", "--pool", root / "pool", "--phi", "pca", "--label-phi", "none", "--image-size", 16, "--centroids", 4,
       "--out-dir", root / "cloud")
    ok(client.main, "score", "--centroids", root / "cloud/centroids.ecos", "--images", root / "mine", "--epsilon", "none",
       "--out", root / "scores.ecos")
    return root


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_output_that_is_an_input_is_refused_before_anything_is_read(programs):
    from test_reliability_programs import refused

    from ecos_pl.cli import client, cloud

    before = _snapshot(programs)
    w = programs
    cases = [
        (client.main, ["score", "--centroids", w / "cloud/centroids.ecos", "--images", w / "mine", "--out", w / "cloud/centroids.ecos"],
         ["--out", "--centroids"]),
        (client.main, ["score", "--centroids", w / "cloud/centroids.ecos", "--images", w / "mine", "--out", w / "cloud/phi.safetensors"],
         ["--out", "--phi"]),
        (client.main, ["score", "--centroids", w / "cloud/centroids.ecos", "--phi", w / "cloud/phi.safetensors", "--images", w / "mine",
                       "--out", w / "cloud/../cloud/phi.safetensors"], ["--out", "--phi"]),
        (cloud.main, ["select", "--state", w / "cloud", "--scores", w / "scores.ecos", "--budget", 4, "--out", w / "scores.ecos"],
         ["--out", "--scores"]),
        (cloud.main, ["select", "--state", w / "cloud", "--scores", w / "scores.ecos", "--budget", 4, "--out", w / "cloud/state/settings.json"],
         ["--out", "inside --state"]),
        (cloud.main, ["select", "--state", w / "cloud/state", "--scores", w / "scores.ecos", "--budget", 4, "--out", w / "cloud/state/new.json"],
         ["--out", "inside --state"]),
        (cloud.main, ["select", "--state", w / "cloud", "--scores", w / "scores.ecos", "--budget", 4, "--out", w / "cloud/centroids.ecos"],
         ["--out", "--state"]),
        (cloud.main, ["compress", "--features", w / "cloud/state/pool_features.npy", "--centroids", 2, "--out-dir", w / "cloud"],
         ["--out-dir", "--features"]),
        (cloud.main, ["split-folders", "--root", w / "pool", "--client-domain", "red", "--pool-list", w / "pool.txt",
                      "--client-dir", w / "pool/red/copy"], ["--client-dir", "inside --root"]),
    ]
    for main, argv, words in cases:
        line = refused(main, *argv, words=words)
        assert line.count(".") >= 1 and "\n" not in line
    assert _snapshot(programs) == before  # nothing read was changed, nothing new written
    # a φ file given from --out-dir itself is still fine: it is read first and written back unchanged
    from test_cli import ok

    ok(cloud.main, "compress", "--pool", w / "pool", "--phi", w / "cloud/phi.safetensors", "--label-phi", "none", "--centroids", 4,
       "--out-dir", w / "cloud")
    assert _snapshot(w / "cloud")["phi.safetensors"] == before["cloud/phi.safetensors"]


# --------------------------------------------------------------------------- 4. partial output on a full disk

FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    from ecos_pl.cli import cloud
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG, as a full disk fails with ENOSPC
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.exit(cloud.main(sys.argv[2:]))
""")


def test_compress_on_a_full_disk_leaves_nothing_and_names_the_file(programs, tmp_path):
    sizes = {name: len(b) for name, b in _snapshot(programs / "cloud").items()}
    largest = max(sizes, key=sizes.get)
    limit = sorted(sizes.values())[-2] + 1  # every file fits but the largest
    out = tmp_path / "out"
    argv = ["compress", "--pool", str(programs / "pool"), "--phi", "pca", "--label-phi", "none", "--image-size", "16", "--centroids", "4",
            "--out-dir", str(out)]
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(limit), *argv], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(out / largest) in lines[0] and "File too large" in lines[0], (largest, lines)
    assert [p.name for p in out.iterdir()] == [] if out.exists() else True  # no centroids.ecos, no state/ without φ


# --------------------------------------------------------------------------- 5. settings that passed the check and failed late


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["seed=4294967296"], "seed=4294967296 is larger than the largest seed Lightning takes (4294967295)."),
        (["backbone.student=no_such_model"], "backbone.student='no_such_model' is not a timm model name"),
        (["backbone.teacher=resnet18x"], "backbone.teacher='resnet18x' is not a timm model name (close: resnet18"),
        (["trainer.accelerator=tpu"], "the trainer cannot run here (trainer.accelerator=tpu, trainer.devices=1"),
        (["trainer=cpu", "trainer.devices=0"], "the trainer cannot run here (trainer.accelerator=cpu, trainer.devices=0"),
        (["+scenario.bogus=1"], "+scenario.bogus is not a setting of this run, so its value would be ignored"),
        (["+data.bogus=1"], "+data.bogus is not a setting of this run"),
        (["+scenario.teacher.epoch=3"], "+scenario.teacher.epoch is not a setting of this run, so its value would be ignored; did you mean scenario.teacher.epochs?"),
        (["+trainer.limit_val_batch=2"], "did you mean trainer.limit_val_batches?"),
        (["+budgett=3"], "did you mean budget?"),
    ],
)
def test_a_late_failing_setting_is_one_sentence_before_any_data(tmp_path, monkeypatch, overrides, words):
    from runs import call_main

    from ecos_pl import experiment

    def no_data(*args, **kwargs):
        raise AssertionError("data were built before the settings were checked")

    monkeypatch.setattr(experiment.hydra.utils, "instantiate", _only_trainers(experiment.hydra.utils.instantiate, no_data))
    run = call_main("train", tmp_path, "logger=none", "callbacks=none", *overrides)
    lines = run.stderr.strip().splitlines()
    assert run.code == 2 and len(lines) == 1 and lines[0].startswith("train.py: error: "), run.stderr[-2000:]
    assert words in lines[0], lines[0]
    assert run.results is None


def _only_trainers(instantiate, refuse):
    """hydra's instantiate for the trainer (the hardware probe); anything else (the data module) is refused."""
    def patched(node, *args, **kwargs):
        if str(node.get("_target_", "")).endswith("Trainer"):
            return instantiate(node, *args, **kwargs)
        return refuse()

    return patched


def test_keys_added_to_objects_that_take_them_pass():
    from ecos_pl.config_schema import check_additions

    check_additions(["+trainer.limit_val_batches=2", "++seed=3", "++scenario.epochs=2", "+trainer.enable_progress_bar=false"])


# --------------------------------------------------------------------------- 6. a killed run reports where it stopped

SLOW_TEACHER = textwrap.dedent("""
    import runpy, sys, time
    from pytorch_lightning.loops.training_epoch_loop import _TrainingEpochLoop
    advance = _TrainingEpochLoop.advance
    def slow(self, *args, **kwargs):   # every optimizer step takes a while: the signal lands inside Lightning's loop
        print("STEP", flush=True)
        time.sleep(0.5)
        return advance(self, *args, **kwargs)
    _TrainingEpochLoop.advance = slow
    sys.argv = ["train.py", *sys.argv[1:]]
    runpy.run_path("train.py", run_name="__main__")
""")


@pytest.mark.parametrize(("signum", "code", "name"), [(15, 143, "SIGTERM"), (2, 130, "SIGINT")])
def test_a_signal_during_training_exits_non_zero_and_says_where(tmp_path, signum, code, name):
    import os

    results = tmp_path / "results.json"
    cmd = [sys.executable, "-c", SLOW_TEACHER, "debug=smoke", "data=digits_lite", "logger=none", "callbacks=none",
           f"results_file={results}", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["ECOS_CACHE"] = str(tmp_path / "cache")  # no teacher cached by an earlier test: the signal lands in its fit
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:
            if line.startswith("STEP"):
                break
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    lines = [line for line in err.strip().splitlines() if line.startswith("train.py:")]
    assert proc.returncode == code, err[-3000:]
    assert lines == [f"train.py: stopped by {name} while training teacher: test_resnet on the pool's labels; no results were written."], err[-3000:]
    assert "Traceback" not in err
    assert not results.exists()
