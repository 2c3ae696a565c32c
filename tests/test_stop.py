"""StopAtEpochBoundary: a training stops after the epoch asked for, or before an epoch that would overrun its time
limit, always at an epoch boundary (the state of that epoch saved), so `--resume True` continues the same schedule."""

from __future__ import annotations

import logging
import sys

import pytest
from ignite.engine import Engine

from scripts.handlers import StopAtEpochBoundary


def run_engine(handler: StopAtEpochBoundary, max_epochs: int = 5, epoch_length: int = 3) -> Engine:
    engine = Engine(lambda engine, batch: batch)
    handler.attach(engine)
    engine.run(range(epoch_length), max_epochs=max_epochs)
    return engine


def test_stops_after_the_epoch_asked_for(caplog):
    with caplog.at_level(logging.WARNING):
        engine = run_engine(StopAtEpochBoundary(stop_after_epoch=2))
    assert engine.state.epoch == 2 and engine.state.iteration == 2 * 3  # a whole epoch, not a part of the next
    assert "stopping after epoch 2 of 5 (stop_after_epoch is 2)" in caplog.text
    assert "--resume True" in caplog.text


@pytest.mark.parametrize("stop_after_epoch", [0, 5, 9])
def test_no_stop_when_off_or_past_the_end(stop_after_epoch, caplog):
    with caplog.at_level(logging.WARNING):
        engine = run_engine(StopAtEpochBoundary(stop_after_epoch=stop_after_epoch))
    assert engine.state.epoch == 5 and "stopping" not in caplog.text


def test_the_same_command_resumed_runs_to_the_end():
    """The epoch counts the whole run's epochs (a resumed trainer starts at its saved epoch), and a run resumed at
    or past `stop_after_epoch` is not stopped again: the same command with --resume True finishes the run."""
    engine = Engine(lambda engine, batch: batch)
    StopAtEpochBoundary(stop_after_epoch=2).attach(engine)
    engine.run(range(3), max_epochs=5)
    assert engine.state.epoch == 2
    engine.run(range(3), max_epochs=5)  # ignite continues a terminated run where it stopped
    assert engine.state.epoch == 5
    handler = StopAtEpochBoundary(stop_after_epoch=2)
    handler._last = 0.0
    assert handler.reason_to_stop(3, 5, 1.0) == "" and handler.reason_to_stop(2, 5, 2.0) != ""


def test_time_limit_counts_from_the_process_start():
    """Set-up before training (data caching) spends the job's time too: the clock starts with the process."""
    import time

    from scripts.handlers import process_start_time

    started = process_start_time()
    assert time.time() - started < 3600  # this test process started within the last hour
    if sys.platform.startswith("linux"):  # from /proc: before torch and pytest were imported, not "now"
        assert time.time() - started > 0.5


def test_time_limit_stops_before_an_epoch_that_would_overrun():
    """Epoch times 100 s (compilation), 23 s, 25 s, 24 s, 24 s, limit 220 s. After epoch 1 the only estimate is
    epoch 1 itself: 100 + 100 fits. From then on the estimate is the longest epoch since the second (25 s): after
    epoch 4 (172 s) 197 fits; after epoch 5 (196 s) 221 does not: stop."""
    handler = StopAtEpochBoundary(time_limit=220)
    handler._process_start = handler._last = 1000.0
    clock = 1000.0
    reasons = []
    for epoch, seconds in enumerate([100, 23, 25, 24, 24], start=1):
        clock += seconds
        reasons.append(handler.reason_to_stop(epoch, 50, clock))
    assert reasons[:4] == ["", "", "", ""]
    assert reasons[4] == "time_limit is 220 s: 196 s have passed and an epoch takes up to 25 s"


def test_time_limit_after_the_first_epoch_uses_its_time():
    """After one epoch the only estimate is that epoch (compilation included): 130 + 130 > 200 stops."""
    handler = StopAtEpochBoundary(time_limit=200)
    handler._process_start = handler._last = 0.0
    assert handler.reason_to_stop(1, 50, 130.0).startswith("time_limit is 200 s: 130 s have passed")


def test_time_limit_never_stops_the_last_epoch():
    handler = StopAtEpochBoundary(time_limit=1)
    handler._process_start = handler._last = 0.0
    assert handler.reason_to_stop(50, 50, 1e6) == ""


def test_time_limit_on_a_real_engine_stops_early(caplog):
    """A limit far below an epoch's time stops after the first epoch (a whole one), with the reason logged."""
    engine = Engine(lambda engine, batch: sum(range(20000)))
    StopAtEpochBoundary(time_limit=1e-6).attach(engine)
    with caplog.at_level(logging.WARNING):
        engine.run(range(3), max_epochs=5)
    assert engine.state.epoch == 1 and engine.state.iteration == 3
    assert "stopping after epoch 1 of 5 (time_limit is 0 s" in caplog.text


@pytest.mark.parametrize("kwargs", [{"stop_after_epoch": -1}, {"time_limit": -5.0}])
def test_negative_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="must be >= 0 \\(0 turns it off\\)"):
        StopAtEpochBoundary(**kwargs)


def _choose(rank: int, init_file: str, reasons: list[str], out_dir: str) -> None:
    import torch.distributed as dist

    from scripts.handlers.stopping import _rank_zero_choice

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=len(reasons))
    try:
        with open(f"{out_dir}/rank{rank}.txt", "w") as f:
            f.write(_rank_zero_choice(reasons[rank]))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("reasons", [["time_limit is 9 s", ""], ["", "time_limit is 9 s"]])
def test_every_rank_takes_rank_zeros_decision(reasons, tmp_path):
    """Ranks whose clocks disagree must not part ways (one stopping, one waiting in the next all-reduce)."""
    import torch.multiprocessing as mp

    if not torch_distributed_gloo():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_choose, args=(str(tmp_path / "init"), reasons, str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)] == [reasons[0], reasons[0]]


def torch_distributed_gloo() -> bool:
    import torch

    return torch.distributed.is_available() and torch.distributed.is_gloo_available()
