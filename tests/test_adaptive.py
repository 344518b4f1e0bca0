"""`ecos_adaptive`: several rounds over one Exchange, the client's ε split by the client's own ledger."""

import numpy as np
import pytest

from ecos_pl.protocol import ECOSClient, make_sampler
from ecos_pl.protocol.adaptive import AdaptiveECOSSampler, cells_to_refine, round_epsilons
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.exchange import InProcessExchange
from ecos_pl.protocol.messages import HEADER_BYTES, CentroidsMessage
from ecos_pl.protocol.privacy import ScoreMechanism, composed_epsilon
from runs import SMOKE


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _adaptive(**kw):
    return AdaptiveECOSSampler(**{"n_centroids": 16, "round_centroids": [32], **kw})


def test_rounds_split_the_clients_epsilon_exactly(mixture):
    client = ECOSClient(mixture["client"], epsilon=0.58, seed=3)
    sel = _adaptive(round_centroids=[24, 40], first_share=0.4).sample(mixture["pool"], client, 200, seed=1)
    shares = sel.diagnostics["round_share"]
    assert list(sel.diagnostics["round_n_centroids"]) == [16, 24, 40]
    assert shares == pytest.approx([0.4, 0.3, 0.3]) and client.spent_share == pytest.approx(1.0)
    # every round is one Gaussian release of σ/√share; dp-accounting composes them back to the client's ε
    privacy = round_epsilons(ScoreMechanism("gaussian", 0.58), shares)
    assert privacy["composed_epsilon_pld"] == pytest.approx(0.58, abs=2e-3)
    assert privacy["round_sigma"][0] == pytest.approx(6.1373 / np.sqrt(0.4), rel=1e-3)
    assert list(sel.diagnostics["round_epsilon"]) == pytest.approx(privacy["round_epsilon"], rel=1e-5)
    assert all(e < 0.58 for e in privacy["round_epsilon"])
    # the upload is Σ (4·Rₜ + header), whatever the scores
    assert sel.bytes_up == sum(4 * r + HEADER_BYTES for r in (16, 24, 40))
    assert sel.n_selected == 200 and len(np.unique(sel.indices)) == 200


def test_a_client_never_spends_more_than_its_budget(mixture):
    client = ECOSClient(mixture["client"], epsilon=0.58, seed=3)
    message = CentroidsMessage(_unit(mixture["pool"][:8]), share=0.7)
    client.score(message)
    with pytest.raises(ECOSInputError, match="only 0.3 is left"):
        client.score(message)
    # a cloud asking for the whole budget twice is refused the second time too
    whole = ECOSClient(mixture["client"], epsilon=0.58, seed=3)
    whole.score(CentroidsMessage(_unit(mixture["pool"][:8])))
    with pytest.raises(ECOSInputError, match="share 1"):
        whole.score(CentroidsMessage(_unit(mixture["pool"][:8])))


def test_rounds_draw_fresh_noise(mixture):
    """A seeded client answering two rounds must not repeat its draws (one stream across rounds)."""
    message = CentroidsMessage(_unit(mixture["pool"][:8]), share=0.5)
    client = ECOSClient(mixture["client"][:1], epsilon=0.58, seed=3)
    a, b = client.score(message).scores, client.score(message).scores
    assert not np.array_equal(a, b)


def test_share_travels_in_the_message_and_bad_shares_are_refused(mixture):
    m = CentroidsMessage(_unit(mixture["pool"][:4]), share=0.25)
    back = CentroidsMessage.from_bytes(m.to_bytes())
    assert back.share == 0.25 and m.nbytes == len(m.to_bytes())
    assert CentroidsMessage.from_bytes(CentroidsMessage(_unit(mixture["pool"][:4])).to_bytes()).share is None
    for bad in (0, 1.5, -0.1, True, "half"):
        with pytest.raises(ECOSInputError, match="share must be a number in"):
            CentroidsMessage(_unit(mixture["pool"][:4]), share=bad)


def test_same_seed_same_selection_and_settings_checked(mixture):
    def pick():
        return _adaptive().sample(mixture["pool"], ECOSClient(mixture["client"], epsilon=0.58, seed=5), 150, seed=2).indices

    assert np.array_equal(pick(), pick())
    with pytest.raises(ECOSInputError, match="sampler.round_centroids must exceed n_centroids=16"):
        _adaptive(round_centroids=[16])
    with pytest.raises(ECOSInputError, match="sampler.round_centroids must increase"):
        _adaptive(round_centroids=[48, 32])
    with pytest.raises(ECOSInputError, match="sampler.mass must be a finite number"):
        _adaptive(mass=0)
    with pytest.raises(ECOSInputError, match="not a setting"):
        _adaptive(rounds=3)


def test_cells_to_refine_is_the_smallest_set_holding_the_mass():
    assert list(cells_to_refine(np.array([1.0, 5.0, 0.0, 4.0]), 0.5)) == [1]
    assert list(cells_to_refine(np.array([1.0, 5.0, 0.0, 4.0]), 0.6)) == [1, 3]
    assert list(cells_to_refine(np.array([1.0, 5.0, -3.0, 4.0]), 1.0)) == [0, 1, 3]
    with pytest.raises(ECOSInputError, match="scores are all zero"):
        cells_to_refine(np.zeros(3), 0.5)


def test_refined_rounds_find_the_clients_cluster(mixture):
    """Exact counts: the refined selection stays inside the client's region at least as well as one round does."""
    in_client = mixture["component"] == mixture["client_component"]
    one = make_sampler("ecos", n_centroids=16).sample(mixture["pool"], ECOSClient(mixture["client"]), 150, seed=1)
    many = _adaptive().sample(mixture["pool"], InProcessExchange([ECOSClient(mixture["client"])]), 150, seed=1)
    assert in_client[many.indices].mean() >= in_client[one.indices].mean() - 0.02
    assert in_client[many.indices].mean() > 3 * in_client.mean()


def test_train_py_runs_ecos_adaptive_and_reports_every_round(tiny_run):
    res = tiny_run(*SMOKE, "sampler=ecos_adaptive", "sampler.n_centroids=8", "sampler.round_centroids=[16]", "seed=2",
                   "callbacks=none", "save_outputs=false").results
    rounds = res["rounds"]
    assert [r["n_centroids"] for r in rounds] == [8, 16] and [r["share"] for r in rounds] == pytest.approx([0.3, 0.7])
    assert res["epsilon"] == 0.58 and res["score_privacy"]["epsilon"] == 0.58
    assert rounds[-1]["all_rounds_epsilon_pld"] == pytest.approx(0.58, abs=2e-3)
    assert composed_epsilon([ScoreMechanism("gaussian", 0.58).for_share(r["share"]).dp_event() for r in rounds], 1e-5, "pld") \
        == pytest.approx(0.58, abs=2e-3)
    assert [r["noise_sigma"] for r in rounds] == pytest.approx([6.1373 / np.sqrt(0.3), 6.1373 / np.sqrt(0.7)], rel=1e-3)
    assert res["bytes_up"] == sum(r["bytes_up"] for r in rounds) == 4 * (8 + 16) + 2 * HEADER_BYTES
    assert res["n_selected"] == 120


def test_a_small_refined_region_is_topped_up_to_the_budget(mixture):
    """With the budget on refined cells first, a refined region smaller than the budget is filled from the others."""
    client = ECOSClient(mixture["client"][:40], epsilon=0.58, seed=3)
    sel = _adaptive(mass=0.05).sample(mixture["pool"], client, 2000, seed=1)
    assert sel.n_selected == 2000


def test_the_rounds_travel_as_the_programs_message_files(tmp_path, mixture):
    """The same driver carries every round over files: the share is in each centroids file, the selection the same."""
    from ecos_pl.protocol.messages import parse_message
    from ecos_pl.protocol.transport import FilesExchange

    def client():
        return ECOSClient(mixture["client"], epsilon=0.58, seed=4)

    via_files = _adaptive().sample(mixture["pool"], FilesExchange([client()], tmp_path), 150, seed=1)
    in_process = _adaptive().sample(mixture["pool"], client(), 150, seed=1)
    np.testing.assert_array_equal(via_files.indices, in_process.indices)
    shares = [parse_message((tmp_path / f"round-{t}" / "centroids.ecos").read_bytes(), CentroidsMessage).share for t in (0, 1)]
    assert shares == pytest.approx([0.3, 0.7])
