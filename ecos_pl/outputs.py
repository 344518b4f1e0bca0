"""What a run leaves in its folder for people and for the client device: the proxy set as a table, the student's weights.

`proxy_set.csv` names every selected pool sample (its file when the data came from disk),
its domain, the cluster it came from and that cluster's score, and the target it was
trained on, so the selection can be inspected or reused without the cache. The student is
what the client needs: `student.safetensors` (our classifier format, no pickle) and, when
the `onnx` extra is installed, `student.onnx`. Everything is written through
`ecos_pl.atomic`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from ecos_pl.atomic import write_text_atomic

PROXY_COLUMNS = ["pool_index", "path", "domain", "label", "cluster", "cluster_score", "target"]
#: the ONNX opset of `student.onnx` (what ONNX Runtime 1.17+ runs)
ONNX_OPSET = 18


def proxy_set_rows(datamodule) -> list[dict]:
    """One row per selected pool sample (none for the client-data reference, which selects nothing)."""
    data, sel = datamodule.data, datamodule.selection
    if datamodule.sampler.trains_on_client:
        return []
    paths = data.meta.get("pool_paths")
    assignments = sel.diagnostics.get("assignments")
    scores = sel.diagnostics.get("scores")
    targets = datamodule.proxy_targets
    rows = []
    for i, idx in enumerate(np.asarray(sel.indices, dtype=np.int64)):
        cluster = None if assignments is None else int(assignments[idx])
        rows.append({
            "pool_index": int(idx),
            "path": "" if paths is None else str(paths[idx]),
            "domain": data.domain_names[int(data.pool.domains[idx])],
            "label": int(data.pool.labels[idx]),
            "cluster": "" if cluster is None else cluster,
            "cluster_score": "" if scores is None or cluster is None else float(scores[cluster]),
            "target": "" if targets is None else int(targets[i]),
        })
    return rows


def write_proxy_set_csv(datamodule, path: str | Path) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PROXY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(proxy_set_rows(datamodule))
    return write_text_atomic(path, buffer.getvalue())


def save_student(model, folder: str | Path, meta: dict) -> dict:
    """`student.safetensors`, and `student.onnx` when onnx is installed: {kind: path}."""
    from ecos_pl.scenarios.teacher import save_classifier

    folder = Path(folder)
    written = {"safetensors": str(save_classifier(model, folder / "student.safetensors", meta=meta))}
    onnx_path = export_onnx(model, folder / "student.onnx", meta["image_size"])
    if onnx_path is not None:
        written["onnx"] = str(onnx_path)
    return written


def export_onnx(model, path: Path, image_size: int) -> Path | None:
    """The student as ONNX (torch.onnx's dynamo exporter), batch dimension dynamic; None without onnx installed."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxscript") is None:
        return None
    import torch

    from ecos_pl.atomic import write_atomic

    model = model.eval()
    example = torch.rand(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(model, (example,), dynamo=True, opset_version=ONNX_OPSET, verbose=False,
                                dynamic_shapes={"x": {0: batch}}, input_names=["image"], output_names=["logits"])
    write_atomic(path, lambda f: f.write(program.model_proto.SerializeToString()))
    meta = {"opset": ONNX_OPSET, "input": [None, 3, image_size, image_size], "input_range": "[0, 1], RGB, normalised inside"}
    write_text_atomic(path.with_suffix(".onnx.json"), json.dumps(meta, indent=2))
    return path
