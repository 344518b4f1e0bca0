import os
import shutil
import sys
import tempfile

import ecos_pl.conf_store  # noqa: F401 - the protocol settings nodes (protocol/*) Hydra composes from
import numpy as np
import pytest

# Test subprocesses (DDP ranks, the walkthrough's train.py, eval of entry points) would each compile every module
# they import again (PYTHONDONTWRITEBYTECODE is set here): bytecode goes to a folder of this session instead, written
# by this process's own imports and read by every child. Nothing is written next to the sources.
_PYCACHE = tempfile.mkdtemp(prefix="ecos-test-pycache-")
sys.pycache_prefix, sys.dont_write_bytecode = _PYCACHE, False
_ENV = {k: os.environ.get(k) for k in ("PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")}
os.environ["PYTHONPYCACHEPREFIX"] = _PYCACHE
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def pytest_unconfigure(config):
    for key, value in _ENV.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(_PYCACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def mixture():
    """A pool of 20 Gaussian components (500 each); the client draws from component 3 only."""
    rng = np.random.default_rng(0)
    k, n_per, d = 20, 500, 32
    means = rng.normal(size=(k, d)) * 3.0
    pool = np.concatenate([means[i] + rng.normal(size=(n_per, d)) for i in range(k)]).astype(np.float32)
    component = np.repeat(np.arange(k), n_per)
    client = (means[3] + rng.normal(size=(300, d))).astype(np.float32)
    return {"pool": pool, "component": component, "client": client, "client_component": 3, "base_rate": 1 / k}


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Tests never read or fill the user's ~/.cache/ecos-pl."""
    path = tmp_path_factory.mktemp("ecos-cache")
    old = os.environ.get("ECOS_CACHE")
    os.environ["ECOS_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ECOS_CACHE", None)
    else:
        os.environ["ECOS_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, isolated_cache):
    """`tiny_run(*overrides)`: a tiny train.py run (debug=smoke) in process, trained once per session for each set of
    overrides; tests that ask for the same overrides read the same run (folder, results file, printed table)."""
    from runs import train

    done = {}

    def run(*overrides):
        if overrides not in done:
            done[overrides] = train(tmp_path_factory.mktemp("run"), *overrides)
        return done[overrides]

    return run
