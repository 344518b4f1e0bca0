import ecos_pl.conf_store  # noqa: F401 - the protocol settings nodes (protocol/*) Hydra composes from
import numpy as np
import pytest


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
    import os

    path = tmp_path_factory.mktemp("ecos-cache")
    old = os.environ.get("ECOS_CACHE")
    os.environ["ECOS_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ECOS_CACHE", None)
    else:
        os.environ["ECOS_CACHE"] = old
