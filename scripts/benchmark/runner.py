"""`run`: compose the measurements into one run on one device, print the table, write the JSON."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scripts.benchmark.agreement import measure_agreement
from scripts.benchmark.common import (
    BUNDLE_ROOT,
    FLOOR_MODEL,
    MEASUREMENTS,
    MODELS,
    MODELS_WITH_DEPTHWISE,
    SCHEMA,
    Variant,
    _as_list,
    _device,
    _failed_rows,
    _free,
    _log,
    _rel,
    _short_error,
)
from scripts.benchmark.floor import count_model, floor_bytes, measure_ceilings
from scripts.benchmark.inference import measure_inference
from scripts.benchmark.loop import measure_train_loop
from scripts.benchmark.phantoms import ensure_phantoms
from scripts.benchmark.plan import _environment, default_plan
from scripts.benchmark.report import _annotate, _floor_lines, _fmt, _targets, format_table, recorded_command
from scripts.benchmark.step import measure_train_step
from scripts.benchmark.volume import measure_volume
from scripts.cli import as_bool
from scripts.io_utils import atomic_write_text


class BenchmarkOptionError(ValueError):
    """A command-line option the benchmark cannot use (an unknown plan field, model or measurement): the command
    line reports it as one `error:` line, not a traceback."""


def _overrides(value: dict | str | None, name: str) -> dict | None:
    """Config overrides from the command line: a dict (Fire parses `{"a": false}` itself but leaves JSON's
    true/false/null as strings) or JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise BenchmarkOptionError(f"--{name} is neither a dict nor JSON text ({err}): {value!r}") from None
    if not value:
        return None
    literals = {"true": True, "false": False, "null": None}
    return {k: literals.get(v, v) if isinstance(v, str) else v for k, v in dict(value).items()}


def run(
    only: str | Sequence[str] | None = None,
    device: str = "auto",
    output: str | None = None,
    features: str | Sequence[int] | None = None,
    quick: bool = False,
    models: str | Sequence[str] | None = None,
    variants: str | Sequence[str] | None = None,
    volume_variants: str | Sequence[str] | None = None,
    inference_variants: str | Sequence[str] | None = None,
    loop_variants: str | Sequence[str] | None = None,
    loop_overrides: dict | str | None = None,
    inference_overrides: dict | str | None = None,
    batch_size: int | None = None,
    size: int | None = None,
    depth: int | None = None,
    sw_batch_size: int | None = None,
    repeats: int | None = None,
    warmup: int | None = None,
    data_dir: str | None = None,
    checkpoint: str | None = None,
    time_budget_s: float | None = None,
    threads: int | None = None,
    seed: int = 0,
    **plan_overrides: Any,
) -> dict[str, Any]:
    """Measure training and inference speed of EAS U-Net and MONAI BasicUNet (same widths) on one device; print a
    markdown table (value, ratio to BasicUNet, % of the floor) and write everything to JSON.

    Args:
        only: comma-separated subset of floor, train_step, volume, inference, train_loop, agreement (default all).
        device: auto, cpu or cuda.
        output: JSON path (written atomically after each stage); default benchmark-<device>.json in the cwd.
        features: the five widths, e.g. 32,64,128,256,512 (default: configs/train.json's; --quick: 8,...,128).
        quick: tiny sizes and repeats (tests, CI).
        models: eas_unet,basic_unet (default both).
        variants: train_step variants, `+`-joined tokens fp32|bf16, cl, compile[=MODE], det, scaler.
        volume_variants: volume variants (same tokens, and fold, shift, ort: onnxruntime on a CPU).
        inference_variants: inference variants (fp32|bf16, cl, compile, bench, fold, measure, ort: cpu_runtime
            onnxruntime; without it cpu_runtime torch).
        loop_variants: train_loop variants (fp32|bf16, cl, compile, nwN).
        loop_overrides: extra config overrides for train_loop, a dict or JSON text, e.g.
            '{"train#dataset#copy_cache": false}'.
        inference_overrides: extra configs/inference.json overrides for inference, the same way, e.g.
            '{"postprocessing#transforms#3#_target_": "AsDiscreted"}' (MONAI's argmax, the 0.4.16 way).
        batch_size: training batch (default configs/train.json's 16).
        size: in-plane size of slices and phantoms (default 384).
        depth: slices per volume (default 160).
        sw_batch_size: slices per inference chunk (default configs/inference.json's).
        repeats: timed repeats of train_step and volume.
        warmup: warm-up repeats of train_step and volume.
        data_dir: phantom cache (default <bundle>/data/benchmark; generation takes seconds per full-size case).
        checkpoint: trained EAS U-Net state_dict (at --features) for the agreement check and the EAS inference
            runs; default: agreement on a model trained here briefly, inference with random weights.
        time_budget_s: start no new measurement after this many seconds (CUDA default 400, then the run ends within
            about a minute); compile variants run after the plain ones, only with `compile_reserve_s` left.
        threads: torch CPU threads (default: the number of cores this process may use).
        seed: seed of models and inputs.
        **plan_overrides: any other field of `Plan` (e.g. --infer_runs 5 --loop_budget_s 60).

    Returns:
        The report dict that is written to JSON.
    """
    dev = _device(device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(int(threads or cores))
    plan = default_plan(dev, as_bool(quick, "quick"))
    for key, value in {
        "features": _as_list(features, int) or None,
        "models": _as_list(models) or None,
        "variants": _as_list(variants) or None,
        "volume_variants": _as_list(volume_variants) or None,
        "inference_variants": _as_list(inference_variants) or None,
        "loop_variants": _as_list(loop_variants) or None,
        "batch_size": batch_size,
        "size": size,
        "depth": depth,
        "sw_batch_size": sw_batch_size,
        "train_repeats": repeats,
        "volume_repeats": repeats,
        "train_warmup": warmup,
        "volume_warmup": warmup,
        "time_budget_s": time_budget_s,
    }.items():
        if value is not None:
            setattr(plan, key, value)
    for key, value in plan_overrides.items():
        if not hasattr(plan, key):
            raise BenchmarkOptionError(f"unknown option --{key}; see `python -m scripts.benchmark --help`")
        setattr(plan, key, type(getattr(plan, key))(value) if getattr(plan, key) is not None else value)
    if len(plan.features) != 5:
        raise BenchmarkOptionError(f"features must be five widths, got {plan.features}")
    unknown = [m for m in plan.models if m not in MODELS]
    if unknown:
        raise BenchmarkOptionError(f"unknown models {unknown}; choose from {MODELS}")
    selected = _as_list(only) or list(MEASUREMENTS)
    bad = [m for m in selected if m not in MEASUREMENTS]
    if bad:
        raise BenchmarkOptionError(f"unknown measurements {bad}; choose from {MEASUREMENTS}")
    loop_overrides = _overrides(loop_overrides, "loop_overrides")
    inference_overrides = _overrides(inference_overrides, "inference_overrides")
    output_path = Path(output) if output else Path.cwd() / f"benchmark-{dev.type}.json"
    data_root = Path(data_dir) if data_dir else BUNDLE_ROOT / "data" / "benchmark"
    start = time.perf_counter()

    def left() -> float:
        return math.inf if plan.time_budget_s is None else plan.time_budget_s - (time.perf_counter() - start)

    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": recorded_command(sys.argv[1:])
        if Path(sys.argv[0]).parent.name == "benchmark"
        else "scripts.benchmark.run(...)",
        "environment": _environment(dev),
        "settings": {k: v for k, v in plan.__dict__.items() if k != "extra"}
        | {
            "only": selected,
            "quick": bool(quick),
            "seed": seed,
            "data_dir": _rel(data_root),
            "checkpoint": Path(checkpoint).name if checkpoint else None,
            "loop_overrides": loop_overrides,
            "inference_overrides": inference_overrides,
        },
        "floor_model": FLOOR_MODEL,
        "ceilings": None,
        "models": {},
        "results": [],
        "targets": [],
        "notes": [],
    }
    rows: list[dict] = report["results"]

    def save() -> None:
        report["elapsed_s"] = time.perf_counter() - start
        atomic_write_text(output_path, json.dumps(report, indent=1, default=str) + "\n")

    def attempt(measurement, metrics, model, variant_name, fn, reserve: float = 0.0) -> None:
        if left() < reserve or left() <= 0:
            rows.extend(_failed_rows(measurement, metrics, model, variant_name, "skipped: time budget"))
            _log(f"{measurement} {model} {variant_name}: skipped (time budget)")
            return
        t0 = time.perf_counter()
        try:
            new = fn()
        except Exception as exc:  # one failing variant (e.g. a compile error) must not end the run
            status = f"failed: {_short_error(exc)}"
            rows.extend(_failed_rows(measurement, metrics, model, variant_name, status))
            _log(f"{measurement} {model} {variant_name}: {status}")
            _free(dev)
            return
        for r in new:
            r["details"]["wall_s"] = time.perf_counter() - t0
            _log(f"{r['measurement']} {r['metric']} {r['model']} {r['variant']}: {_fmt(r['value'])} {r['unit']}")
        rows.extend(new)
        save()

    _log(
        f"device {dev} ({report['environment']['device_name']}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, plan: features {plan.features}, size {plan.size}, depth {plan.depth}, "
        f"batch {plan.batch_size}, sw_batch_size {plan.sw_batch_size}"
    )

    # data first: generation forks worker processes, best done before CUDA is initialised
    needs_data = [m for m in ("inference", "train_loop", "agreement") if m in selected]
    dataset = None
    if needs_data:
        shape = (plan.depth, plan.size, plan.size)
        num_train = plan.loop_cases if "train_loop" in selected or plan.agreement_train_steps > 0 else 0
        try:
            dataset = ensure_phantoms(data_root, shape, num_train, max(plan.test_cases, 1), seed=seed)
        except Exception as exc:
            report["notes"].append(f"phantom generation failed: {_short_error(exc)}")
            _log(report["notes"][-1])

    # floor: count first
    stats: dict[str, dict] = {}
    if "floor" in selected:
        try:
            precisions = {Variant.parse(v).precision for v in plan.variants + plan.volume_variants}
            report["ceilings"] = measure_ceilings(dev, bool(quick), sorted(precisions))
        except Exception as exc:
            report["notes"].append(f"ceilings failed: {_short_error(exc)}")
        for name in plan.models:
            try:
                s = count_model(name, plan.features, plan.size)
                s.update(floor_bytes(s, plan.size, plan.batch_size, plan.sw_batch_size))
                stats[name] = s
            except Exception as exc:
                report["notes"].append(f"counting {name} failed: {_short_error(exc)}")
        report["models"] = stats
        for line in _floor_lines(report):
            _log(line)
        save()

    train_metrics = [("throughput", "slices/s")] + ([("peak_memory", "GiB")] if dev.type == "cuda" else [])
    volume_metrics = [("time", "s/volume")]
    workdir = Path(tempfile.mkdtemp(prefix="knee-benchmark-"))
    scan = None
    if dataset is not None:
        scan = dataset / json.loads((dataset / "datalist.json").read_text())["test"][0]["image"]
    main_model = plan.models[0]

    # Jobs as (phase, measurement, metrics, model, variant, function, reserve). Phase 0: what decides the issue's
    # targets (every train_step variant for every model, the main model elsewhere); phase 1: the baseline's
    # workflow runs and compiled volume, and further variants. Within a phase, plain before compiled.
    jobs: list[tuple] = []

    def job(phase, measurement, metrics, name, v: Variant, fn, reserve=0.0):
        if v.shifted and name not in MODELS_WITH_DEPTHWISE:  # nothing to shift: the unshifted row is the same
            return
        jobs.append(
            (
                phase,
                1 if v.compile else 0,
                len(jobs),
                measurement,
                metrics,
                name,
                v,
                fn,
                max(reserve, plan.compile_reserve_s if v.compile else 0.0),
            )
        )

    for v in map(Variant.parse, plan.variants if "train_step" in selected else []):
        for name in plan.models:
            job(
                0,
                "train_step",
                train_metrics,
                name,
                v,
                lambda n=name, v=v: measure_train_step(
                    n,
                    v,
                    dev,
                    plan.features,
                    plan.batch_size,
                    plan.size,
                    plan.train_warmup,
                    plan.train_repeats,
                    plan.train_budget_s,
                    seed,
                ),
            )
    for v in map(Variant.parse, plan.volume_variants if "volume" in selected else []):
        for name in plan.models:
            phase = 0 if name == main_model or not v.compile or plan.baseline_everywhere else 1
            job(
                phase,
                "volume",
                volume_metrics,
                name,
                v,
                lambda n=name, v=v: measure_volume(
                    n,
                    v,
                    dev,
                    plan.features,
                    plan.depth,
                    plan.size,
                    plan.sw_batch_size,
                    plan.volume_warmup,
                    plan.volume_repeats,
                    plan.volume_budget_s,
                    plan.slice_inferer,
                    seed,
                ),
            )
    if "agreement" in selected and dataset is not None:
        job(
            0,
            "agreement",
            [("max_dice_change", "Dice"), ("voxels_differing", "fraction")],
            main_model,
            Variant(),
            lambda: measure_agreement(
                main_model,
                dev,
                plan.features,
                dataset,
                plan.size,
                plan.sw_batch_size,
                checkpoint,
                0 if checkpoint else plan.agreement_train_steps,
                plan.batch_size,
                seed,
            ),
        )
    for k, v in enumerate(map(Variant.parse, plan.inference_variants if "inference" in selected and scan else [])):
        for name in plan.models:
            phase = 0 if (name == main_model and k == 0) or plan.baseline_everywhere else 1
            if k > 0 and name != main_model and not plan.baseline_everywhere:
                continue  # the baseline: first variant only
            job(
                phase,
                "inference",
                volume_metrics,
                name,
                v,
                lambda n=name, v=v, k=k: measure_inference(
                    n,
                    v,
                    dev,
                    plan.features,
                    scan,
                    workdir,
                    plan.size,
                    plan.sw_batch_size,
                    plan.infer_warmup_runs,
                    plan.infer_runs,
                    plan.infer_volumes if k == 0 and n == main_model else 1,
                    keep_spacing=plan.size != 384,
                    checkpoint=checkpoint if n == "eas_unet" else None,
                    config_overrides=inference_overrides,
                ),
                15.0,
            )
    for k, v in enumerate(map(Variant.parse, plan.loop_variants if "train_loop" in selected and dataset else [])):
        for name in plan.models:
            phase = 0 if (name == main_model and k == 0) or plan.baseline_everywhere else 1
            if k > 0 and name != main_model and not plan.baseline_everywhere:
                continue
            job(
                phase,
                "train_loop",
                [("throughput", "slices/s")],
                name,
                v,
                lambda n=name, v=v: measure_train_loop(
                    n,
                    v,
                    dev,
                    plan.features,
                    dataset,
                    workdir,
                    plan.size,
                    plan.batch_size,
                    plan.loop_slices_per_epoch,
                    plan.loop_epochs,
                    plan.loop_budget_s,
                    plan.loop_loader_batches,
                    keep_spacing=plan.size != 384,
                    overrides=loop_overrides,
                ),
                20.0,
            )
    try:
        for _, _, _, measurement, metrics, name, v, fn, reserve in sorted(jobs, key=lambda j: j[:3]):
            label = "bf16 vs fp32" if measurement == "agreement" else v.name
            attempt(measurement, metrics, name, label, fn, reserve)
            if v.compile:
                torch._dynamo.reset()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    _annotate(rows, stats, report["ceilings"], plan, dev)
    report["targets"] = _targets(rows, dev, plan)
    report["table"] = format_table(report)
    save()
    print()
    for line in _floor_lines(report):
        print(line)
    print()
    print(report["table"])
    if report["targets"]:
        print()
        for t in report["targets"]:
            print(f"target {'MET ' if t['met'] else 'MISS'}: {t['target']}: {_fmt(t['value'])} ({t['where']})")
    for note in report["notes"]:
        print(f"note: {note}")
    print(
        f"\n{report['environment']['device_name']}, torch {torch.__version__}, monai {report['environment']['monai']}"
        f"; {report['elapsed_s']:.0f} s; JSON: {output_path.name}"
    )
    return report
