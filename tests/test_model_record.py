"""The preprocessing record kept beside a trained model (scripts/model_record.py)."""

from __future__ import annotations

import json
import logging

import pytest

from scripts.model_record import check_record, differences, record_path, write_record

SETTINGS = {"inplane_spacing": 0.3646, "intensity_percentiles": (0.5, 99.5)}


def test_record_round_trip_and_tolerance(tmp_path):
    model = tmp_path / "model.pt"
    path = write_record(model, SETTINGS)
    assert path == record_path(model) == tmp_path / "model_preprocessing.json"
    assert json.loads(path.read_text()) == {"inplane_spacing": 0.3646, "intensity_percentiles": [0.5, 99.5]}
    assert check_record(model, {"inplane_spacing": 0.3646 + 1e-9, "intensity_percentiles": [0.5, 99.5]})
    assert check_record(model, {"inplane_spacing": 0.3646})  # a setting this run does not have is not compared
    write_record(model, {**SETTINGS, "inplane_spacing": -1})  # a new best model replaces the record
    assert json.loads(path.read_text())["inplane_spacing"] == -1


def test_other_preprocessing_is_refused_with_the_flags_to_repeat(tmp_path):
    model = tmp_path / "model.pt"
    write_record(model, SETTINGS)
    other = {"inplane_spacing": -1, "intensity_percentiles": [1.0, 99.0]}
    assert differences(json.loads(record_path(model).read_text()), other) == [
        "inplane_spacing: trained with 0.3646, this run uses -1",
        "intensity_percentiles: trained with [0.5, 99.5], this run uses [1.0, 99.0]",
    ]
    with pytest.raises(SystemExit) as stop:
        check_record(model, other)
    message = str(stop.value)
    assert message.startswith(f"error: {model} was trained on scans preprocessed otherwise (model_preprocessing.json)")
    assert f"(--inplane_spacing 0.3646 --intensity_percentiles [0.5,99.5]; or list {record_path(model)} last" in message
    assert "--check_preprocessing False" in message
    assert check_record(model, other, enabled=False) is True


def test_a_model_without_a_record_is_used_and_a_broken_record_is_named(tmp_path, caplog):
    model = tmp_path / "model.pt"
    with caplog.at_level(logging.INFO, logger="scripts.model_record"):
        assert check_record(model, SETTINGS) is True
    assert "cannot be checked" in caplog.text
    record_path(model).write_text("{not json")
    with pytest.raises(SystemExit, match="cannot read the model's training record .*model_preprocessing.json"):
        check_record(model, SETTINGS)
    record_path(model).write_text("[1, 2]")
    with pytest.raises(SystemExit, match="is not a JSON object"):
        check_record(model, SETTINGS)


def test_under_monailabel_the_preprocessing_check_fails_the_request_not_the_server(tmp_path, monkeypatch):
    """MONAI Label builds `preprocessing` without running `initialize`; inference.json's `preprocessing` requires
    `preprocessing_check` (the item `initialize` runs too, so a command-line run checks once), which under a MONAI
    Label server (MONAI_LABEL_APP_DIR set) raises a ValueError (the request fails, the server lives on) and on the
    command line exits with the message."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    write_record(tmp_path / "models" / "model.pt", {**SETTINGS, "inplane_spacing": -1})
    inference = Path(__file__).resolve().parents[1] / "configs" / "inference.json"

    def parse_preprocessing():
        parser = ConfigParser()
        parser.read_config(str(inference))
        parser["bundle_root"] = str(tmp_path)
        return parser.get_parsed_content("preprocessing")

    monkeypatch.delenv("MONAI_LABEL_APP_DIR", raising=False)
    with pytest.raises(SystemExit, match="inplane_spacing: trained with -1, this run uses 0.3646"):
        parse_preprocessing()  # the command line: one `error:` paragraph, no traceback
    monkeypatch.setenv("MONAI_LABEL_APP_DIR", str(tmp_path / "app"))
    with pytest.raises(RuntimeError) as failure:
        parse_preprocessing()
    cause = failure.value.__cause__
    assert isinstance(cause, ValueError) and "inplane_spacing: trained with -1, this run uses 0.3646" in str(cause)
    write_record(tmp_path / "models" / "model.pt", SETTINGS)
    assert parse_preprocessing().transforms
