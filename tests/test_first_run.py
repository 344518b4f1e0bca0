"""benchmarks/first_run.py reads each stage's time from the run's plain progress lines, and writes the README's
first-run line between its markers only."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import first_run  # noqa: E402

LOG = """\
[2026-12-04 19:00:00,000][ecos_pl.data.npz_cache][INFO] - built digits5_lite (x.npz) in 9.5 s
[2026-12-04 19:00:01,000][ecos_pl.pipeline][INFO] - fitting φ (RandomCNNStyle) on 4,500 pool images: done in 0.4 s
[2026-12-04 19:00:30,500][ecos_pl.progress][INFO] - teacher: resnet18 on the pool's labels: epoch 1/8 done, step 71/568
[2026-12-04 19:01:41,000][ecos_pl.progress][INFO] - teacher: resnet18 on the pool's labels: training finished after 568 steps in 1m40s
[2026-12-04 19:01:50,000][ecos_pl.pipeline][INFO] - φ features of the 4,500 pool images: done in 8.0 s
[2026-12-04 19:01:51,000][ecos_pl.pipeline][INFO] - ECOSSampler: choosing the proxy set (k-means, the client's scores, the allocation): done in 1.2 s
[2026-12-04 19:02:40,000][ecos_pl.progress][INFO] - compression: resnet10t: training finished after 280 steps in 49s
[2026-12-04 19:02:43,000][ecos_pl.progress][INFO] - compression: resnet10t: testing finished in 2s
"""


def test_stage_times_come_from_the_progress_lines():
    assert first_run.stage_times(LOG) == {"data": 9.5, "φ fit": 0.4, "teacher": 100.0, "pool φ features": 8.0,
                                          "selection": 1.2, "student": 49.0, "test": 2.0}
    assert first_run._longest_silence(LOG) == 70.5


def test_readme_block_is_rewritten_between_its_markers_only(tmp_path):
    from benchmarks.results_md import write_readme_block

    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{first_run.START}\nold\n{first_run.END}\nafter\n")
    write_readme_block(readme, first_run.START, first_run.END, "new line")
    assert readme.read_text() == f"before\n{first_run.START}\nnew line\n{first_run.END}\nafter\n"
    untouched = tmp_path / "OTHER.md"
    untouched.write_text("no markers\n")
    write_readme_block(untouched, first_run.START, first_run.END, "new line")
    assert untouched.read_text() == "no markers\n"
