"""End to end through MONAI's own runner, as a user runs it: train -> evaluate -> infer on tiny phantoms, exact
resume of a killed training, determinism, and the clear errors a user sees for a wrong path or a reused run folder."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_cli import TINY_MODEL, as_cli

from scripts.phantom import write_phantom_dataset

REPO = Path(__file__).resolve().parents[1]
TINY = [
    *as_cli(TINY_MODEL),
    "--batch_size",
    "8",
    "--slices_per_volume",
    "4",
    "--slices_per_epoch",
    "16",
    "--sw_batch_size",
    "16",
    "--amp",
    "False",  # capitalised: Fire passes a lowercase false as the text 'false' (scripts/overrides.py refuses it)
]
TRAINING_ONLY = ("--batch_size", "--slices_per_volume", "--slices_per_epoch")
TINY_INFER = [a for i, a in enumerate(TINY) if a not in TRAINING_ONLY and TINY[i - 1] not in TRAINING_ONLY]

pytestmark = pytest.mark.slow


def bundle(
    *args: str, config: str | list[str] = "configs/train.json", check: bool = True, run_id: str | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m monai.bundle run [RUN_ID]` from the repository root, like a user."""
    configs = config if isinstance(config, str) else "[" + ",".join(f"'{c}'" for c in config) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", *([run_id] if run_id else []), "--config_file", configs, *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root / "data", num_cases=7, num_test=2, shape=(16, 64, 64), seed=3)
    return root / "data"


def train(
    data: Path, run: Path, *extra: str, epochs: int = 3, check: bool = True, run_id: str | None = None
) -> subprocess.CompletedProcess:
    return bundle(
        "--dataset_dir", str(data), "--ckpt_dir", str(run / "models"), "--output_dir", str(run / "eval"),
        "--max_epochs", str(epochs), "--val_interval", "1", *TINY, *extra, check=check, run_id=run_id,
    )  # fmt: skip


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint(run: Path, epoch: int) -> dict:
    return state(run / "models" / f"checkpoint_checkpoint_epoch={epoch}.pt")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == [], f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def trained(phantoms, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run_a")
    train(phantoms, run)
    return run


def test_training_writes_models_and_logs(trained):
    models = trained / "models"
    assert (models / "model.pt").is_file() and (models / "checkpoint_checkpoint_epoch=3.pt").is_file()
    weights = state(models / "model.pt")
    assert all(isinstance(v, torch.Tensor) for v in weights.values())  # a plain state_dict (Zoo, MONAI Label)
    assert any((trained / "eval" / "logs").glob("events.out.tfevents.*"))
    record = json.loads((models / "model_preprocessing.json").read_text())  # what inference must repeat
    assert record == {"inplane_spacing": -1, "intensity_percentiles": [0.5, 99.5]}  # TINY: the scans' own spacing
    full = checkpoint(trained, 3)
    assert {"model", "optimizer", "lr_scheduler", "trainer", "validator"} <= full.keys()
    assert full["trainer"]["iteration"] == 3 * 2 and "best_metric" in full["validator"]  # 2 iterations per epoch


def test_a_training_shorter_than_val_interval_still_writes_model_pt(phantoms, tmp_path):
    """MONAI Label sets max_epochs alone: 2 epochs with the default val_interval 5 validate the last epoch."""
    result = bundle(
        "--dataset_dir", str(phantoms), "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
        "--max_epochs", "2", *TINY,
    )  # fmt: skip
    assert "validating the final epoch 2 (val_interval 5 does not divide it)" in result.stdout + result.stderr
    assert (tmp_path / "models" / "model.pt").is_file()
    assert checkpoint(tmp_path, 2)["validator"]["best_metric_epoch"] == 2  # the saved state knows it


def test_resume_with_more_epochs_stretches_the_lr_schedule(phantoms, trained, tmp_path):
    """A finished 3-epoch run resumed with --max_epochs 4 trains epoch 4 at the stretched polynomial schedule's
    rate, 0.01 * (1 - 3/4) ** 0.9, not at the saved schedule's final 0 (which changed no weight, silently)."""
    shutil.copytree(trained / "models", tmp_path / "models")
    result = train(phantoms, tmp_path, "--resume", "true", epochs=4)
    assert "schedule is stretched to 4 epochs and training continues after epoch 3 at learning rate 0.00287" in (
        result.stdout + result.stderr
    )
    assert not (tmp_path / "models" / "checkpoint_checkpoint_epoch=3.pt").exists()  # replaced by epoch 4's state
    before, after = checkpoint(trained, 3), checkpoint(tmp_path, 4)
    assert after["lr_scheduler"]["total_iters"] == 4 and after["lr_scheduler"]["last_epoch"] == 4
    conv = "stem.ds_0.pointwise.conv.weight"
    assert not torch.equal(before["model"][conv], after["model"][conv])  # epoch 4 learned something
    interrupted = checkpoint(trained, 3)["lr_scheduler"]
    assert interrupted["total_iters"] == 3 and interrupted["_last_lr"] == [0.0]


def test_same_seed_gives_identical_weights(phantoms, trained, tmp_path):
    """Also the Model Zoo's spelling: `monai.bundle run training` runs the very program of plain `run`."""
    train(phantoms, tmp_path, run_id="training")
    assert_same_weights(checkpoint(trained, 3)["model"], checkpoint(tmp_path, 3)["model"])


def test_bf16_training_on_a_cpu_is_deterministic(phantoms, tmp_path):
    """`amp` trains in bf16 on CPUs with native bf16 (fp32 elsewhere): still the same weights for the same seed."""
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        train(phantoms, run, "--amp", "True", epochs=2)
    assert_same_weights(checkpoint(runs[0], 2)["model"], checkpoint(runs[1], 2)["model"])


def test_gradients_set_to_none_change_no_weight(phantoms, trained, tmp_path):
    """train.json frees the gradients between steps (`optim_set_to_none`, which CUDA graphs need); zeroing them in
    place, MONAI's default, must give the very same weights."""
    train(phantoms, tmp_path, "--train#trainer#optim_set_to_none", "False")
    assert_same_weights(checkpoint(trained, 3)["model"], checkpoint(tmp_path, 3)["model"])


def test_killed_training_resumes_to_the_same_weights(phantoms, trained, tmp_path):
    # an epoch is 16 // 8 = 2 iterations: die hard (no cleanup, like SIGKILL) in the middle of epoch 3
    kill = tmp_path / "kill.json"
    kill.write_text(
        json.dumps(
            {
                "+train#handlers": [
                    "$type('Kill', (), {'attach': lambda self, e: e.add_event_handler("
                    "ignite.engine.Events.ITERATION_COMPLETED(once=5), lambda _: os._exit(17))})()"
                ]
            }
        )
    )
    killed = bundle(
        "--dataset_dir", str(phantoms), "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
        "--max_epochs", "3", "--val_interval", "1", *TINY, config=["configs/train.json", str(kill)], check=False,
    )  # fmt: skip
    assert killed.returncode == 17
    assert not (tmp_path / "models" / "checkpoint_checkpoint_epoch=3.pt").exists()
    refused = train(phantoms, tmp_path, check=False)  # a fresh run must not silently replace the killed one
    assert refused.returncode != 0 and "--resume True" in refused.stderr + refused.stdout
    train(phantoms, tmp_path, "--resume", "true")
    states = sorted(p.name for p in (tmp_path / "models").glob("checkpoint*.pt"))
    assert states == ["checkpoint_checkpoint_epoch=3.pt"]  # the state it resumed from is not left behind
    assert_same_weights(checkpoint(trained, 3)["model"], checkpoint(tmp_path, 3)["model"])
    assert_same_weights(state(trained / "models" / "model.pt"), state(tmp_path / "models" / "model.pt"))
    assert checkpoint(tmp_path, 3)["validator"]["best_metric"] == checkpoint(trained, 3)["validator"]["best_metric"]


def test_training_stopped_at_an_epoch_resumes_to_the_same_weights(phantoms, trained, tmp_path):
    """--stop_after_epoch 2 of 3 ends cleanly (exit 0) with epoch 2's state; resuming it gives the weights of the
    uninterrupted run, because the schedule is the 3-epoch one throughout (a --max_epochs 2 run would not)."""
    stopped = train(phantoms, tmp_path, "--stop_after_epoch", "2")
    assert "stopping after epoch 2 of 3 (stop_after_epoch is 2)" in stopped.stdout + stopped.stderr
    assert sorted(p.name for p in (tmp_path / "models").glob("checkpoint*.pt")) == ["checkpoint_checkpoint_epoch=2.pt"]
    train(phantoms, tmp_path, "--resume", "true")
    assert_same_weights(checkpoint(trained, 3)["model"], checkpoint(tmp_path, 3)["model"])


def test_evaluate_writes_both_protocols(phantoms, trained):
    bundle(
        "--dataset_dir", str(phantoms), "--ckpt_dir", str(trained / "models"), "--output_dir", str(trained / "eval"),
        *TINY, config=["configs/train.json", "configs/evaluate.json"], run_id="evaluating",
    )  # fmt: skip
    out = trained / "eval" / "evaluation"
    summary = json.loads((out / "summary.json").read_text())
    assert {(e["protocol"], e["class"]) for e in summary} == {
        (p, c) for p in ("volume", "paper") for c in ("femoral cartilage", "tibial cartilage")
    }
    volume = [e for e in summary if e["protocol"] == "volume"]
    assert all(e["n"] == 2 for e in volume)  # the two test phantoms
    assert "| volume | femoral cartilage | EAS U-Net |" in (out / "summary.md").read_text()
    lines = (out / "metrics_volume.csv").read_text().splitlines()
    assert lines[0] == (
        "case,protocol,class,dice,precision,recall,hd,hd95,assd,gt_voxels,pred_voxels,flags,expected_dice"
    )
    assert all(0.0 <= float(line.rsplit(",", 1)[1]) <= 1.0 for line in lines[1:])  # ExpectedDiced in the chain
    assert not any(out.glob("measurements_*.csv")) and not (out / "agreement.csv").exists()  # measure: false


def test_evaluate_measures_predictions_and_references_and_their_agreement(phantoms, trained, tmp_path):
    """--measure True: the cartilage of each prediction and of its reference label map is measured in the same run,
    and agreement.csv compares them. The reference rows are those of python -m scripts.quantify on the label files
    themselves (the label went through the preprocessing and Invertd unchanged); the bias is the mean difference of
    the two CSVs. --split_femur True adds the femoral halves and their weight-bearing parts on both sides, and
    --split_tibia True the five subregions of each tibial plate."""
    from scripts.quantify import measure_file

    out = tmp_path / "eval"
    args = [
        "--dataset_dir", str(phantoms), "--ckpt_dir", str(trained / "models"), "--output_dir", str(out),
        "--measure", "True", "--split_femur", "True", "--split_tibia", "True", *TINY,
    ]  # fmt: skip
    bundle(*args, config=["configs/train.json", "configs/evaluate.json"], run_id="evaluating")
    folder = out / "evaluation"
    reference = {
        (r["scan"], r["compartment"]): r for r in csv.DictReader((folder / "measurements_reference.csv").open())
    }
    predicted = {
        (r["scan"], r["compartment"]): r for r in csv.DictReader((folder / "measurements_predicted.csv").open())
    }
    labels = sorted((phantoms / "labelsTs").glob("*.nii.gz"))
    for label in labels:
        _, truth = measure_file(label, label_preset="oai-zib", split_femur=True, split_tibia=True)
        assert len(truth.rows) == 18 and truth.rows[7].compartment.endswith("_weight_bearing")
        assert truth.rows[-1].compartment.endswith("_exterior")
        for row in truth.rows:
            ours = reference[(row.scan, row.compartment)]
            assert float(ours["volume_mm3"]) == pytest.approx(row.volume_mm3, rel=1e-6)
            assert ours["expected_dice"] == ""  # a reference has no expected Dice; the prediction rows do
    assert {s for s, _ in predicted} == {s for s, _ in reference} == {p.name.removesuffix(".nii.gz") for p in labels}
    agreement = {(r["compartment"], r["measure"]): r for r in csv.DictReader((folder / "agreement.csv").open())}
    volume = agreement[("femoral", "volume_mm3")]
    differences = [float(predicted[k]["volume_mm3"]) - float(reference[k]["volume_mm3"]) for k in reference
                   if k[1] == "femoral"]  # fmt: skip
    assert int(volume["n"]) == len(labels) == 2
    assert float(volume["bias"]) == pytest.approx(sum(differences) / len(differences), rel=1e-4, abs=1e-3)
    assert "| femoral | volume/mm³ | 2 |" in (folder / "agreement.md").read_text()
    assert any(c.endswith("_weight_bearing") for c, _ in agreement)
    assert any(c.endswith("_central") for c, _ in agreement)
    again = bundle(*args, config=["configs/train.json", "configs/evaluate.json"], run_id="evaluating", check=False)
    assert again.returncode != 0 and "--overwrite True" in again.stderr  # the earlier report is kept


def test_inference_writes_label_maps_in_input_geometry(phantoms, trained, tmp_path):
    out = tmp_path / "seg"
    bundle(
        "--dataset_dir", str(phantoms / "imagesTs"), "--ckpt_dir", str(trained / "models"), "--output_dir", str(out),
        *TINY_INFER, config="configs/inference.json", run_id="inferring",
    )  # fmt: skip
    for scan in sorted((phantoms / "imagesTs").glob("*.nii.gz")):
        image = nib.load(scan)
        seg = nib.load(out / scan.name.replace(".nii.gz", "_seg.nii.gz"))
        assert seg.shape == image.shape and np.allclose(seg.affine, image.affine)
        assert seg.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
        assert (out / scan.name.replace(".nii.gz", "_thickness.nii.gz")).is_file()
    rows = (out / "measurements.csv").read_text().splitlines()
    assert rows[0].startswith("scan,compartment,") and rows[0].endswith(",expected_dice") and len(rows) > 2
    assert all(0.0 <= float(row.rsplit(",", 1)[1]) <= 1.0 for row in rows[1:])  # every compartment has its class's
    # the run's CSV feeds the change between visits: the two test phantoms (phantom_<n>) read as one subject's visits
    from scripts.longitudinal import main as longitudinal

    longitudinal(str(out / "measurements.csv"), output=str(tmp_path / "change.csv"))
    measured = {(r["scan"], r["compartment"]): r for r in csv.DictReader((out / "measurements.csv").open())}
    change = list(csv.DictReader((tmp_path / "change.csv").open()))
    first, second = sorted(scan.name.removesuffix(".nii.gz") for scan in (phantoms / "imagesTs").glob("*.nii.gz"))
    visits = ("phantom", first.split("_")[1], second.split("_")[1])
    assert {(r["subject"], r["baseline_visit"], r["followup_visit"]) for r in change} == {visits}
    for r in change:
        base, follow = measured[(first, r["compartment"])], measured[(second, r["compartment"])]
        assert float(r["volume_change_mm3"]) == pytest.approx(float(follow["volume_mm3"]) - float(base["volume_mm3"]))
        assert float(r["expected_dice_min"]) == min(float(base["expected_dice"]), float(follow["expected_dice"]))
    again = bundle(
        "--dataset_dir", str(phantoms / "imagesTs"), "--ckpt_dir", str(trained / "models"), "--output_dir", str(out),
        *TINY_INFER, config="configs/inference.json", check=False,
    )  # fmt: skip
    assert again.returncode != 0 and "already holds measurements.csv from an earlier run" in again.stderr
    assert not (out / "failures.csv").exists()  # stopped before any scan: nothing failed, nothing was written


def test_inference_refuses_other_preprocessing_than_training(phantoms, trained, tmp_path):
    """A model trained at the scans' own spacing (TINY) run at 0.5 mm would segment a wrongly scaled knee without any
    error: refused before any scan is read, unless --check_preprocessing False."""
    out = tmp_path / "seg"
    common = ["--dataset_dir", str(phantoms / "imagesTs"), "--ckpt_dir", str(trained / "models"), "--output_dir"]
    at_half_mm = [a for i, a in enumerate(TINY_INFER) if "inplane_spacing" not in (a, TINY_INFER[i - 1])]
    at_half_mm += ["--inplane_spacing", "0.5"]
    infer = "configs/inference.json"
    run = bundle(*common, str(out), *at_half_mm, config=infer, check=False)
    assert run.returncode != 0 and "inplane_spacing: trained with -1, this run uses 0.5" in run.stderr
    assert "Run with the training settings (--inplane_spacing -1; or list " in run.stderr and not any(out.glob("*"))
    evaluate = bundle(
        *common, str(tmp_path / "ev"), "--intensity_percentiles", "[1,99]", *TINY,
        config=["configs/train.json", "configs/evaluate.json"], check=False,
    )  # fmt: skip
    assert evaluate.returncode != 0 and "intensity_percentiles: trained with [0.5, 99.5]" in evaluate.stderr
    bundle(*common, str(out), *at_half_mm, "--check_preprocessing", "False", "--measure", "False", config=infer)
    assert len(list(out.glob("*_seg.nii.gz"))) == 2
    own = tmp_path / "own"  # the record listed after inference.json: the model's own preprocessing, checked and run
    record = str(trained / "models" / "model_preprocessing.json")
    bundle(*common, str(own), *at_half_mm[:-2], "--measure", "False", config=[infer, record])
    assert len(list(own.glob("*_seg.nii.gz"))) == 2


def test_folded_batch_norms_give_the_same_label_maps(phantoms, trained, tmp_path):
    """inference.json folds batch norms by default (`fold_batch_norm`): same label maps as the unfolded network."""
    maps = {}
    for fold in ("True", "False"):
        out = tmp_path / f"fold_{fold}"
        run = bundle(
            "--dataset_dir", str(phantoms / "imagesTs"), "--ckpt_dir", str(trained / "models"), "--output_dir",
            str(out), "--measure", "False", "--fold_batch_norm", fold, *TINY_INFER, config="configs/inference.json",
        )  # fmt: skip
        assert ("batch norms into their convolutions" in run.stderr + run.stdout) == (fold == "True")
        maps[fold] = {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(out.glob("*_seg.nii.gz"))}
    assert maps["True"].keys() == maps["False"].keys() and len(maps["True"]) == 2
    for name, folded in maps["True"].items():
        assert np.array_equal(folded, maps["False"][name]), name


def test_wrong_dataset_dir_is_one_clear_line(tmp_path):
    result = train(tmp_path / "no_such_folder", tmp_path, check=False, epochs=1)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dataset error: dataset_dir") and "no_such_folder does not exist" in last
