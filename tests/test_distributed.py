"""Distributed training as the README documents it: `torchrun --nproc_per_node=2 -m monai.bundle run` with
train.json + multi_gpu_train.json, here on CPU with gloo, one short epoch on tiny phantoms.

An extra override file records, in `finalize` (before the process group is destroyed), each rank's weights, learning
rate and epoch, so the test can check what DDP promises: identical weights on every rank, the LR scheduler stepped on
every rank (not only where the logging handlers run), and files written by rank 0 only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bundle_cli import TINY_EPOCH, as_cli

from scripts.phantom import write_phantom_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
WORLD_SIZE = 2
LEARNING_RATE = 0.01

# `finalize` of multi_gpu_train.json destroys the process group; this list replaces it, recording first.
RECORD_OVERRIDE = {
    "record_dir": "$@output_dir + '/ranks'",
    "finalize": [
        "$import pathlib",
        "$pathlib.Path(@record_dir).mkdir(parents=True, exist_ok=True)",
        "$torch.save({'state_dict': @network_def.state_dict(), 'lr': @optimizer.param_groups[0]['lr'], "
        "'epoch': @train#trainer.state.epoch, 'iteration': @train#trainer.state.iteration, "
        "'world_size': dist.get_world_size()}, "
        "@record_dir + '/rank' + str(dist.get_rank()) + '.pt')",
        "$dist.is_initialized() and dist.destroy_process_group()",
    ],
}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """One epoch of DDP training on CPU (gloo), run from a scratch folder (bundle_root "."); returns that folder."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    root = tmp_path_factory.mktemp("ddp")
    data = root / "phantoms"
    write_phantom_dataset(data, num_cases=5, shape=(16, 64, 64), num_test=0)
    override = root / "record.json"
    override.write_text(json.dumps(RECORD_OVERRIDE, indent=2))
    configs = [str(REPO_ROOT / "configs" / "train.json"), str(REPO_ROOT / "configs" / "multi_gpu_train.json")]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD_SIZE}",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(configs + [str(override)]),
        "--meta_file",
        str(REPO_ROOT / "configs" / "metadata.json"),
        "--logging_file",
        str(REPO_ROOT / "configs" / "logging.conf"),
        "--dataset_dir",
        str(data),
        "--output_dir",
        str(root / "eval"),
        "--ckpt_dir",
        str(root / "models"),
        *as_cli(TINY_EPOCH),
        "--learning_rate",
        str(LEARNING_RATE),
        "--datalist#num_val",
        str(WORLD_SIZE),  # DistributedSampler(even_divisible=False) needs at least one validation case per rank
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    (root / "torchrun.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return root


def load_rank(run: Path, rank: int) -> dict:
    return torch.load(run / "eval" / "ranks" / f"rank{rank}.pt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_every_rank_finished_the_epoch(ddp_run):
    records = [load_rank(ddp_run, r) for r in range(WORLD_SIZE)]
    assert [r["world_size"] for r in records] == [WORLD_SIZE] * WORLD_SIZE
    assert [r["epoch"] for r in records] == [1] * WORLD_SIZE
    # slices_per_epoch is global: each rank runs slices_per_epoch // (batch_size x world size) iterations
    per_rank = int(TINY_EPOCH["slices_per_epoch"]) // (int(TINY_EPOCH["batch_size"]) * WORLD_SIZE)
    assert [r["iteration"] for r in records] == [per_rank] * WORLD_SIZE


@pytest.mark.slow
def test_ranks_hold_identical_weights(ddp_run):
    first, second = (load_rank(ddp_run, r)["state_dict"] for r in range(2))
    assert first.keys() == second.keys()
    assert [k for k in first if not torch.equal(first[k], second[k])] == []


@pytest.mark.slow
def test_lr_scheduler_stepped_on_every_rank(ddp_run):
    """PolynomialLR over max_epochs=1 ends at 0 after its one step; a rank that skipped it would still be at lr."""
    lrs = [load_rank(ddp_run, r)["lr"] for r in range(WORLD_SIZE)]
    assert lrs == pytest.approx([0.0] * WORLD_SIZE)
    assert LEARNING_RATE > 0


@pytest.mark.slow
def test_only_rank_zero_wrote_models_and_logs(ddp_run):
    models = sorted(p.name for p in (ddp_run / "models").iterdir())
    # the best model with its preprocessing record, and ONE latest-state checkpoint
    assert "model.pt" in models and "model_preprocessing.json" in models and len(models) == 3, models
    assert [m for m in models if not m.startswith("model")][0].startswith("checkpoint"), models
    saved = torch.load(ddp_run / "models" / "model.pt", map_location="cpu", weights_only=True)
    weights = load_rank(ddp_run, 0)["state_dict"]
    assert all(torch.equal(saved[k], weights[k]) for k in saved)  # the plain network, not the DDP wrapper
    events = sorted((ddp_run / "eval" / "logs").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard logs written"
    pids = {p.name.split(".")[-2] for p in events}  # events.out.tfevents.<time>.<host>.<pid>.<n>
    assert len(pids) == 1, f"TensorBoard files from more than one process: {[p.name for p in events]}"
