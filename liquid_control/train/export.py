"""Stage 5, export: the policy file (.lcp) and an ONNX model of one LTC step.

The ONNX graph is one control step on normalised input: inputs ``x`` (B, S), ``h`` (B, N) and
``elapsed`` (B,) in LTC time units (dt / time_unit_s); outputs ``y`` (B, M) in network units and
``h_next`` (B, N). Normalisation and action scaling stay outside the graph, in the spec stored in
the policy file (the ONNX metadata carries the spec as JSON too). The export is checked against
the numpy runtime (`Policy.network_step`) on a random input sequence with jittered dt.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np

from ..core.policy import Policy
from .config import TrainConfig
from .io import write_json


class ONNXExportError(RuntimeError):
    """The ONNX model does not reproduce the numpy runtime."""


def export_onnx(
    policy: Policy, path: str | os.PathLike, check_steps: int = 50, atol: float = 1e-4
) -> float:
    """Write the ONNX step model of `policy`; returns the max abs difference to the numpy runtime."""
    import onnx
    import torch

    from ..core.policy_file import atomic_write_bytes
    from ..nn import LTC

    model = LTC.from_policy(policy).eval()

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ltc = model

        def forward(self, x, h, elapsed):
            return self.ltc.step(x, h, elapsed)

    n, s = policy.wiring.units, policy.wiring.input_dim
    args = (torch.zeros(1, s), torch.zeros(1, n), torch.ones(1))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.onnx.export(
        Step(),
        args,
        str(tmp),
        input_names=["x", "h", "elapsed"],
        output_names=["y", "h_next"],
        dynamic_axes={k: {0: "batch"} for k in ("x", "h", "elapsed", "y", "h_next")},
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load(str(tmp))
    os.unlink(tmp)
    onnx.checker.check_model(proto)
    for key, value in (
        ("spec", json.dumps(policy.spec.to_dict())),
        ("time_unit_s", str(policy.time_unit_s)),
        ("policy_content_hash", str(policy.content_hash)),
    ):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write_bytes(path, proto.SerializeToString())
    return check_onnx(policy, path, check_steps, atol)


def check_onnx(
    policy: Policy, path: str | os.PathLike, steps: int = 50, atol: float = 1e-4
) -> float:
    """Run the ONNX model and the numpy runtime side by side; raise if they differ by > atol."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    ref = copy.deepcopy(policy)  # same weights and spec, its own state
    ref.reset()
    h = np.zeros((1, policy.wiring.units), np.float32)
    worst = 0.0
    for _ in range(steps):
        x = rng.normal(0, 1, policy.wiring.input_dim)
        elapsed = float(rng.uniform(0.5, 1.5))
        y_ref = ref.network_step(x, elapsed)
        y, h = session.run(
            None,
            {"x": x[None].astype(np.float32), "h": h, "elapsed": np.array([elapsed], np.float32)},
        )
        worst = max(worst, float(np.abs(y[0] - y_ref).max()), float(np.abs(h[0] - ref.state).max()))
    if not worst <= atol:
        raise ONNXExportError(f"{path}: ONNX and numpy runtime differ by {worst:.3g} (> {atol})")
    return worst


def export_run(cfg: TrainConfig, run_dir: str | os.PathLike) -> dict[str, Path]:
    """Policy file (the fine-tuned LTC if fine-tuning ran and beat distillation) and ONNX file."""
    from .distill import load_best
    from .io import read_json

    run_dir = Path(run_dir)
    out = run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    students, spec = load_best(cfg, run_dir)
    source = "distill"
    finetune_done = run_dir / "finetune" / "done.json"
    policy = None
    if finetune_done.exists() and read_json(finetune_done).get("improved"):
        policy = Policy.load(run_dir / "finetune" / "ltc19_finetuned.lcp")
        source = "finetune"
    else:
        policy = students["ltc"].to_policy(spec)
    timings = run_dir / "timings.json"
    policy.provenance = {
        **policy.provenance,
        "task": cfg.name,
        "env": cfg.env.id,
        "seed": cfg.seed,
        "stage": source,
        "config": cfg.source,
        "training_wall_s": read_json(timings) if timings.exists() else {},
    }
    files = {"policy": out / f"{cfg.name}_ltc{cfg.student.units}.lcp"}
    policy.save(files["policy"])
    policy = Policy.load(files["policy"])
    record = {"policy": str(files["policy"]), "content_hash": policy.content_hash, "source": source}
    if cfg.export.onnx:
        files["onnx"] = out / f"{cfg.name}_ltc{cfg.student.units}_step.onnx"
        record["onnx"] = str(files["onnx"])
        record["onnx_max_abs_diff"] = export_onnx(policy, files["onnx"])
    write_json(out / "done.json", record)
    return files
