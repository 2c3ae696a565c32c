"""ValidateFinalEpoch: a training whose val_interval does not divide max_epochs still validates its last epoch (a
MONAI Label train request sets max_epochs alone), and only then; an early stop is left to the resumed run."""

from __future__ import annotations

import pytest
from ignite.engine import Engine, Events

from scripts.handlers import StopAtEpochBoundary, ValidateFinalEpoch


class RecordingValidator:
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def run(self, epoch: int) -> None:
        self.epochs.append(epoch)


def _train(max_epochs: int, interval: int, enabled: bool = True, stop_after_epoch: int = 0) -> list[int]:
    engine = Engine(lambda engine, batch: None)
    validator = RecordingValidator()
    ValidateFinalEpoch(validator, interval, enabled).attach(engine)
    StopAtEpochBoundary(stop_after_epoch=stop_after_epoch).attach(engine)
    engine.run(range(2), max_epochs=max_epochs)
    return validator.epochs


@pytest.mark.parametrize(
    ("max_epochs", "interval", "expected"),
    [(1, 5, [1]), (3, 5, [3]), (7, 5, [7]), (10, 5, []), (4, 1, []), (4, 2, [])],
)
def test_validates_the_last_epoch_only_when_the_interval_skips_it(max_epochs, interval, expected):
    assert _train(max_epochs, interval) == expected


def test_an_early_stop_is_not_validated_here():
    assert _train(max_epochs=7, interval=5, stop_after_epoch=6) == []


def test_off_switch_and_bad_interval():
    assert _train(max_epochs=3, interval=5, enabled=False) == []
    with pytest.raises(ValueError, match=r"interval \(0\) must be >= 1 epoch"):
        ValidateFinalEpoch(RecordingValidator(), 0)


def test_runs_after_an_interval_validation_and_before_later_handlers():
    """Attached between ValidationHandler and the state saver, it runs in that order at the last epoch."""
    order: list[str] = []
    engine = Engine(lambda engine, batch: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: order.append(f"interval validation {e.state.epoch}"))
    validator = RecordingValidator()
    validator.run = lambda epoch: order.append(f"final validation {epoch}")  # type: ignore[method-assign]
    ValidateFinalEpoch(validator, 5).attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: order.append(f"save {e.state.epoch}"))
    engine.run(range(1), max_epochs=2)
    assert order == ["interval validation 1", "save 1", "interval validation 2", "final validation 2", "save 2"]
