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
from scripts.cli import as_bool, unknown_flags
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


def test_unknown_flags_are_found_with_their_nearest_spellings():
    from scripts.quantify.cli import main as quantify

    argv = ["a.nii.gz", "--output", "m.csv", "--split_femr", "True", "--label-preset", "oai-zib", "--nooverwrite"]
    assert unknown_flags(quantify, argv) == [("--split_femr", ["split_femur"])]
    assert unknown_flags(quantify, ["--output=m.csv", "--zzz=1", "--", "--help", "--whatever"]) == [("--zzz", [])]
    assert unknown_flags(quantify, ["-t", "dir", "--help"]) == []  # short flags and Fire's own are Fire's business
    assert unknown_flags(lambda **kwargs: kwargs, ["--anything", "1"]) == []


def test_a_misspelt_flag_stops_the_command_before_any_work(tmp_path):
    """Fire alone would generate all phantoms at the default count and only then complain about --num_case."""
    out = tmp_path / "phantoms"
    cmd = [sys.executable, "-m", "scripts.phantom", str(out), "--num_case", "1", "--shape", "8,32,32"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and not out.exists(), result.stderr[-2000:]
    assert "error: scripts.phantom has no option --num_case (did you mean --num_cases" in result.stderr


def test_benchmark_help_and_option_errors_are_not_tracebacks(tmp_path):
    """`python -m scripts.benchmark` takes any plan field as a flag (**kwargs), so Fire handed `--help` to it as an
    option and a misspelt flag ended in a TypeError traceback; now `--help` shows the help and a bad option is one
    `error:` line, exit 1, before any measurement or file."""
    bench = [sys.executable, "-m", "scripts.benchmark"]
    shown = subprocess.run([*bench, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, env=_no_pager())
    text = shown.stdout + shown.stderr  # Fire writes its help to stderr when no terminal is attached
    assert shown.returncode == 0 and "Traceback" not in text
    assert "SYNOPSIS" in text and "--only" in text and "Additional flags are accepted" in text
    out = tmp_path / "b.json"
    for flags, message in [
        (["--bogus", "3"], "error: unknown option --bogus; see `python -m scripts.benchmark --help`"),
        (["--models", "foo"], "error: unknown models ['foo']"),
        (["--only", "nothing"], "error: unknown measurements ['nothing']"),
    ]:
        run = subprocess.run([*bench, "--output", str(out), *flags], cwd=REPO_ROOT, capture_output=True, text=True)
        assert run.returncode == 1 and run.stderr.strip().splitlines()[-1].startswith(message), run.stderr[-1500:]
        assert "Traceback" not in run.stderr and not out.exists()


def _no_pager() -> dict[str, str]:
    import os

    return {**os.environ, "PAGER": "cat"}


def test_datalist_commands_report_errors_in_one_line_and_check_every_split(tmp_path):
    """`check` validates test-only datasets too; a missing folder or a split that cannot be made is an `error:`
    line with exit code 1, not a traceback."""
    data = tmp_path / "data"
    phantom.write_phantom_dataset(str(data), num_cases=2, num_test=2, shape=(8, 32, 32), seed=0)

    def datalist(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "scripts.datalist", *args]
        return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)

    checked = datalist("check", str(data))
    assert checked.returncode == 0 and "2 cases in" in checked.stdout and "(2 test)" in checked.stdout
    for args, message in [
        (("check", str(tmp_path / "nope")), "error: dataset_dir"),
        (("write_split", str(data), str(tmp_path / "s.json")), "error: no training cases to split"),
        (("check", str(data), "--label_preset", "foo"), "error: unknown label_preset 'foo'"),
    ]:
        result = datalist(*args)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert message in result.stderr
