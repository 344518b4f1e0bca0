"""benchmarks/results_md.py: RESULTS.md and the README's summary table are written from the benchmarks' JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import results_md  # noqa: E402


def run(sampler, domain, seed, acc):
    return {"scenario": "compression", "sampler": sampler, "client_domain": domain, "seed": seed, "client_test_acc": acc,
            "teacher_test_acc": 0.9}


def test_results_and_readme_summary_come_from_the_json(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    rows = {"ecos": [run("ecos", "mnist", 1, 0.80), run("ecos", "svhn", 1, 0.60)],
            "random": [run("random", "mnist", 1, 0.70), run("random", "svhn", 1, 0.55)]}
    command = "uv run python benchmarks/compare_samplers.py data=digits5_lite domains=all scenario=compression"
    table = {"title": "compression on digits5_lite", "command": command, "scenario": "compression", "data": "digits5_lite", "domains": ["mnist", "svhn"],
             "overrides": ["scenario=compression", "data=digits5_lite"], "runs": rows}
    (results / "compare_samplers-compression-digits5_lite.json").write_text(json.dumps(table))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{results_md.SUMMARY_START}\nold\n{results_md.SUMMARY_END}\nrest\n")

    out = results_md.write_results(results, readme)

    text = out.read_text()
    assert out == tmp_path / "RESULTS.md"
    assert "| ecos | 80.0 | 60.0 | **70.0** |" in text and "| random | 70.0 | 55.0 | **62.5** |" in text
    # ours: mean of (80-70, 60-55); the paper's: 78.6 - 76.4; the bootstrap of two pairs: their mean or one of them
    assert "| random | +7.5 | +2.2 | 2 of 2 | [+5.0, +10.0] |" in text
    assert f"```bash\n{command}\n```" in text
    # a table written before layouts existed is the digits layout's, and says so
    assert "## compression on digits5_lite (Digits layout: the client's domain absent from the pool)\n" in text
    summary = readme.read_text()
    assert summary.startswith("intro\n") and summary.endswith("rest\n") and "old" not in summary
    assert "| compression (digits layout) | 70.0 | 62.5 | +7.5 (+2.2) | [+5.0, +10.0] | 2 × 1 |" in summary


def test_several_seeds_give_the_spread_of_the_seeds_averages_and_paired_wins(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    # seed 1: ecos 0.8/0.6 (avg 0.7), random 0.7/0.65 (0.675); seed 2: ecos 0.7/0.5 (0.6), random 0.5/0.6 (0.55)
    rows = {"ecos": [run("ecos", "mnist", 1, 0.8), run("ecos", "svhn", 1, 0.6), run("ecos", "mnist", 2, 0.7), run("ecos", "svhn", 2, 0.5)],
            "random": [run("random", "mnist", 1, 0.7), run("random", "svhn", 1, 0.65), run("random", "mnist", 2, 0.5),
                       run("random", "svhn", 2, 0.6)]}
    for r in rows["ecos"]:
        r["client_val_acc"] = 0.5
    table = {"title": "t", "command": "c", "scenario": "compression", "data": "digits5_lite", "domains": ["mnist", "svhn"], "runs": rows}
    (results / "compare_samplers-compression-digits5_lite.json").write_text(json.dumps(table))
    readme = tmp_path / "README.md"
    readme.write_text(f"{results_md.SUMMARY_START}\n{results_md.SUMMARY_END}\n")

    text = results_md.write_results(results, readme).read_text()

    assert "| ecos | 75.0 | 55.0 | **65.0** ± 7.1 |" in text  # seeds' averages 70 and 60
    assert "| random | +3.8 ± 1.8 | +2.2 | 2 of 4 |" in text  # per seed +2.5 and +5.0; ECOS ahead on mnist twice only
    assert "Client validation accuracy (%, mean over domains and seeds): ecos 50.0." in text
    assert "| compression (digits layout) | 65.0 | 61.3 | +3.8 ± 1.8 (+2.2) |" in readme.read_text()


def test_the_paired_bootstrap_interval_is_seeded_and_covers_the_mean_difference():
    diffs = [4.0, 6.0, 5.0, 9.0, 1.0]
    lo, hi = results_md.bootstrap_ci(diffs)
    assert (lo, hi) == results_md.bootstrap_ci(diffs)  # seeded: the same JSON, the same interval
    assert 1.0 < lo < 5.0 < hi < 9.0 and hi - lo > 2.0
    assert results_md.bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0) and results_md.bootstrap_ci([2.0]) is None
    # paired by seed: a baseline that loses by a constant on every seed has a zero-width interval, however seeds vary
    rows = {"ecos": [run("ecos", "mnistm", s, 0.5 + s / 10) for s in (1, 2, 3)],
            "random": [run("random", "mnistm", s, 0.45 + s / 10) for s in (1, 2, 3)]}
    assert results_md.paired_ci(rows, "random") == "[+5.0, +5.0]"


def test_a_domainnet_layout_table_is_named_and_summarised_by_its_layout(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    rows = {"ecos": [run("ecos", "mnistm", s, 0.6) for s in (1, 2)], "random": [run("random", "mnistm", s, 0.5) for s in (1, 2)]}
    table = {"title": "compression on digits5_lite (DomainNet layout: half of the client's domain in the pool), seeds [1, 2]",
             "command": "c", "scenario": "compression", "data": "digits5_lite", "layout": "domainnet", "domains": ["mnistm"], "runs": rows}
    (results / "compare_samplers-compression-digits5_lite_domainnet.json").write_text(json.dumps(table))
    readme = tmp_path / "README.md"
    readme.write_text(f"{results_md.SUMMARY_START}\n{results_md.SUMMARY_END}\n")
    text = results_md.write_results(results, readme).read_text()
    assert text.count("DomainNet layout") == 1 and "Digits layout" not in text
    assert "| compression (domainnet layout) | 60.0 | 50.0 | +10.0 ± 0.0 (+2.2) | [+10.0, +10.0] | 1 × 2 |" in readme.read_text()


def test_budget_curve_runs_every_sampler_at_every_budget_at_equal_steps(tmp_path, isolated_cache):
    import budget_curve

    out = tmp_path / "results"
    overrides = ["debug=smoke", "callbacks=none"]
    code = budget_curve.main(["--data", "digits_lite", "--budgets", "40", "120", "--samplers", "ecos", "full",
                              "--steps", "4", "--batch", "20", "--out", str(out), *overrides])
    assert code == 0
    # a curve with extra overrides is a variant: its files and runs carry their tag, the default's name stays free
    stem = f"budget_curve-compression-digits_lite{budget_curve.variant_tag(overrides)}"
    assert stem.endswith(budget_curve.variant_tag(overrides[::-1])) and not (out / "budget_curve-compression-digits_lite.json").exists()
    curve = json.loads((out / f"{stem}.json").read_text())
    assert [p["budget"] for p in curve["curve"]["ecos"]] == [40, 120]
    # equal steps at each budget: the pool (full) trains exactly as long as the proxy set
    assert [p["steps"] for p in curve["curve"]["ecos"]] == [p["steps"] for p in curve["curve"]["full"]]
    assert all(p["test"] is not None and p["val"] is not None for s in curve["curve"].values() for p in s)
    assert (out / f"{stem}.png").stat().st_size > 1000


def test_results_written_elsewhere_leave_the_readme_alone(tmp_path):
    readme = ROOT / "README.md"
    before = readme.read_bytes()
    results = tmp_path / "results"
    results.mkdir()
    results_md.write_results(results)
    assert (tmp_path / "RESULTS.md").exists() and readme.read_bytes() == before


def test_label_privacy_labels_the_configured_proxy_set_with_the_configured_settings(tmp_path, isolated_cache, monkeypatch):
    import label_privacy

    out = tmp_path / "label_privacy.json"
    monkeypatch.setattr(sys, "argv", ["label_privacy.py", "--seeds", "1", "--config-only", "--json", str(out),
                                      "data=digits_lite", "debug=smoke", "scenario.labels.k=10"])
    label_privacy.main()
    report = json.loads(out.read_text())
    (row,) = report["rows"]  # the configured setting only, with the override applied
    assert (row["k"], row["sigma"], row["sampling_rate"], row["threshold"]) == (10, 4.0, 0.2, 0.3)
    assert report["budget"] == 120 and 0.0 < row["kept"] <= 1.0 and 0.0 <= row["label_acc"] <= 1.0
    assert row["exchange_epsilon"] > report["scores"]["epsilon"]  # the labels cost privacy on top of the scores


def test_kept_runs_are_keyed_by_what_changes_results():
    """The in-process transport and a moved label class leave a kept run's hash as it was; another transport does not."""
    import compare_samplers as cs

    base = ["sampler=ecos", "seed=1", "scenario=pseudo_label", "debug=smoke"]
    assert cs.config_sha1(base) == cs.config_sha1([*base, "transport=inprocess"])
    assert cs.config_sha1(base) != cs.config_sha1([*base, "transport=files"])
    assert cs.config_sha1(base) != cs.config_sha1([*base, "seed=2"])
    from omegaconf import OmegaConf

    from ecos_pl.compose import train_config

    text = OmegaConf.to_yaml(cs.without_in_process_transport(train_config(*base)))
    assert "transport" not in text and "ecos_pl.protocol.labels." in text
