"""ECOS over Flower (`uv sync --extra flower`): the simulation picks the in-process pipeline's proxy set, with plain
answers and with SecAgg+ (exact sums, masked vectors only); wrong, late or missing answers are dropped."""

import json
import logging
import os
import time

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the flower extra is not installed (uv sync --extra flower)")

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ecos_pl.protocol.errors import ECOSInputError  # noqa: E402
from flower_fakes import Reply as _Reply, fake_task_identity  # noqa: E402
from ecos_pl.protocol.messages import CentroidsMessage, ScoresMessage  # noqa: E402
from ecos_pl.protocol.samplers import ECOSSampler  # noqa: E402
from ecos_pl.protocol.settings import Allocation, Clustering, ScorePrivacy  # noqa: E402

#: the lightest Ray settings: one CPU for the whole simulation, no dashboard, one actor at a time
BACKEND = {"init_args": {"num_cpus": 1, "include_dashboard": False, "log_to_driver": False},
           "client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
#: seconds one simulation may take here before `simulate` stops it (each takes 10-30 s on 2 cores)
SIMULATION_TIMEOUT = 150.0


def _pipeline(tmp_path, clients, epsilon, client_cap=2.0):
    from ecos_pl.data.digits_lite import DigitsLite
    from ecos_pl.phi import PCAPixels
    from ecos_pl.pipeline import ProtocolPipeline

    return ProtocolPipeline(
        DigitsLite(seed=1, client_domain="photo", cache_dir=str(tmp_path / "data")), PCAPixels(n_components=16, seed=1),
        ECOSSampler(Clustering(n_centroids=12), Allocation(client_cap=client_cap)), budget=60, seed=3,
        score_privacy=ScorePrivacy(epsilon=epsilon),
        clients=clients,
    )


@pytest.fixture
def wandb_run(tmp_path):
    """An active offline W&B run in this process, as train.py's default logger has when its data module selects."""
    import wandb

    run = wandb.init(mode="offline", dir=str(tmp_path), project="ecos-test", settings=wandb.Settings(silent=True))
    yield run
    run.finish()


def test_flower_simulation_selects_the_in_process_proxy_set(tmp_path, monkeypatch, wandb_run):
    from ecos_pl.flower import simulate, simulation_apps

    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    pipeline = _pipeline(tmp_path, 3, epsilon=4.0)  # noisy scores: each client's seed must match too
    selection, report = pipeline.select()
    server, client = simulation_apps(pipeline, tmp_path / "flower")
    # with a W&B run active (the default logger) the forked simulation once crashed importing Ray through W&B's hooks
    simulate(server, client, 3, BACKEND, timeout=SIMULATION_TIMEOUT)
    summary = json.loads((tmp_path / "flower" / "proxy_set.json").read_text())
    assert summary["proxy_set_sha1"] == report.proxy_set_sha1
    np.testing.assert_array_equal(np.load(tmp_path / "flower" / "proxy_set.npz")["indices"], selection.indices)
    assert summary["bytes_up"] == report.bytes_up == 3 * (4 * 12 + 32)


@pytest.fixture
def fake_run(monkeypatch):
    """The run identity a ServerApp process has (Flower's `Message` reads it), for grids faked in this process."""
    fake_task_identity(monkeypatch)


class _Grid:
    """A grid whose nodes answer from a function (node -> reply or None for no answer)."""

    def __init__(self, nodes, answer):
        self.nodes, self.answer = nodes, answer

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        replies = [self.answer(m.metadata.dst_node_id, m) for m in messages]
        return [r for r in replies if r is not None]


def test_flower_exchange_drops_malformed_and_missing_answers(caplog, fake_run):
    from flwr.app import Error

    from ecos_pl.flower import FlowerExchange, encode

    scores = ScoresMessage(np.ones(4, dtype=np.float32))

    def answer(node, message):
        if node == 1:
            return _Reply(node, encode(scores, client=0))
        if node == 2:
            return _Reply(node, encode(CentroidsMessage(np.eye(4, dtype=np.float32)), client=1))  # wrong kind
        if node == 3:
            return _Reply(node, error=Error(code=1, reason="boom"))
        return None  # node 4: never answers

    exchange = FlowerExchange(_Grid([1, 2, 3, 4], answer), min_answers=1)
    with caplog.at_level(logging.WARNING):
        (got,) = exchange.send_and_receive(CentroidsMessage(np.eye(4, dtype=np.float32)))
    np.testing.assert_array_equal(got.scores, scores.scores)
    assert exchange.rounds[-1].n_clients == 1 and sorted(exchange.dropped[-1]) == [2, 3, 4]
    assert caplog.text.count("dropped the answer of node") == 3
    strict = FlowerExchange(_Grid([1, 2, 3, 4], answer), min_answers=2)
    with pytest.raises(ECOSInputError, match=r"only 1 of 4 clients answered .*min_answers=2"):
        strict.send_and_receive(CentroidsMessage(np.eye(4, dtype=np.float32)))


def test_flower_exchange_drops_late_answers_and_passes_its_timeout(caplog, fake_run):
    from ecos_pl.flower import FlowerExchange, encode

    latency = {1: 0.0, 2: 5.0}  # node 2 answers after the round's timeout

    class LateGrid(_Grid):
        def send_and_receive(self, messages, *, timeout=None):
            self.timeout = timeout
            return [_Reply(m.metadata.dst_node_id, encode(ScoresMessage(np.ones(4, dtype=np.float32)), client=i))
                    for i, m in enumerate(messages) if latency[m.metadata.dst_node_id] <= timeout]

    grid = LateGrid([1, 2], None)
    exchange = FlowerExchange(grid, min_answers=1, timeout=0.5)
    with caplog.at_level(logging.WARNING):
        (got,) = exchange.send_and_receive(CentroidsMessage(np.eye(4, dtype=np.float32)))
    assert grid.timeout == 0.5 and exchange.dropped[-1] == {2: "no answer within 0.5 s"}
    assert "node 2 (no answer within 0.5 s); the round goes on without it" in caplog.text


# ---------------------------------------------------------------------- SecAgg+


class _RecordingGrid:
    """The cloud's grid, every reply it receives kept (what a curious cloud could look at)."""

    def __init__(self, grid):
        self._grid, self.replies = grid, []

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        got = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.replies.extend(got)
        return got


def _recording_server(pipeline, out, record_to, **settings):
    """`simulation_apps`' ServerApp, every array of every reply the cloud receives saved to `record_to` (npz): the
    simulation runs in a process of its own, so what the cloud saw comes back as a file."""
    from flwr.serverapp import ServerApp

    from ecos_pl.flower.apps import serve

    app, features, n = ServerApp(), pipeline.pool_features, pipeline.n_clients

    @app.main()
    def main(grid, context):
        recording = _RecordingGrid(grid)
        try:
            serve(recording, context, features, pipeline.sampler, pipeline.budget, pipeline.seed, out, n_clients=n,
                  **settings)
        finally:
            np.savez(record_to, *[a for r in recording.replies for a in _arrays_in(r)])

    return app


def _arrays_in(reply) -> list[np.ndarray]:
    """Every array a reply carries: its ArrayRecords' and any npy bytes in its ConfigRecords (SecAgg+'s vectors)."""
    from flwr.common import bytes_to_ndarray

    out = [a.numpy() for record in reply.content.array_records.values() for a in record.values()]
    for record in reply.content.config_records.values():
        for value in record.values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, bytes) and item.startswith(b"\x93NUMPY"):
                    out.append(bytes_to_ndarray(item))
    return out


def _device_counts(pipeline, clip):
    """What each client hands to SecAgg+ for this pipeline's centroids (in process, for the reference)."""
    from ecos_pl.flower import secagg_counts

    cloud = pipeline.sampler.cloud(pipeline.pool_features, pipeline.seed)
    message = cloud.compress()
    return cloud, [secagg_counts(c.handle(message).scores, clip)[0] for c in pipeline.clients()]


def test_flower_secagg_sums_exact_counts_to_the_in_process_proxy_set_and_sees_only_masked_vectors(tmp_path, monkeypatch,
                                                                                               caplog):
    from ecos_pl.flower import simulate, simulation_apps

    pipeline = _pipeline(tmp_path, 3, epsilon=None, client_cap=None)
    selection, report = pipeline.select()
    # the cap the plain fleet applies does not bind on these three honest shards: the same proxy set with it
    assert _pipeline(tmp_path, 3, epsilon=None).select()[1].proxy_set_sha1 == report.proxy_set_sha1
    clip = 1024
    _, counts = _device_counts(pipeline, clip)
    _, client = simulation_apps(pipeline, tmp_path / "flower")
    server = _recording_server(pipeline, tmp_path / "flower", tmp_path / "seen.npz", secagg={"clip": clip})
    with caplog.at_level(logging.INFO):
        simulate(server, client, 3, BACKEND, timeout=SIMULATION_TIMEOUT)
    summary = json.loads((tmp_path / "flower" / "proxy_set.json").read_text())
    assert summary["proxy_set_sha1"] == report.proxy_set_sha1 and summary["n_clients"] == 3 and summary["secagg"]
    assert summary["client_epsilons"] == {"0": None, "1": None, "2": None}
    assert "the cloud received only masked vectors from 3 of 3 clients" in caplog.text
    # what reached the cloud: no array of any reply is a client's vector, plain or as SecAgg+ quantises it (x + clip)
    with np.load(tmp_path / "seen.npz") as seen:
        arrays = [seen[k] for k in seen.files]
    masked = [a for a in arrays if a.size == 12]
    assert len(masked) == 3  # one masked vector per client (besides its one-entry weight)
    for mine in counts:
        assert not any(np.array_equal(a.ravel(), mine) or np.array_equal(a.ravel(), mine + clip) for a in arrays)


def test_flower_secagg_noisy_round_is_exact_and_deterministic_and_survives_a_dropped_client(tmp_path, monkeypatch):
    from ecos_pl.flower import client_app, server_app, simulate

    pipeline = _pipeline(tmp_path, 3, epsilon=4.0, client_cap=None)
    clip = 1024
    cloud, counts = _device_counts(pipeline, clip)
    # the reference: the seeded clients' rounded noisy counts of clients 0 and 1, summed in process
    expected = cloud.select(ScoresMessage(np.sum(counts[:2], axis=0).astype(np.float32), 4.0), pipeline.budget)
    clients = pipeline.clients()

    class Gone:  # client 2 fails in SecAgg+'s stage 2: its masks are unmasked from the others' shares
        def handle(self, message):
            raise RuntimeError("client 2 went away")

    apps = (server_app(pipeline.pool_features, pipeline.sampler, pipeline.budget, pipeline.seed, tmp_path / "flower",
                       n_clients=3, min_answers=2, secagg={"clip": clip}),
            client_app(lambda context: clients[int(context.node_config["partition-id"])]
                       if int(context.node_config["partition-id"]) < 2 else Gone()))
    simulate(*apps, 3, BACKEND, timeout=SIMULATION_TIMEOUT)
    summary = json.loads((tmp_path / "flower" / "proxy_set.json").read_text())
    np.testing.assert_array_equal(np.load(tmp_path / "flower" / "proxy_set.npz")["indices"], expected)
    assert summary["n_clients"] == 2 and summary["client_epsilons"] == {"0": 4.0, "1": 4.0}


def test_secagg_round_with_a_silent_node_ends_within_its_timeout_naming_the_stage_and_the_node(tmp_path):
    from ecos_pl.flower import client_app, server_app, simulate

    pipeline = _pipeline(tmp_path, 3, epsilon=None, client_cap=None)
    clients, stage_timeout, silence = pipeline.clients(), 10.0, 300.0

    class Silent:  # client 2 never answers within the round: busy far past the stage's timeout
        def handle(self, message):
            time.sleep(silence)

    apps = (server_app(pipeline.pool_features, pipeline.sampler, pipeline.budget, pipeline.seed, tmp_path / "flower",
                       n_clients=3, min_answers=3, timeout=stage_timeout, secagg={"clip": 1024}),
            client_app(lambda context: clients[int(context.node_config["partition-id"])]
                       if int(context.node_config["partition-id"]) < 2 else Silent()))
    three_actors = {**BACKEND, "init_args": {**BACKEND["init_args"], "num_cpus": 3}}  # the silent one blocks only itself
    start = time.monotonic()
    with pytest.raises(ECOSInputError, match=r"SecAgg\+ summed the scores of 2 of 3 clients, fewer than min_answers=3 "
                                             r"\(stage collect_masked_vectors: node \d+ gave no answer within 10 s\)"):
        simulate(*apps, 3, three_actors, timeout=SIMULATION_TIMEOUT)
    assert time.monotonic() - start < silence / 3  # the round ended on its timeout, not when the silent node woke
    assert not (tmp_path / "flower" / "proxy_set.json").exists()


def _sleeping_apps():
    """A ServerApp that never ends (a wait with no timeout) and a ClientApp never asked."""
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    server = ServerApp()

    @server.main()
    def main(grid, context):
        time.sleep(3600)

    return server, ClientApp()


def _processes_in_group(pgid: int, wait: float = 10.0) -> list[int]:
    """The live (not zombie) processes of a process group, once it is empty or after `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        live = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid and _state(int(p)) != "Z"]
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.5)


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_simulate_stops_a_simulation_past_its_timeout_with_its_ray_processes(monkeypatch):
    import multiprocessing

    from ecos_pl.flower import SimulationError, simulate

    started = []
    real_start = multiprocessing.get_context("fork").Process.start

    def start(self):
        real_start(self)
        started.append(self.pid)

    monkeypatch.setattr(multiprocessing.get_context("fork").Process, "start", start)
    begin = time.monotonic()
    with pytest.raises(SimulationError, match=r"did not finish within its timeout of 12 s and was stopped"):
        simulate(*_sleeping_apps(), 1, BACKEND, timeout=12)
    assert time.monotonic() - begin < 12 + 20
    (pid,) = started
    assert _processes_in_group(pid) == []  # the child led its group (Ray's processes too): nothing of it is left
    with pytest.raises(ECOSInputError, match=r"timeout must be a finite number of seconds > 0, got inf"):
        simulate(*_sleeping_apps(), 1, BACKEND, timeout=float("inf"))


def test_sigterm_during_a_simulation_ends_the_process_and_its_ray_processes(tmp_path):
    import signal
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_flower import BACKEND, _sleeping_apps\n"
        "from ecos_pl.flower import simulate\n"
        "simulate(*_sleeping_apps(), 1, BACKEND, timeout=300)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, os.path.dirname(__file__)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, leaders = time.monotonic() + 90, []
    while time.monotonic() < deadline and not leaders:
        time.sleep(0.5)  # until the simulation's process runs in a group of its own
        leaders = [p for p in _children_of(proc.pid) if _pgid(p) == p]
    assert leaders, "the simulation's process never started"
    time.sleep(3)  # Ray and Flower running
    proc.send_signal(signal.SIGTERM)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)  # a second one (`uv run` forwards its own) once cut the stop short of its SIGKILL
    try:
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 128 + signal.SIGTERM, proc.stderr.read()[-2000:]
    assert _processes_in_group(leaders[0]) == []  # the simulation and Ray's processes in its group are gone


def test_a_signal_during_the_stop_is_held_until_the_stop_is_done():
    import signal

    from ecos_pl.flower.simulation import _signals_held

    done, before = [], signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        with _signals_held():
            os.kill(os.getpid(), signal.SIGTERM)  # would end a stop between its SIGTERM and its SIGKILL
            time.sleep(0.2)
            done.append(True)
    assert done == [True] and stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before  # the handlers are back


def _children_of(pid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == pid]


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_secagg_refuses_a_client_cap_and_too_few_clients(fake_run):
    from flwr.app import Context, RecordDict

    from ecos_pl.flower.secagg import SecAggExchange, check_no_client_cap

    with pytest.raises(ECOSInputError, match=r"secagg=true shows the cloud only .* sampler\.client_cap=2 cannot apply"):
        check_no_client_cap(ECOSSampler(Clustering(n_centroids=4)))
    check_no_client_cap(ECOSSampler(Clustering(n_centroids=4), Allocation(client_cap=None)))
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ECOSInputError, match="min_answers must be at least 2 with secagg=true"):
        SecAggExchange(_Grid([1, 2], None), context, min_answers=1)
    with pytest.raises(ECOSInputError, match="overflow SecAgg"):
        SecAggExchange(_Grid(list(range(4)), None), context, clip=2**30 - 1).send_and_receive(
            CentroidsMessage(np.eye(4, dtype=np.float32)))


def test_secagg_counts_round_and_clip_on_the_device():
    from ecos_pl.flower import secagg_counts

    counts, clipped = secagg_counts(np.array([0.0, 2.4, 2.6, 7.0, 30.2], dtype=np.float32), clip=10)
    np.testing.assert_array_equal(counts, [0, 2, 3, 7, 10])
    assert counts.dtype == np.int64 and clipped == 1


# ---------------------------------------------------------------------- the app `flwr run .` runs


def test_run_config_builds_train_py_settings_and_refuses_bad_values():
    from ecos_pl.flower.run_config import fused_run_config, run_settings

    settings = run_settings(fused_run_config('clients=2 min-answers=2 epsilon="none" client-cap="none" secagg=true '
                                             'overrides="phi=pca data=digits_lite"'))
    assert settings.overrides[:6] == ("clients=2", "n_centroids=128", "budget=400", "seed=1", "client.epsilon=null",
                                      "sampler.client_cap=null")
    assert settings.overrides[6:] == ("phi=pca", "data=digits_lite") and settings.secagg["clip"] == 2**20
    for bad, sentence in [("min-answers=4", r"min-answers=4 is larger than clients \(3\)"),
                          ('epsilon="few"', 'epsilon must be a number or "none"'),
                          ("secagg=1", "secagg must be true or false"),
                          ("timeout=-1.0", r"timeout must be a finite number in \(0, ∞\)")]:
        with pytest.raises(ECOSInputError, match=sentence):
            run_settings(fused_run_config(bad))
    with pytest.raises(ECOSInputError, match=r"budgets is not a key of \[tool.flwr.app.config\]"):
        fused_run_config("budgets=3")
