"""Issue 16, findings 2, 3, 5 and 8 replayed on tiny data: files that would run code, a teacher cache poisoned by a
smoke test, damaged cache entries, and the temporaries of killed processes."""

import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ecos_pl import feature_cache as fc
from ecos_pl.atomic import CacheWarning, clean_dead_temporaries, host_tag, move_aside, write_text_atomic
from ecos_pl.data.base import DomainSplit, ECOSData
from ecos_pl.models import ImageClassifier, create_timm_model
from ecos_pl.phi import PCAPixels
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.samplers import ECOSSampler
from ecos_pl.protocol.store import DamagedSelection, load_selection, save_selection
from ecos_pl.scenarios.teacher import load_classifier, obtain_teacher, save_classifier

ROOT = Path(__file__).resolve().parents[1]


class TinySource:
    """Two domains of random 16x16 images, ten classes: 200 in the pool, 60 for the client to train on, 20 to test."""

    def load(self) -> ECOSData:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(280, 16, 16, 3), dtype=np.uint8)
        images[:140] //= 2  # domain 0 is darker: the client's domain is findable
        labels, domains = np.arange(280) % 10, (np.arange(280) >= 140).astype(int)

        def split(rows):
            return DomainSplit(images[rows], labels[rows], domains[rows])

        pool = np.r_[0:60, 140:280]
        return ECOSData("tiny", split(pool), split(np.arange(60, 120)), split(np.arange(120, 140)), ["dark", "light"],
                        [str(c) for c in range(10)], "dark")


def datamodule(cache_dir, **kwargs):
    from datamodules import ECOSDataModule

    return ECOSDataModule.from_parts(TinySource(), PCAPixels(n_components=8, seed=0), ECOSSampler(n_centroids=8), budget=20, seed=1,
                          cache_dir=None if cache_dir is None else str(cache_dir), batch_size=16, **kwargs)


def selected(cache_dir, **kwargs) -> np.ndarray:
    dm = datamodule(cache_dir, **kwargs)
    dm.setup("fit")
    return dm.selection.indices


def aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.damaged-*"))


# ---------------------------------------------------------------- finding 2: no file runs code


class RunsCode:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def payloads(tmp_path):
    """Checkpoints that would create `marker` if anything unpickled them: a bare pickle and a torch.save archive."""
    marker = tmp_path / "PWNED"
    bare, archive, junk = tmp_path / "bare.pt", tmp_path / "archive.pt", tmp_path / "junk.pt"
    bare.write_bytes(pickle.dumps({"state_dict": RunsCode(marker)}))
    torch.save({"state_dict": RunsCode(marker)}, archive)
    junk.write_bytes(b"not a checkpoint at all")
    assert not marker.exists()
    return marker, bare, archive, junk


def test_a_pickle_payload_is_refused_and_never_run(payloads):
    marker, bare, archive, junk = payloads
    for path in (bare, archive):
        with pytest.raises(ECOSInputError) as err:
            load_classifier(path, "test_resnet", 10)
        text = str(err.value)
        assert text.startswith(f"scenario.teacher.checkpoint={str(path)!r} was refused: it holds pickled objects (posix.system)")
        assert "\n" not in text and text.count(". ") == 0 and text.endswith(".")
        with pytest.raises(ECOSInputError, match=r"^backbone.pretrained='.*' was refused: it holds pickled objects"):
            create_timm_model("test_resnet", num_classes=10, pretrained=path, param="backbone.pretrained")
    for load in (lambda: load_classifier(junk, "test_resnet", 10),
                 lambda: create_timm_model("test_resnet", num_classes=10, pretrained=junk, param="phi.pretrained")):
        with pytest.raises(ECOSInputError, match=r"=.*junk.pt' could not be read as weights: it is neither a safetensors file"):
            load()
    assert not marker.exists()


def test_train_py_refuses_a_pickle_teacher_with_one_sentence(payloads, tmp_path):
    """The attack as it was reproduced: `train.py scenario.teacher.checkpoint=e.pt` with an os.system payload."""
    from runs import call_main
    from test_train import TINY

    marker, _, archive, _ = payloads
    run = call_main("train", tmp_path / "run", *TINY, "callbacks=none", f"scenario.teacher.checkpoint={archive}")
    assert run.code == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"train.py: error: scenario.teacher.checkpoint={str(archive)!r} was refused: it holds pickled objects (posix.system) "
        "that loading would have to run, and nothing was run; give a safetensors file or a checkpoint of plain tensors."
    )
    assert not marker.exists()


def test_an_altered_classifier_file_fails_its_content_hash(tmp_path):
    path = tmp_path / "t.safetensors"
    save_classifier(ImageClassifier("test_resnet", 10), path)
    flip_last_byte(path)
    with pytest.raises(ECOSInputError, match=r"^scenario.teacher.checkpoint='.*t.safetensors' fails its content hash"):
        load_classifier(path, "test_resnet", 10)
    with pytest.raises(ECOSInputError, match=r"^backbone.pretrained='.*' fails its content hash"):
        create_timm_model("test_resnet", num_classes=10, pretrained=path, param="backbone.pretrained")


def flip_last_byte(path: Path) -> None:
    """The last byte of a safetensors file is tensor data: the header still parses, the values changed."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- finding 3: the teacher cache cannot lie


def trainer_factory(tmp_path, *overrides):
    """`make_trainer_factory` on the composed app config, as train.py builds it."""
    from hydra import compose, initialize_config_dir

    from ecos_pl.experiment import make_trainer_factory

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[
            "callbacks=none", "logger=none", f"trainer.default_root_dir={tmp_path}", "trainer.accelerator=cpu",
            "+trainer.enable_progress_bar=false", *overrides,
        ])
    return make_trainer_factory(cfg)


def teacher(cache_dir, make_trainer):
    dm = datamodule(cache_dir)
    dm.load_data()
    return obtain_teacher(dm, arch="test_resnet", num_classes=10, epochs=2, seed=1, cache_dir=cache_dir, make_trainer=make_trainer)


def same_weights(a, b) -> bool:
    return all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_a_smoke_test_teacher_is_never_reused_by_a_normal_run(tmp_path):
    cache = tmp_path / "cache"
    smoke, smoke_info = teacher(cache, trainer_factory(tmp_path, "+trainer.fast_dev_run=true"))
    normal, normal_info = teacher(cache, trainer_factory(tmp_path))
    assert smoke_info["origin"] == normal_info["origin"] == "trained on client"  # the 1-step teacher is not reused
    assert smoke_info["path"] != normal_info["path"] and not same_weights(smoke, normal)
    limited, limited_info = teacher(cache, trainer_factory(tmp_path, "+trainer.limit_train_batches=1"))
    assert limited_info["origin"] == "trained on client" and limited_info["path"] not in (smoke_info["path"], normal_info["path"])
    again, again_info = teacher(cache, trainer_factory(tmp_path))
    assert again_info == {"origin": "cache", "path": normal_info["path"]} and same_weights(again, normal)
    assert teacher(cache, trainer_factory(tmp_path, "+trainer.fast_dev_run=true"))[1]["origin"] == "cache"
    # max_time: where it stops depends on the clock, so that teacher is neither cached nor read from the cache
    timed, timed_info = teacher(cache, trainer_factory(tmp_path, "+trainer.max_time='00:01:00:00'"))
    assert timed_info == {"origin": "trained on client", "path": None} and same_weights(timed, normal)
    assert len(list((cache / "teachers").iterdir())) == 3


def test_a_damaged_cached_teacher_is_moved_aside_and_retrained(tmp_path):
    cache = tmp_path / "cache"
    make_trainer = trainer_factory(tmp_path)
    clean, info = teacher(cache, make_trainer)
    path = Path(info["path"])
    flip_last_byte(path)
    with pytest.warns(CacheWarning, match=rf"cache entry {re.escape(str(path))} is damaged \(it fails its content hash"):
        back, back_info = teacher(cache, make_trainer)
    assert back_info["origin"] == "trained on client" and same_weights(back, clean)  # retrained: the same teacher
    assert len(aside(path)) == 1 and teacher(cache, make_trainer)[1]["origin"] == "cache"
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.warns(CacheWarning, match="is damaged"):
        assert teacher(cache, make_trainer)[1]["origin"] == "trained on client"
    assert len(aside(path)) == 2


# ---------------------------------------------------------------- finding 5: damaged caches are rebuilt


@pytest.fixture
def clean_selection(tmp_path):
    """(the proxy set without any cache, a cache holding this configuration's selection artifact and its path)."""
    reference = selected(None)
    cache = tmp_path / "cache"
    dm = datamodule(cache)
    dm.setup("fit")
    np.testing.assert_array_equal(dm.selection.indices, reference)
    return reference, cache, dm.pipeline.selection_path


def rerun_warns(cache, path, match) -> np.ndarray:
    with pytest.warns(CacheWarning, match=rf"cache entry {re.escape(str(path))} is damaged \({match}"):
        return selected(cache)


def test_a_truncated_selection_is_moved_aside_and_rebuilt(clean_selection):
    reference, cache, path = clean_selection
    path.write_bytes(path.read_bytes()[:100])
    np.testing.assert_array_equal(rerun_warns(cache, path, "unreadable"), reference)
    assert len(aside(path)) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt artifact is whole: reused without a word
        dm = datamodule(cache)
        dm.setup("fit")
    assert dm.report["selection_reused"]
    np.testing.assert_array_equal(dm.selection.indices, reference)


def test_an_out_of_range_or_altered_selection_is_moved_aside_and_rebuilt(clean_selection):
    reference, cache, path = clean_selection
    selection, extra = load_selection(path)
    selection.indices = selection.indices.copy()
    selection.indices[0] = 10_000  # with a checksum that matches: the range check still catches it
    save_selection(selection, path, extra)
    with pytest.raises(DamagedSelection, match="outside the pool of 200"):
        load_selection(path, n_pool=200)
    np.testing.assert_array_equal(rerun_warns(cache, path, "its indices run from .* to 10000, outside the pool"), reference)
    with np.load(path) as z:  # values changed, checksum kept
        arrays = {k: z[k] for k in z.files}
    arrays["indices"] = arrays["indices"][::-1].copy() + 1
    np.savez(path.with_suffix(".tmp.npz"), **arrays)
    os.replace(path.with_suffix(".tmp.npz"), path)
    np.testing.assert_array_equal(rerun_warns(cache, path, "its contents do not match its checksum"), reference)
    assert len(aside(path)) == 2


def feature_entry(cache) -> Path:
    dm = datamodule(cache)
    return fc.cache_entry(cache, dm.pipeline.fitted_phi(), dm.pipeline.data_id, "auto")[0]


@pytest.mark.parametrize("damage, reason", [
    ("overwrite", "its values do not match the sha256"),
    ("nan", "1 rows hold NaN or infinite values"),
    ("truncate", "not a readable feature file"),
    ("sidecar", "its sidecar .* is missing"),
])
def test_damaged_features_are_moved_aside_and_rebuilt(tmp_path, damage, reason):
    """Values overwritten in place once gave another proxy set silently; NaN gave an error that did not blame the cache."""
    reference = selected(None)
    cache = tmp_path / "cache"
    np.testing.assert_array_equal(selected(cache, reuse_selection=False), reference)
    path = feature_entry(cache)
    clean = np.array(fc.open_features(path))
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-64])
    elif damage == "sidecar":
        path.with_suffix(".json").unlink()
    else:
        values = np.load(path, mmap_mode="r+")
        if damage == "overwrite":
            values[[3, 7]] = values[[7, 3]]  # two rows swapped: still unit rows, another proxy set
        else:
            values[5, 0] = np.nan
        values.flush()
        del values
    fc._VERIFIED.clear()  # a new process: nothing checked yet
    with pytest.warns(CacheWarning, match=rf"cache entry {re.escape(str(path))} is damaged \({reason}"):
        again = selected(cache, reuse_selection=False)
    np.testing.assert_array_equal(again, reference)
    np.testing.assert_array_equal(fc.open_features(path), clean)  # rebuilt bit for bit
    assert len(aside(path)) == 1
    fc._VERIFIED.clear()
    dm = datamodule(cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt entry is whole
        _, info = fc.cached_features(cache, dm.pipeline.fitted_phi(), dm.load_data().pool.images, data_id=dm.pipeline.data_id)
    assert info["hit"]


def test_an_entry_is_checked_once_per_process_and_each_change_is_seen(tmp_path, monkeypatch):
    """The full read happens once per file and process: a run opens the entry twice (predict, then setup)."""
    images = TinySource().load().pool.images
    phi = PCAPixels(n_components=8, seed=0).fit(images)
    path = Path(fc.cached_features(tmp_path, phi, images, data_id="tiny")[1]["path"])
    scans, scan = [], fc.scan_features
    monkeypatch.setattr(fc, "scan_features", lambda a: scans.append(1) or scan(a))
    assert fc.cache_valid(path, len(images)) and scans == []  # the writer's own hash counts as checked
    fc._VERIFIED.clear()
    assert fc.cache_valid(path, len(images)) and fc.cache_valid(path, len(images))
    assert scans == [1]
    values = np.load(path, mmap_mode="r+")
    values[0, 0] += 0.5
    values.flush()
    del values
    os.utime(path, ns=(1, 1))  # a change in place that kept the size: a new mtime is enough to look again
    with pytest.warns(CacheWarning, match="do not match the sha256"):
        assert not fc.cache_valid(path, len(images))


def test_an_entry_written_before_checksums_is_rebuilt_in_place(tmp_path):
    images = TinySource().load().pool.images
    phi = PCAPixels(n_components=8, seed=0).fit(images)
    _, info = fc.cached_features(tmp_path, phi, images, data_id="tiny")
    side = Path(info["path"]).with_suffix(".json")
    old = json.loads(side.read_text())
    del old["sha256"]
    side.write_text(json.dumps(old))
    fc._VERIFIED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not damage: an older version's entry, replaced where it lies
        _, again = fc.cached_features(tmp_path, phi, images, data_id="tiny")
    assert not again["hit"] and "sha256" in json.loads(side.read_text()) and aside(Path(info["path"])) == []


def test_phi_that_gives_nan_caches_nothing_and_blames_phi(tmp_path):
    images = TinySource().load().pool.images

    class NaNPhi(PCAPixels):
        def _features(self, x):
            out = super()._features(x)
            out[0, 0] = np.nan
            return out

    phi = NaNPhi(n_components=8, seed=0).fit(images)
    with pytest.raises(RuntimeError, match="φ produced NaN or infinite features in 1 of 200 pool rows; nothing was cached"):
        fc.cached_features(tmp_path, phi, images, data_id="tiny")
    assert list((tmp_path / "features").iterdir()) == []


# ---------------------------------------------------------------- finding 8: litter of dead processes


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from ecos_pl.feature_cache import FeatureWriter
    features = np.load(sys.argv[2])
    w = FeatureWriter(sys.argv[1], features.shape, np.float32, {"by": "the other run"})
    w.write(0, features)
    print(w.tmp, flush=True)
    sys.stdin.readline()  # killed here, or told to finish
    w.commit()
""")


def start_writer(path: Path, features: np.ndarray, tmp_path: Path):
    np.save(tmp_path / "features-in.npy", features)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(tmp_path / "features-in.npy")], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, Path(proc.stdout.readline().strip())


def test_temporaries_of_killed_writers_are_removed_by_the_next_run(tmp_path):
    """kill -9 in the middle of a feature write, a teacher write and a selection write: the next run removes what they left."""
    images = TinySource().load().pool.images
    phi = PCAPixels(n_components=8, seed=0).fit(images)
    path, _ = fc.cache_entry(tmp_path, phi, "tiny", "auto")
    proc, tmp = start_writer(path, phi.transform(images), tmp_path)
    assert tmp.is_file() and tmp.name == f"{path.stem}.{host_tag()}-{proc.pid}.f32.tmp"
    proc.kill()
    proc.wait()
    pid = dead_pid()
    teachers, selections = tmp_path / "teachers", tmp_path / "selections"
    left = [teachers / f".teacher-0123456789abcdef.safetensors.{host_tag()}-{pid}-abc_1234.tmp",
            selections / f".0123456789abcdef0123.npz.{host_tag()}-{pid}-zz9_qq12.tmp"]
    other_host = selections / f".x.npz.{'0' * 8 if host_tag() != '0' * 8 else '1' * 8}-{pid}-aaaaaaaa.tmp"
    live = selections / f".y.npz.{host_tag()}-{os.getpid()}-bbbbbbbb.tmp"
    for p in (*left, other_host, live):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    z, info = fc.cached_features(tmp_path, phi, images, data_id="tiny")  # the next run on this cache
    assert not tmp.exists() and not info["hit"]
    np.testing.assert_array_equal(z, phi.transform(images))
    assert clean_dead_temporaries(teachers) == [left[0]]
    write_text_atomic(selections / "other.txt", "any write in a folder cleans it")
    assert not left[1].exists() and other_host.exists() and live.exists()  # another host's pid means nothing here


def test_a_live_concurrent_writer_keeps_its_temporary_and_both_runs_succeed(tmp_path):
    images = TinySource().load().pool.images
    phi = PCAPixels(n_components=8, seed=0).fit(images)
    path, _ = fc.cache_entry(tmp_path, phi, "tiny", "auto")
    proc, tmp = start_writer(path, phi.transform(images), tmp_path)
    try:
        z, info = fc.cached_features(tmp_path, phi, images, data_id="tiny")  # this run writes and commits meanwhile
        assert not info["hit"] and tmp.is_file()
    finally:
        proc.stdin.write("\n")
        proc.stdin.close()
    assert proc.wait(timeout=60) == 0 and not tmp.exists()
    fc._VERIFIED.clear()
    z2, info2 = fc.cached_features(tmp_path, phi, images, data_id="tiny")
    assert info2["hit"] and json.loads(path.with_suffix(".json").read_text())["by"] == "the other run"
    np.testing.assert_array_equal(z2, z)


def test_move_aside_leaves_a_file_that_was_replaced_since_it_was_checked(tmp_path):
    path = tmp_path / "entry"
    path.write_text("damaged")
    checked = os.stat(path)
    (tmp_path / "new").write_text("rebuilt by another run")
    os.replace(tmp_path / "new", path)
    assert move_aside(path, "a reason", expected=checked) is None and path.read_text() == "rebuilt by another run"
    with pytest.warns(CacheWarning, match=r"entry is damaged \(a reason\); moved aside to entry.damaged-"):
        assert move_aside(path, "a reason").read_text() == "rebuilt by another run"
