"""`python -m scripts.benchmark` in --quick mode on CPU: it runs, writes JSON of the right structure, and its values
are sane.

No timing thresholds here (speed is proved by the benchmark itself on the target device, not by a timed test).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts.benchmark import MEASUREMENTS, MODELS, Variant, recorded_command, run, workflow_runs

TINY = (8, 16, 32, 64, 128)

# (measurement, metric, unit) rows expected for every model in the quick run below
EXPECTED_ROWS = [
    ("train_step", "throughput", "slices/s"),
    ("volume", "time", "s/volume"),
    ("volume_sliceinferer", "time", "s/volume"),
    ("inference", "time", "s/volume"),
    ("train_loop", "throughput", "slices/s"),
    ("loader", "throughput", "slices/s"),
]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """One quick CPU run of every measurement (tiny phantoms 16x64x64, tiny widths); about 20 s on 2 cores."""
    tmp = tmp_path_factory.mktemp("benchmark")
    output = tmp / "bench.json"
    report = run(
        quick=True,
        device="cpu",
        features=TINY,
        output=str(output),
        data_dir=str(tmp / "data"),
        threads=1,  # a shared 2-core machine: one thread gives the steadiest run time
    )
    return report, output


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_json_written_and_equal_to_report(quick_report):
    report, output = quick_report
    loaded = json.loads(output.read_text())
    assert loaded["schema"] == report["schema"] == "knee-cartilage-benchmark/1"
    for key in ("environment", "settings", "floor_model", "ceilings", "models", "results", "targets", "table"):
        assert key in loaded, key
    assert loaded["environment"]["device"] == "cpu"
    assert loaded["settings"]["quick"] is True
    assert loaded["settings"]["features"] == list(TINY)
    assert len(loaded["results"]) == len(report["results"])


def test_floor_counts(quick_report):
    report, _ = quick_report
    ceilings = report["ceilings"]
    assert all(_finite_positive(v) for v in ceilings["matmul_tflops"].values())
    assert _finite_positive(ceilings["copy_gb_per_s"])
    eas, basic = report["models"]["eas_unet"], report["models"]["basic_unet"]
    for stats in (eas, basic):
        assert _finite_positive(stats["flops_forward_per_slice"])
        assert stats["flops_train_per_slice"] > stats["flops_forward_per_slice"]
        assert stats["bytes_min_train_per_slice"] > 0 and stats["bytes_min_infer_per_slice"] > 0
        assert stats["bytes_eager_train_per_slice_fp32"] > stats["bytes_eager_train_per_slice_bf16"] > 0
    assert eas["parameters"] < basic["parameters"]
    assert eas["flops_forward_per_slice"] < basic["flops_forward_per_slice"]
    assert eas["flops_train_grouped"] > 0 and basic["flops_train_grouped"] == 0  # depthwise convs only in EAS


@pytest.mark.parametrize("measurement, metric, unit", EXPECTED_ROWS)
@pytest.mark.parametrize("model", MODELS)
def test_result_rows(quick_report, measurement, metric, unit, model):
    report, _ = quick_report
    rows = [r for r in report["results"] if (r["measurement"], r["metric"], r["model"]) == (measurement, metric, model)]
    assert rows, f"no {measurement} {metric} row for {model}"
    for r in rows:
        assert r["status"] == "ok", r["status"]
        assert r["unit"] == unit
        assert _finite_positive(r["value"])
        assert _finite_positive(r["ratio_to_basic_unet"])
        if model == "basic_unet":
            assert r["ratio_to_basic_unet"] == pytest.approx(1.0)
        for t in r["details"].get("times_s", []):
            assert _finite_positive(t)
        if measurement != "loader":
            assert _finite_positive(r["pct_of_floor"])


def test_inference_breakdown_and_loop_details(quick_report):
    report, _ = quick_report
    infer = next(r for r in report["results"] if r["measurement"] == "inference" and r["model"] == "eas_unet")
    parts = infer["details"]["breakdown_median_s"]
    for key in ("setup_s", "run_s", "load_preprocess_s", "infer_s", "postprocess_save_s"):
        assert parts[key] >= 0, key
    assert parts["total_s"] >= parts["run_s"]
    loop = next(r for r in report["results"] if r["measurement"] == "train_loop" and r["model"] == "eas_unet")
    assert loop["details"]["epochs_run"] == 2
    assert loop["details"]["timed_slices"] > 0
    assert loop["details"]["pct_of_train_step"] > 0
    # the variant's layout reaches the config through its own keys, both ways (the configs default to channels_last)
    overrides = loop["details"]["overrides"]
    assert overrides["channels_last"] == ("+cl" in loop["variant"])
    assert overrides["shifted_depthwise"] == ("shift" in loop["variant"])


def test_agreement(quick_report):
    report, _ = quick_report
    rows = {r["metric"]: r for r in report["results"] if r["measurement"] == "agreement"}
    assert set(rows) == {"max_dice_change", "voxels_differing"}
    assert 0.0 <= rows["max_dice_change"]["value"] <= 1.0
    assert 0.0 <= rows["voxels_differing"]["value"] <= 1.0
    assert "trained here" in rows["max_dice_change"]["details"]["model_source"]


def test_table_lists_every_row(quick_report):
    report, _ = quick_report
    table = report["table"].splitlines()
    assert table[0].startswith("| measurement | model | options | value | unit | ratio to BasicUNet | % of floor |")
    assert len(table) == 2 + len(report["results"])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("fp32", Variant()),
        ("bf16+cl", Variant(precision="bf16", channels_last=True)),
        ("bf16+cl+compile", Variant(precision="bf16", channels_last=True, compile="default")),
        ("bf16+compile=max-autotune-no-cudagraphs", Variant(precision="bf16", compile="max-autotune-no-cudagraphs")),
        ("bf16+det", Variant(precision="bf16", deterministic=True)),
        ("bf16+cl+nw8", Variant(precision="bf16", channels_last=True, num_workers=8)),
        ("bf16+cl+shift+compile+nw8", Variant("bf16", True, "default", num_workers=8, shifted=True)),
        ("fp32+cl+fold+ort", Variant(channels_last=True, fold=True, onnxruntime=True)),
    ],
)
def test_variant_parse(text, expected):
    variant = Variant.parse(text)
    assert variant == expected
    assert Variant.parse(variant.name) == variant
    assert "nw" not in variant.step_key  # a train_loop variant maps to the train_step variant without loader workers


def quick_train_step(tmp_path, **options) -> dict:
    """A --quick CPU run of the training step alone, writing bench.json into tmp_path."""
    return run(
        only="train_step", device="cpu", quick=True, features=TINY, output=str(tmp_path / "bench.json"), threads=1,
        **options,
    )  # fmt: skip


def test_shift_runs_on_eas_unet_only_and_compares_with_the_unshifted_baseline(tmp_path):
    """BasicUNet has no depthwise convolution: a `shift` variant is measured for EAS U-Net alone and its ratio is
    taken against BasicUNet's row without `shift`."""
    report = quick_train_step(tmp_path, variants="fp32,fp32+shift")
    rows = {(r["model"], r["variant"]): r for r in report["results"] if r["metric"] == "throughput"}
    assert set(rows) == {("eas_unet", "fp32"), ("basic_unet", "fp32"), ("eas_unet", "fp32+shift")}
    shifted, base = rows[("eas_unet", "fp32+shift")], rows[("basic_unet", "fp32")]
    assert shifted["ratio_to_basic_unet"] == pytest.approx(shifted["value"] / base["value"])


def test_inference_in_onnxruntime_with_config_overrides(tmp_path, caplog):
    """The `ort` variant runs inference.json with cpu_runtime onnxruntime, and `inference_overrides` reach the
    config (here MONAI's own AsDiscreted, the baseline of scripts.discrete) and the JSON's settings."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    swap = {"postprocessing#transforms#3#_target_": "AsDiscreted"}
    report = run(
        only="inference", device="cpu", quick=True, features=TINY, models="eas_unet", threads=1,
        inference_variants="fp32+cl+fold+ort", inference_overrides=json.dumps(swap),
        output=str(tmp_path / "bench.json"), data_dir=str(tmp_path / "data"),
    )  # fmt: skip
    rows = [r for r in report["results"] if r["measurement"] == "inference"]
    assert [(r["variant"], r["status"]) for r in rows] == [("fp32+cl+fold+ort", "ok")]
    assert _finite_positive(rows[0]["value"])
    assert report["settings"]["inference_overrides"] == swap
    with pytest.raises(ValueError, match="--inference_overrides is neither a dict nor JSON text"):
        run(only="inference", device="cpu", quick=True, inference_overrides="{not", output=str(tmp_path / "b.json"))


def test_variant_parse_rejects_unknown_token():
    with pytest.raises(ValueError, match="unknown variant token"):
        Variant.parse("bf16+turbo")


def test_failed_variant_is_recorded_not_raised(tmp_path):
    report = quick_train_step(tmp_path, models="eas_unet", variants="fp32+compile=no-such-mode")
    (row,) = [r for r in report["results"] if r["metric"] == "throughput"]
    assert row["status"].startswith("failed:") and row["value"] is None
    assert json.loads((tmp_path / "bench.json").read_text())["results"][0]["status"].startswith("failed:")


def test_unknown_measurement_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown measurements"):
        run(only="train_step,warp_speed", device="cpu", quick=True, output=str(tmp_path / "x.json"))


def test_command_line(tmp_path):
    """`python -m scripts.benchmark` (fire) prints the table last and writes the JSON."""
    output = tmp_path / "cli.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.benchmark",
            "--quick",
            "--device",
            "cpu",
            "--only",
            "train_step",
            "--models",
            "eas_unet,basic_unet",
            "--features",
            ",".join(map(str, TINY)),
            "--threads",
            "1",
            "--output",
            str(output),
        ],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| train_step | EAS U-Net | fp32 |" in result.stdout
    report = json.loads(output.read_text())
    assert {r["model"] for r in report["results"]} == set(MODELS)
    assert report["settings"]["only"] == ["train_step"]


def test_measurement_names_are_documented():
    import scripts.benchmark as bench

    for name in MEASUREMENTS:
        assert f"`{name}`" in bench.__doc__, name


class _FakeRuns:
    """A workflow whose runs take the given seconds on a fake clock."""

    def __init__(self, durations: list[float]) -> None:
        self.durations, self.now, self.calls = list(durations), 0.0, 0

    def clock(self) -> float:
        return self.now

    def run(self) -> dict[str, float]:
        seconds = self.durations[self.calls]
        self.calls += 1
        self.now += seconds
        return {"total_s": seconds}


def test_workflow_runs_warm_runs_within_budget():
    fake = _FakeRuns([30.0, 2.0, 2.5, 2.2])  # a compiled first run, then warm runs
    warm, measured, warmup_is_measurement = workflow_runs(fake.run, 1, 3, 60.0, clock=fake.clock)
    assert [r["total_s"] for r in warm] == [30.0]
    assert [r["total_s"] for r in measured] == [2.0, 2.5, 2.2]
    assert not warmup_is_measurement


def test_workflow_runs_slow_warmup_is_the_only_measurement():
    # 414 s of tuning, then 2.49 s: the median of both (208 s) described neither; the cold run stands alone
    fake = _FakeRuns([414.0, 2.49])
    warm, measured, warmup_is_measurement = workflow_runs(fake.run, 1, 2, 200.0, clock=fake.clock)
    assert (warm, [r["total_s"] for r in measured], warmup_is_measurement) == ([], [414.0], True)
    assert fake.calls == 1


def test_workflow_runs_stops_at_the_budget_but_measures_once():
    fake = _FakeRuns([1.0, 50.0, 3.0])
    warm, measured, _ = workflow_runs(fake.run, 1, 3, 20.0, clock=fake.clock)
    assert [r["total_s"] for r in measured] == [50.0]  # over budget after the first measured run
    fake = _FakeRuns([5.0])
    assert workflow_runs(fake.run, 0, 2, 1.0, clock=fake.clock)[1] == [{"total_s": 5.0}]


def test_recorded_command_keeps_no_machine_path(tmp_path):
    output, data = str(tmp_path / "out" / "step.json"), str(tmp_path / "x" / "phantoms")  # absolute paths
    args = ["--device", "cuda", "--output", output, f"--data_dir={data}", "--only", "floor"]
    assert recorded_command(args) == (
        "python -m scripts.benchmark --device cuda --output step.json --data_dir=phantoms --only floor"
    )


def test_inductor_environment_is_recorded(monkeypatch):
    """Inductor settings given by environment variables change compiled timings without showing in the command."""
    from scripts.benchmark.plan import _environment

    for key in [k for k in os.environ if k.startswith("TORCHINDUCTOR_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("TORCHINDUCTOR_COORDINATE_DESCENT_TUNING", "1")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(Path("tmp") / "torchinductor_someone"))
    env = _environment(torch.device("cpu"))
    # a cache folder is a machine path: recorded as set, not by value
    assert env["inductor_environment"] == {
        "TORCHINDUCTOR_CACHE_DIR": "<path>",
        "TORCHINDUCTOR_COORDINATE_DESCENT_TUNING": "1",
    }
