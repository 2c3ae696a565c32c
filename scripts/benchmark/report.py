"""Ratios, floors and targets of the measured rows, and the printed table."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from scripts.benchmark.common import BASELINE, MODEL_LABELS, MODELS, Variant
from scripts.benchmark.plan import Plan


def _rate(ceilings: dict, precision: str, device: torch.device) -> float | None:
    rates = ceilings.get("matmul_tflops", {})
    if precision == "fp32" and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        precision = "tf32"
    value = rates.get(precision) or rates.get("fp32")
    return None if value is None else value * 1e12


def _baseline_variant(name: str) -> str:
    """The baseline's row for variant `name`: the same, less `shift` (BasicUNet has no depthwise convolution)."""
    try:
        variant = Variant.parse(name)
    except ValueError:  # not a variant (e.g. an agreement row's "bf16 vs fp32")
        return name
    return replace(variant, shifted=False).name if variant.shifted else name


def _annotate(rows: list[dict], stats: dict, ceilings: dict | None, plan: Plan, device: torch.device) -> None:
    """Add ratio to BasicUNet (same measurement, metric and variant) and the floor to every row."""
    index = {(r["measurement"], r["metric"], r["model"], r["variant"]): r for r in rows}
    for r in rows:
        if r["measurement"] == "train_loop" and r["value"] is not None:
            step = index.get(("train_step", "throughput", r["model"], r["details"].get("step_variant")))
            if step is not None and step["value"]:
                r["details"]["pct_of_train_step"] = 100.0 * r["value"] / step["value"]
    for r in rows:
        base = index.get((r["measurement"], r["metric"], BASELINE, _baseline_variant(r["variant"])))
        ok = r["value"] is not None and base is not None and base["value"] not in (None, 0)
        r["ratio_to_basic_unet"] = r["value"] / base["value"] if ok else None
        r["floor_value"], r["pct_of_floor"] = None, None
        s = stats.get(r["model"])
        if not ceilings or not s or r["value"] in (None, 0):
            continue
        precision = Variant.parse(r["variant"]).precision if "vs" not in r["variant"] else "fp32"
        rate, bw = _rate(ceilings, precision, device), ceilings.get("copy_gb_per_s")
        if not rate or not bw:
            continue
        bw *= 1e9
        eager_key = "bf16" if precision == "bf16" else "fp32"
        if r["measurement"] in ("train_step", "train_loop") and r["metric"] == "throughput":
            t = max(s["flops_train_per_slice"] / rate, s["bytes_min_train_per_slice"] / bw)
            r["floor_value"] = 1.0 / t
            r["pct_of_floor"] = 100.0 * r["value"] / r["floor_value"]
            eager = s[f"bytes_eager_train_per_slice_{eager_key}"] + 5 * s["parameter_bytes"] / plan.batch_size
            r["details"]["eager_traffic_bound"] = bw / eager  # slices/s if unfused eager traffic ran at copy speed
        elif r["measurement"] in ("volume", "volume_sliceinferer", "inference", "inference_batch"):
            depth = r["details"].get("depth") or (r["details"].get("scan_shape") or [plan.depth])[0]
            t = depth * max(s["flops_forward_per_slice"] / rate, s["bytes_min_infer_per_slice"] / bw)
            r["floor_value"] = t
            r["pct_of_floor"] = 100.0 * t / r["value"]
            r["details"]["eager_traffic_bound"] = depth * s[f"bytes_eager_forward_per_slice_{eager_key}"] / bw


def _targets(rows: list[dict], device: torch.device, plan: Plan) -> list[dict]:
    """The issue's targets that this run's rows can decide (full size only)."""
    out: list[dict] = []
    if plan.size != 384:
        return out

    def ok(r):
        return r["status"] == "ok" and r["value"] is not None

    def pick(measurement, metric, model="eas_unet", precision=None):
        found = [
            r
            for r in rows
            if r["measurement"] == measurement and r["metric"] == metric and r["model"] == model and ok(r)
        ]
        if precision:
            found = [r for r in found if Variant.parse(r["variant"]).precision == precision]
        return found

    def add(name, target, value, met, where=""):
        out.append({"target": name, "threshold": target, "value": value, "met": met, "where": where})

    if device.type == "cuda":
        steps = [r for r in pick("train_step", "throughput", precision="bf16") if "det" not in r["variant"]]
        if steps:
            best = max(steps, key=lambda r: r["value"])
            add(
                "training step >= 1000 slices/s (bf16, batch 16)",
                1000,
                best["value"],
                best["value"] >= 1000,
                best["variant"],
            )
            mem = [r for r in pick("train_step", "peak_memory") if r["variant"] == best["variant"]]
            if mem:
                add("peak training memory <= 6 GiB", 6.0, mem[0]["value"], mem[0]["value"] <= 6.0, best["variant"])
        ratios = [r for r in pick("train_step", "throughput") if r.get("ratio_to_basic_unet") is not None]
        if ratios:
            worst = min(ratios, key=lambda r: r["ratio_to_basic_unet"])
            add(
                "EAS U-Net training not slower than BasicUNet (min ratio over variants)",
                1.0,
                worst["ratio_to_basic_unet"],
                worst["ratio_to_basic_unet"] >= 1.0,
                worst["variant"],
            )
        vols = pick("volume_sliceinferer", "time", precision="bf16") or pick("volume", "time", precision="bf16")
        if vols:
            best = min(vols, key=lambda r: r["value"])
            add(
                "model time for a 160-slice volume <= 0.05 s",
                0.05,
                best["value"],
                best["value"] <= 0.05,
                f"{best['measurement']} {best['variant']}",
            )
        infer = pick("inference", "time", precision="bf16")
        if infer:
            best = min(infer, key=lambda r: r["value"])
            add("end-to-end inference of one volume <= 2 s", 2.0, best["value"], best["value"] <= 2.0, best["variant"])
        for r in pick("train_loop", "throughput"):
            pct = r["details"].get("pct_of_train_step")
            if pct is not None:
                add("training loop >= 80 % of the step throughput", 80.0, pct, pct >= 80.0, r["variant"])
        agree = pick("agreement", "max_dice_change")
        if agree:
            r = agree[0]
            add(
                "bf16 Dice within 0.001 of fp32 (phantom test set)",
                0.001,
                r["value"],
                r["value"] <= 0.001,
                r["details"]["model_source"],
            )
    else:
        infer = pick("inference", "time")
        if infer:
            best = min(infer, key=lambda r: r["value"])
            add(
                "CPU end-to-end inference of one volume <= 60 s",
                60.0,
                best["value"],
                best["value"] <= 60.0,
                best["variant"],
            )
    return out


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if value == 0 or not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def format_table(report: dict) -> str:
    """The compact markdown table printed at the end (and written to docs by hand)."""
    lines = [
        "| measurement | model | options | value | unit | ratio to BasicUNet | % of floor |",
        "|---|---|---|---|---|---|---|",
    ]
    order = {
        m: i
        for i, m in enumerate(
            (
                "train_step",
                "train_loop",
                "loader",
                "volume",
                "volume_sliceinferer",
                "inference",
                "inference_batch",
                "agreement",
            )
        )
    }
    rows = sorted(
        report["results"],
        key=lambda r: (
            order.get(r["measurement"], 99),
            r["metric"],
            r["variant"],
            MODELS.index(r["model"]) if r["model"] in MODELS else 9,
        ),
    )
    for r in rows:
        name = r["measurement"] if r["metric"] in ("throughput", "time") else f"{r['measurement']} {r['metric']}"
        value = _fmt(r["value"]) if r["status"] == "ok" else r["status"][:60]
        extra = r["details"].get("pct_of_train_step")
        if extra is not None:
            value += f" ({extra:.0f} % of step)"
        lines.append(
            f"| {name} | {MODEL_LABELS.get(r['model'], r['model'])} | {r['variant']} | {value} | {r['unit']} | "
            f"{_fmt(r.get('ratio_to_basic_unet'), 3)} | {_fmt(r.get('pct_of_floor'), 3)} |"
        )
    return "\n".join(lines)


def _floor_lines(report: dict) -> list[str]:
    lines = []
    c = report.get("ceilings")
    if c:
        rates = ", ".join(f"{k} {_fmt(v, 3)} TFLOP/s" for k, v in c["matmul_tflops"].items())
        lines.append(f"ceilings: matmul {rates}; copy {_fmt(c['copy_gb_per_s'], 3)} GB/s")
    for name, s in report.get("models", {}).items():
        lines.append(
            f"{MODEL_LABELS.get(name, name)}: {s['parameters'] / 1e6:.2f} M params; per slice: forward "
            f"{s['flops_forward_per_slice'] / 1e9:.2f} GFLOP, training {s['flops_train_per_slice'] / 1e9:.2f} GFLOP "
            f"({100 * s['flops_train_grouped'] / max(s['flops_train_per_slice'], 1):.0f} % grouped); minimum bytes "
            f"train {s['bytes_min_train_per_slice'] / 1e6:.2f} MB, "
            f"infer {s['bytes_min_infer_per_slice'] / 1e6:.2f} MB; "
            f"eager bytes train {s['bytes_eager_train_per_slice_fp32'] / 1e9:.2f} GB fp32 / "
            f"{s['bytes_eager_train_per_slice_bf16'] / 1e9:.2f} GB bf16"
        )
        if c and c.get("copy_gb_per_s"):
            bw = c["copy_gb_per_s"] * 1e9
            lines[-1] += "; eager-traffic bound " + ", ".join(
                f"{k} {bw / s[f'bytes_eager_train_per_slice_{k}']:.0f} train slices/s" for k in ("fp32", "bf16")
            )
    return lines


def recorded_command(args: Sequence[str]) -> str:
    """The command line as the JSON records it, absolute paths cut to their file names: the JSON files are committed
    under docs/, and a path of the machine that ran them means nothing elsewhere."""

    def strip(arg: str) -> str:
        flag, eq, value = arg.partition("=")
        if eq and flag.startswith("-") and os.path.isabs(value):
            return f"{flag}={Path(value).name}"
        return Path(arg).name if os.path.isabs(arg) else arg

    return " ".join(["python -m scripts.benchmark", *(strip(a) for a in args)])
