"""The paper's ablation study (Tables I and II): train and evaluate each variant with one
short equal budget, beside the paper's published numbers."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

from letsplay.models.evaluate import evaluate, held_out_clips
from letsplay.models.performer import Performer

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- ablations

# The paper's published numbers (Tables I and II; Table III's "Ours" equals Table I's).
PAPER_TABLE_I: dict[str, dict[str, tuple[float, float]]] = {  # variant -> instrument -> (PSNR, SSIM)
    "no_cvg": {"cello": (15.073, 0.306), "trombone": (13.563, 0.206)},
    "no_khp": {"cello": (15.191, 0.465), "trombone": (14.753, 0.305)},
    "no_stu": {"cello": (15.767, 0.536), "trombone": (14.656, 0.362)},
    "no_gcn": {"cello": (16.253, 0.551), "trombone": (15.572, 0.395)},
    "no_gru": {"cello": (16.437, 0.548), "trombone": (15.519, 0.395)},
    "full": {"cello": (17.073, 0.563), "trombone": (15.910, 0.397)},
}
PAPER_TABLE_II: dict[str, dict[str, float]] = {  # variant -> instrument -> mean keypoint distance
    "kp_baseline": {"cello": 0.164, "trombone": 0.598},  # no avg condition, no DLT
    "kp_no_dlt": {"cello": 0.151, "trombone": 0.427},  # + avg condition
    "kp_no_avg": {"cello": 0.152, "trombone": 0.490},  # + DLT
    "kp_paper": {"cello": 0.117, "trombone": 0.392},  # the paper's full KP
}
TABLE_I_ROWS = (("no_cvg", "(a) w/o CVG"), ("no_khp", "(b) w/o KHP"), ("no_stu", "(c) w/o STU"),
                ("no_gcn", "(d) w/o GCN"), ("no_gru", "(e) w/o CNN-GRU"), ("full", "Ours"),
                ("warp", "(f) the warp instead of CVG (what ships)"))
# Table II: the paper's KP (window encoder, LSTM) and its switches, then ours (streaming
# encoder and motion heads) without and with the motion heads.
TABLE_II_ROWS = (("kp_baseline", "Baseline"), ("kp_no_dlt", "+ avg. condition"), ("kp_no_avg", "+ DLT"),
                 ("kp_paper", "Paper's KP (avg. condition + DLT)"), ("kp_no_motion", "Streaming encoder"),
                 ("full", "Ours: streaming encoder + motion heads"))
TABLE_I_VARIANTS = tuple(v for v, _ in TABLE_I_ROWS)
TABLE_II_VARIANTS = ("kp_baseline", "kp_no_dlt", "kp_no_avg", "kp_paper", "kp_no_motion")


def variant_config(preset_name: str, instrument: str, variant: str) -> Any:
    from letsplay.models.presets import ablate, preset

    cfg = preset(preset_name, instrument=instrument)
    if variant == "full":
        return cfg
    if variant in ("kp_baseline", "kp_no_dlt", "kp_no_avg"):  # the paper's switches, on the paper's KP
        paper = ablate(cfg, "kp_paper")
        out = ablate(ablate(paper, "kp_no_avg"), "kp_no_dlt") if variant == "kp_baseline" else ablate(paper, variant)
        return dataclasses.replace(out, preset=f"{preset_name}+{variant}")
    return ablate(cfg, variant)


def run_ablations(datas: list[str], preset_name: str, train_cfg: Any, out: str | Path,
                  variants: list[str] | None = None, split: str = "test", max_seconds: float | None = None,
                  device: str | None = None) -> dict[str, Any]:
    """Train and evaluate the Table I variants (whole recipe) and the Table II variants
    (the KP stage alone, with the same KP step budget as the full model's) for each
    dataset's instrument; write ``ablation.json`` and ``ablation.md`` into ``out``."""
    from letsplay.models.data.torch_dataset import open_sources
    from letsplay.models.train import schedule, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    res_path = out / "ablation.json"
    if res_path.is_file():  # finished variants of an earlier, interrupted run are kept
        results = json.loads(res_path.read_text()).get("results", {})
        for inst, recs in results.items():  # records of an older format are evaluated again
            stale = [v for v, r in recs.items() if "rows" not in r]
            for v in stale:
                log.info("ablation %s / %s: result of an older format; evaluating again", inst, v)
                del recs[v]
    kp_steps = next((e - s for name, s, e in schedule(train_cfg) if name == "kp"), train_cfg.steps)
    for data in datas:
        instrument = open_sources(data, split="train")[0].instrument
        clips = held_out_clips(data, split, instrument)
        for v in variants or (*TABLE_I_VARIANTS, *TABLE_II_VARIANTS):
            if v in results.get(instrument, {}):
                continue
            kp_only = v in TABLE_II_VARIANTS
            tc = dataclasses.replace(train_cfg, stage="kp", steps=kp_steps) if kp_only else train_cfg
            run_dir = out / instrument / v
            log.info("ablation %s / %s: training %d steps", instrument, v, tc.steps)
            tr = train(variant_config(preset_name, instrument, v), tc, data, run_dir, resume=True, device=device,
                       progress=False)
            model = Performer.load(tr.performer_path)
            ev = evaluate(model, clips, max_seconds, device or "cpu", kp_only=kp_only, progress=False,
                          renderer_only=False)
            rec = ev.to_dict()
            rec.pop("per_clip")
            rec.update(train_steps=tr.step, train_wall_s=tr.wall_s)
            results.setdefault(instrument, {})[v] = rec
            res_path.write_text(json.dumps({"preset": preset_name, "train": train_cfg.to_dict(),
                                            "results": results}, indent=1, default=_nan_none))
    md = ablation_markdown(results, preset_name, train_cfg.steps)
    (out / "ablation.md").write_text(md)
    return {"results": results, "markdown": md}


def _nan_none(x: Any) -> Any:
    return None


def _f(x: Any, nd: int) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _row(rec: dict[str, Any], row: str = "model") -> dict[str, Any]:
    return (rec.get("rows") or {}).get(row) or {}


def _sync_c(rec: dict[str, Any], row: str = "model") -> Any:
    return (_row(rec, row).get("sync") or {}).get("c")


def ablation_markdown(results: dict[str, dict[str, dict[str, Any]]], preset_name: str, steps: int) -> str:
    """Tables I and II as Markdown: ours beside the paper's, the trivial baselines (the
    full variant's still picture and still pose) and the sync score C (module docstring)."""
    insts = [i for i in ("cello", "trombone") if i in results]
    lines = [f"**Table I** (ours: preset `{preset_name}`, {steps} steps, held-out pieces; paper: Sub-URMP)", "",
             "| variant | " + " | ".join(f"{i} PSNR ours / paper | {i} SSIM ours / paper | {i} moving PSNR | "
                                         f"{i} checkerboard" for i in insts) + " |",
             "| --- |" + " --- | --- | --- | --- |" * len(insts)]
    for v, label in TABLE_I_ROWS:
        cells = []
        for i in insts:
            r = _row(results[i].get(v, {}))
            p = PAPER_TABLE_I.get(v, {}).get(i)
            cells += [f"{_f(r.get('psnr'), 2)} / {_f(p and p[0], 2)}", f"{_f(r.get('ssim'), 3)} / {_f(p and p[1], 3)}",
                      _f(r.get("psnr_moving"), 2), _f(r.get("checkerboard"), 2)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = []
    for i in insts:
        r = _row(results[i].get("full", {}), "still_picture")
        cells += [f"{_f(r.get('psnr'), 2)} / -", f"{_f(r.get('ssim'), 3)} / -", _f(r.get("psnr_moving"), 2),
                  _f(r.get("checkerboard"), 2)]
    lines.append("| Still picture (baseline) | " + " | ".join(cells) + " |")
    lines += ["", "**Table II** mean keypoint distance (normalised coordinates; lower is better) and sync C "
              "(0 = chance, 1 = every motion event on a note onset)", "",
              "| variant | " + " | ".join(f"{i} ours / paper | {i} sync C" for i in insts) + " |",
              "| --- |" + " --- | --- |" * len(insts)]
    for v, label in TABLE_II_ROWS:
        cells = []
        for i in insts:
            rec = results[i].get(v, {})
            paper = PAPER_TABLE_II.get(v, {}).get(i)
            cells += [f"{_f(_row(rec).get('kp_dist'), 4)} / {_f(paper, 3)}", _f(_sync_c(rec), 3)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for row, label in (("still_pose", "Still pose (baseline)"), ("ground_truth", "Ground truth (ceiling)")):
        cells = []
        for i in insts:
            rec = results[i].get("full", {})
            cells += [f"{_f(_row(rec, row).get('kp_dist'), 4)} / -", _f(_sync_c(rec, row), 3)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
