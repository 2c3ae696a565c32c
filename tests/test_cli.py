"""Switches of the scripts' Fire command lines (scripts/cli.py): `--overwrite false` is False, never a true text, and
anything that is not a yes/no is refused with a message naming the flag. Quantify's own CLI tests are in
tests/test_quantify.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fire
import pytest

from scripts import phantom
from scripts.cli import as_bool
from scripts.export import onnx as export_onnx_cli

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_PHANTOM = ["--num_cases", "1", "--num_test", "0", "--shape", "8,32,32"]


@pytest.mark.parametrize(
    "value, expected",
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        ("1", True),
        ("false", False),
        ("False", False),
        (" no ", False),
        ("0", False),
    ],
)
def test_as_bool_accepts_yes_no_spellings(value, expected):
    assert as_bool(value, "overwrite") is expected


@pytest.mark.parametrize("value, shown", [("maybe", "maybe"), ("", ""), (None, "None"), (2, "2"), (1.0, "1.0")])
def test_as_bool_refuses_anything_else_naming_the_flag(value, shown):
    with pytest.raises(ValueError, match=rf"^--overwrite {shown}: 'overwrite' is a switch; write True or False"):
        as_bool(value, "overwrite")


def _user_file(folder: Path) -> Path:
    folder.mkdir()
    (folder / "datalist.json").write_text('{"mine": true}\n')
    return folder / "datalist.json"


@pytest.mark.parametrize("flag", ["false", "no", "0", "False"])
def test_phantom_lowercase_false_does_not_overwrite(tmp_path, flag):
    mine = _user_file(tmp_path / "data")
    with pytest.raises(SystemExit, match=r"^error: output folder .*data is not empty; .*pass --overwrite True"):
        fire.Fire(phantom.main, command=[str(tmp_path / "data"), *TINY_PHANTOM, "--overwrite", flag])
    assert json.loads(mine.read_text()) == {"mine": True}


def test_phantom_true_spelling_overwrites_and_defects_switch(tmp_path):
    mine = _user_file(tmp_path / "data")
    fire.Fire(phantom.main, command=[str(tmp_path / "data"), *TINY_PHANTOM, "--overwrite", "yes", "--defects", "no"])
    assert json.loads(mine.read_text())["name"] == "knee phantoms"
    with pytest.raises(SystemExit, match=r"^error: --defects maybe: 'defects' is a switch"):
        fire.Fire(phantom.main, command=[str(tmp_path / "other"), *TINY_PHANTOM, "--defects", "maybe"])
    assert not (tmp_path / "other").exists()


def test_phantom_subprocess_lowercase_false(tmp_path):
    mine = _user_file(tmp_path / "data")
    cmd = [sys.executable, "-m", "scripts.phantom", str(tmp_path / "data"), *TINY_PHANTOM, "--overwrite", "false"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "is not empty" in result.stderr and json.loads(mine.read_text()) == {"mine": True}


def test_export_lowercase_false_keeps_the_existing_model(tmp_path):
    """Checked before the network is built, so no checkpoint is needed to see the refusal."""
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"earlier export")
    with pytest.raises(FileExistsError, match="already exists"):
        fire.Fire(export_onnx_cli, command=["--output", str(existing), "--overwrite", "false"])
    with pytest.raises(SystemExit, match=r"^error: --overwrite maybe: 'overwrite' is a switch"):
        fire.Fire(export_onnx_cli, command=["--output", str(existing), "--overwrite", "maybe"])
    assert existing.read_bytes() == b"earlier export"
