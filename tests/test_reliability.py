"""Bad input gets one clear message naming the file and the problem; a bad scan in a batch is reported and skipped;
outputs are never written over inputs or earlier outputs; a wrong checkpoint or command-line override stops the run
before it starts. Each case is one small file (volumes of a few thousand voxels)."""

from __future__ import annotations

import csv
import locale
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import monai.bundle
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import BasicUNet

from scripts.batch import FAILURE_KEY, FailSafeDataset, FailureLog, ScansFailedError, describe_failure
from scripts.checks import require_checkpoint
from scripts.datalist import DatasetError, scan_datalist, validate_entries
from scripts.handlers import ResumeFromLatest, check_run_dir
from scripts.io_utils import prepare_output_dir
from scripts.networks import EASUNet
from scripts.overrides import check_overrides, parse_cli
from scripts.writers import SaveLabelMapd

REPO = Path(__file__).resolve().parents[1]
INFERENCE = REPO / "configs" / "inference.json"
TRAIN = REPO / "configs" / "train.json"
AFFINE = np.diag([0.7, 0.5, 0.5, 1.0])
TINY = (8, 16, 32, 64, 128)
BUNDLE_MAIN = str(Path(monai.bundle.__file__).with_name("__main__.py"))  # sys.argv[0] of `python -m monai.bundle`


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def volume(shape=(10, 12, 12), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def write_dicom_series(folder: Path, series_uid: str, slices: int = 10, prefix: str = "IM") -> None:
    """A tiny MR DICOM series (one file per slice) with the given SeriesInstanceUID, written with ITK's GDCM."""
    import itk

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(map(ord, series_uid)))
    saved_locale = locale.setlocale(locale.LC_ALL)  # GDCM's writer switches the process to the C locale
    try:
        _write_slices(itk, folder, series_uid, slices, prefix, rng)
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)


def _write_slices(itk, folder: Path, series_uid: str, slices: int, prefix: str, rng: np.random.Generator) -> None:
    for i in range(slices):
        image = itk.image_from_array((rng.random((1, 12, 12)) * 1000).astype(np.int16))
        image.SetSpacing([0.5, 0.5, 1.0])
        image.SetOrigin([0.0, 0.0, float(i)])
        tags = itk.MetaDataDictionary()
        for tag, value in {
            "0008|0060": "MR",
            "0020|000d": "1.2.826.0.1.1",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{i + 1}",
            "0020|0013": str(i + 1),
            "0020|0032": f"0\\0\\{i}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
        }.items():
            tags[tag] = value
        image.SetMetaDataDictionary(tags)
        io = itk.GDCMImageIO.New()
        io.KeepOriginalUIDOn()
        itk.ImageFileWriter.New(Input=image, FileName=str(folder / f"{prefix}{i:04d}.dcm"), ImageIO=io).Update()


@pytest.fixture(scope="module")
def preprocessing():
    """inference.json's own preprocessing chain (in-plane resampling off to keep it fast)."""
    parser = ConfigParser()
    parser.read_config(str(INFERENCE))
    parser["inplane_spacing"] = -1
    return parser.get_parsed_content("preprocessing")


# ---------------------------------------------------------------- bad scans: one message naming file and problem


def _truncated(path: Path) -> Path:
    raw = write_nifti(path, volume()).read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _mhd_without_raw(path: Path) -> Path:
    import itk

    header = path.with_name(path.name.split(".")[0] + ".mhd")
    itk.imwrite(itk.image_from_array(volume()), str(header))
    header.with_suffix(".raw").unlink()
    return header


def _not_an_image(path: Path) -> Path:
    path.write_bytes(b"<html>404 not found</html>")
    return path


def _with(value: float) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        data = volume()
        data[3, 4, 5] = value
        return write_nifti(path, data)

    return write


def _gzip_named_nii(path: Path) -> Path:
    """A compressed NIfTI whose name lost its .gz (nibabel alone says it cannot work out the file type)."""
    write_nifti(path, volume())
    target = path.with_name("scan.nii")
    path.rename(target)
    return target


def _zero_spacing(path: Path) -> Path:
    """A header whose third voxel axis has zero length (pixdim 0), as damaged conversions write."""
    header = nib.Nifti1Header()
    header.set_sform(np.diag([0.7, 0.5, 0.0, 1.0]), code=1)
    header["pixdim"][1:4] = [0.7, 0.5, 0.0]
    nib.save(nib.Nifti1Image(volume(), None, header), str(path))
    return path


def _mixed_dicom(path: Path) -> Path:
    folder = path.parent / "series_mixed"
    write_dicom_series(folder, "1.2.826.0.1.1.1")
    write_dicom_series(folder, "1.2.826.0.1.1.2", slices=3, prefix="LOC")  # a localiser dropped in the same folder
    return folder


BAD_SCANS = {
    "missing": (lambda p: p, "scan.nii.gz: file not found"),
    "truncated_nii_gz": (_truncated, "scan.nii.gz: cannot be read: the gzip data ends early: the file is truncated"),
    "mhd_missing_raw": (_mhd_without_raw, "scan.mhd: its data file scan.raw (named by 'ElementDataFile'"),
    "not_an_image": (_not_an_image, "scan.nii.gz: cannot be read: it is not valid gzip data"),
    "2d": (lambda p: write_nifti(p, volume((12, 12))), "scan.nii.gz: a single 3D volume is required, got data of"),
    "4d": (lambda p: write_nifti(p, volume((10, 12, 12, 2))), "with 2 channels/time points"),
    "flat_3d": (lambda p: write_nifti(p, volume((1, 12, 12))), "has an axis under 8 voxels (a 2D image?)"),
    "nan": (_with(np.nan), "scan.nii.gz: contains NaN or infinite intensities"),
    "inf": (_with(np.inf), "scan.nii.gz: contains NaN or infinite intensities"),
    "constant": (lambda p: write_nifti(p, np.full((10, 12, 12), 7, np.int16)), "every voxel has the same value (7"),
    "dicom_mixed_series": (_mixed_dicom, "series_mixed: this DICOM folder holds 2 series"),
    "gzip_named_nii": (_gzip_named_nii, "scan.nii: cannot be read: it holds gzip data but its name does not end in"),
    "singular_affine": (_zero_spacing, "scan.nii.gz: its voxel-to-world matrix (affine) is singular (voxel spacing"),
}


@pytest.mark.parametrize("case", sorted(BAD_SCANS))
def test_bad_scan_becomes_one_clear_message(case, tmp_path, preprocessing):
    """Through inference.json's preprocessing in the fail-safe dataset: a placeholder with the message, no raise."""
    make, expected = BAD_SCANS[case]
    path = make(tmp_path / "scan.nii.gz")
    item = FailSafeDataset([{"image": str(path)}], transform=preprocessing)[0]
    assert FAILURE_KEY in item, f"{case} was not caught: {type(item)}"
    message = item[FAILURE_KEY]
    assert message.startswith(str(path)) and expected in message
    assert "\n" not in message and "Traceback" not in message and "applying transform" not in message


def test_dicom_series_message_says_what_to_do(tmp_path, preprocessing):
    message = FailSafeDataset([{"image": str(_mixed_dicom(tmp_path / "x"))}], transform=preprocessing)[0][FAILURE_KEY]
    assert "1.2.826.0.1.1.1" in message and "1.2.826.0.1.1.2" in message
    assert "only the first would be read" in message and "its own folder" in message


def test_good_scan_and_single_dicom_series_pass(tmp_path, preprocessing):
    write_dicom_series(tmp_path / "series_1", "1.2.826.0.1.1.9")
    data = [{"image": str(write_nifti(tmp_path / "good.nii.gz", volume()))}, {"image": str(tmp_path / "series_1")}]
    for item in FailSafeDataset(data, transform=preprocessing):
        assert FAILURE_KEY not in item
        assert item["image"].shape[0] == 1 and item["image"].shape[2] % 16 == 0 and item["image"].shape[3] % 16 == 0


def test_other_failures_name_the_scan():
    try:
        raise RuntimeError("applying transform <Orientationd>") from ValueError("cannot broadcast (2,3) to (4,)")
    except RuntimeError as e:
        message = describe_failure(e, "/data/knee_7.nii.gz")
    assert message == "/data/knee_7.nii.gz: failed (ValueError: cannot broadcast (2,3) to (4,))"


@pytest.mark.parametrize(
    "make, expected",
    [
        (_mhd_without_raw, "scan.mhd: its data file scan.raw (named by 'ElementDataFile' in the header) is missing"),
        (lambda p: write_nifti(p, volume((10, 12, 12, 2))), "scan.nii.gz: a 3D volume is required, got 4D data"),
        (lambda p: write_nifti(p, np.zeros((6, 8, 8), np.float32)), "scan.nii.gz: every voxel has the same value"),
        (_with(np.inf), "scan.nii.gz: contains NaN or infinite intensities"),
        (_mixed_dicom, "series_mixed: this DICOM folder holds 2 series"),
    ],
    ids=["mhd_missing_raw", "4d", "constant", "inf", "dicom_mixed_series"],
)
def test_training_check_reports_bad_images(make, expected, tmp_path):
    """The same problems in a training dataset, found by the check that runs before training."""
    image = make(tmp_path / "scan.nii.gz")
    label = write_nifti(tmp_path / "lab.nii.gz", np.zeros((10, 12, 12), np.uint8))
    with pytest.raises(DatasetError) as err:
        validate_entries([{"image": str(image), "label": str(label)}], "oai-zib")
    assert expected in str(err.value)


def test_inference_input_folder_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^dataset error: scan folder .*nowhere does not exist$"):
        scan_datalist(tmp_path / "nowhere", exit_on_error=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"^dataset error: no scans in .*empty: expected files ending in \.nii\.gz"):
        scan_datalist(tmp_path / "empty", exit_on_error=True)


def test_label_map_given_as_a_scan_is_warned_about(tmp_path, preprocessing, caplog):
    from scripts.checks import label_map_hint

    label = np.zeros((10, 12, 12), np.uint8)
    label[:5, :6, :6] = 2  # on the every-4th-voxel grid that label_map_hint samples
    label[5:, 6:, 6:] = 4
    assert label_map_hint(torch.as_tensor(label, dtype=torch.float32)[None]) == (
        "holds only 3 distinct whole values (0, 2, 4): is it a label map rather than an MR scan?"
    )
    assert label_map_hint(torch.as_tensor(volume())[None] * 1000) is None  # an MR-like image: many values
    path = write_nifti(tmp_path / "knee_label.nii.gz", label)
    with caplog.at_level("WARNING"):
        item = FailSafeDataset([{"image": str(path)}], transform=preprocessing)[0]
    assert FAILURE_KEY not in item  # a warning, not a failure: the user decides
    assert f"{path}: holds only 3 distinct whole values" in caplog.text


def test_files_that_are_not_scans_are_named_in_the_log(tmp_path, caplog):
    write_nifti(tmp_path / "knee.nii.gz", volume())
    (tmp_path / "notes.txt").write_text("not a scan")
    (tmp_path / "knee.img").write_bytes(b"analyze data")
    with caplog.at_level("INFO"):
        assert [Path(e["image"]).name for e in scan_datalist(tmp_path)] == ["knee.nii.gz"]
    assert "ignored 2 file(s) in" in caplog.text and "that are not scans" in caplog.text


# ---------------------------------------------------------------- failures file


def test_failure_log_writes_atomically_and_never_replaces_an_earlier_list(tmp_path):
    (tmp_path / "failures.csv").write_text("scan,error\nold.nii.gz,from an earlier run\n")
    log = FailureLog(str(tmp_path))
    log.record("/in/a.nii.gz", "/in/a.nii.gz: contains NaN or infinite intensities")
    log.succeeded = 3
    assert (tmp_path / "failures.csv").read_text().endswith("from an earlier run\n")  # kept
    assert log.path == tmp_path / "failures-1.csv"
    assert log.path.read_text() == "scan,error\n/in/a.nii.gz,contains NaN or infinite intensities\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["failures-1.csv", "failures.csv"]  # no temporary left
    with pytest.raises(SystemExit) as err:
        log.raise_if_failed(exit_process=True)  # the command line: a clean message and exit code 1
    assert str(err.value).startswith("error: 1 of 4 scan(s) failed and were skipped (3 segmented")
    assert "failures-1.csv" in str(err.value) and "a.nii.gz: contains NaN" in str(err.value)
    with pytest.raises(ScansFailedError, match=r"^error: 1 of 4 scan\(s\) failed"):
        log.raise_if_failed()  # a Python caller (not `monai.bundle run`): an exception it can catch
    assert FailureLog(str(tmp_path), overwrite=True)._free_path() == tmp_path / "failures.csv"
    assert FailureLog(str(tmp_path / "clean")).raise_if_failed() is True


def test_clean_rerun_settles_an_earlier_failure_list(tmp_path, caplog):
    earlier = tmp_path / "failures.csv"
    earlier.write_text("scan,error\nold.nii.gz,from an earlier run\n")
    with caplog.at_level("WARNING"):
        assert FailureLog(str(tmp_path)).raise_if_failed() is True
    assert "is from an earlier run (this run had no failures); it is kept" in caplog.text
    assert earlier.read_text().endswith("from an earlier run\n")
    assert FailureLog(str(tmp_path), overwrite=True).raise_if_failed() is True
    assert earlier.read_text() == "scan,error\n"  # with overwrite the list is this run's: no failures


# ---------------------------------------------------------------- output folders, before any work


def test_output_dir_that_cannot_be_written_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for folder in (blocker, blocker / "out"):
        with pytest.raises(SystemExit, match=r"^error: output_dir .*a_file.* cannot be written: it is a file, or a"):
            prepare_output_dir(folder)
    made = tmp_path / "new" / "deeper"
    assert prepare_output_dir(made) is True and made.is_dir() and not list(made.iterdir())  # no test file left


def test_earlier_run_level_outputs_are_kept_unless_overwrite(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"already holds summary.json from an earlier run.*--overwrite True"):
        prepare_output_dir(tmp_path, existing=["metrics_volume.csv", "summary.json"])
    assert prepare_output_dir(tmp_path, existing=["summary.json"], overwrite=True) is True
    assert (tmp_path / "summary.json").read_text() == "{}"


def test_evaluation_refuses_to_replace_earlier_reports(tmp_path):
    """evaluate.json checks its report folder in `initialize`, before the checkpoint or any scan is read."""
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "summary.md").write_text("an earlier evaluation")
    parser = ConfigParser()
    parser.read_config([str(TRAIN), str(REPO / "configs" / "evaluate.json")])
    parser.update({"output_dir": str(tmp_path)})
    step = next(i for i, e in enumerate(parser["initialize"]) if "prepare_output_dir" in str(e))
    with pytest.raises(SystemExit, match=r"evaluation already holds summary.md from an earlier run"):
        parser.get_parsed_content(f"initialize#{step}")
    parser.update({"overwrite": True})
    parser.parse()
    assert parser.get_parsed_content(f"initialize#{step}") is True


def test_resume_without_a_checkpoint_stops_before_any_work(tmp_path):
    with pytest.raises(SystemExit, match=r"--resume True was given, but .* holds no checkpoint_\*\.pt file"):
        check_run_dir(str(tmp_path / "models"), resume=True)
    (tmp_path / "models").mkdir()
    torch.save({}, tmp_path / "models" / "checkpoint_checkpoint_epoch=2.pt")
    assert check_run_dir(str(tmp_path / "models"), resume=True) is True


def test_overwrite_replaces_the_earlier_run_and_fine_tuning_keeps_it(tmp_path):
    """--overwrite True deletes the earlier run's model, checkpoints and exports before the new run, so a later
    --resume cannot continue the old run; other files stay. Fine-tuning (MONAI Label) keeps everything."""
    models = tmp_path / "models"
    models.mkdir()
    run_files = ["model.pt", "checkpoint_checkpoint_epoch=6.pt", "model.ts", "model.onnx"]
    for name in [*run_files, "notes.txt"]:
        (models / name).write_bytes(b"earlier")
    with pytest.raises(SystemExit, match=r"already holds checkpoint_checkpoint_epoch=6.pt, model.pt from an earlier"):
        check_run_dir(str(models))
    assert check_run_dir(str(models), fine_tune=True) is True
    assert sorted(p.name for p in models.iterdir()) == sorted([*run_files, "notes.txt"])
    assert check_run_dir(str(models), overwrite=True) is True
    assert [p.name for p in models.iterdir()] == ["notes.txt"]
    with pytest.raises(SystemExit, match="holds no checkpoint"):
        check_run_dir(str(models), resume=True)


# ---------------------------------------------------------------- no data loss in writers


def _label_map(source: Path):
    from monai.data import MetaTensor

    return MetaTensor(torch.ones(1, 4, 5, 6), affine=torch.eye(4), meta={"filename_or_obj": str(source)})


def test_writer_refuses_existing_output_and_input(tmp_path):
    scan = write_nifti(tmp_path / "knee.nii.gz", volume())
    out = tmp_path / "out"
    SaveLabelMapd("pred", str(out))({"pred": _label_map(scan)})
    written = out / "knee_seg.nii.gz"
    before = written.read_bytes()
    with pytest.raises(FileExistsError, match=r"knee_seg.nii.gz already exists; pass --overwrite True"):
        SaveLabelMapd("pred", str(out))({"pred": _label_map(scan)})
    assert written.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["knee_seg.nii.gz"]
    SaveLabelMapd("pred", str(out), overwrite=True)({"pred": _label_map(scan)})
    own_input = write_nifti(tmp_path / "knee_0000.nii.gz", volume())  # case "knee": postfix 0000 names the input
    with pytest.raises(FileExistsError, match="refusing to write .*knee_0000.nii.gz over its own input scan"):
        SaveLabelMapd("pred", str(tmp_path), postfix="0000", overwrite=True)({"pred": _label_map(own_input)})
    assert own_input.read_bytes()[:2] == b"\x1f\x8b"  # still the scan (gzip), untouched


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def network() -> EASUNet:
    return EASUNet(features=TINY)


@pytest.mark.parametrize(
    "make_state, expected",
    [
        (lambda net: BasicUNet(spatial_dims=2, features=(8, 8, 16, 32, 64, 8)).state_dict(), "keys the network does"),
        (lambda net: EASUNet(features=(16, 32, 64, 128, 256)).state_dict(), "tensors of another shape"),
        (lambda net: dict(list(net.state_dict().items())[5:]), "5 keys missing from the checkpoint"),
    ],
    ids=["other_network", "other_features", "missing_keys"],
)
def test_checkpoint_that_does_not_fit(make_state, expected, network, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(make_state(network), path)
    with pytest.raises(SystemExit) as err:
        require_checkpoint(str(path), network)
    message = str(err.value)
    assert message.startswith(f"error: checkpoint {path} does not fit the configured network EASUNet")
    assert expected in message and "configs/networks/unet.json" in message


def test_checkpoint_that_cannot_be_loaded(network, tmp_path):
    garbage = tmp_path / "model.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=r"cannot load model checkpoint .*model.pt: it is not a PyTorch checkpoint"):
        require_checkpoint(str(garbage), network)
    pickled = tmp_path / "pickled.pt"
    torch.save(network, pickled)  # a whole pickled module: weights_only=True refuses to unpickle it
    with pytest.raises(SystemExit, match=r"pickled.pt: it holds pickled Python objects, which weights_only=True"):
        require_checkpoint(str(pickled), network)
    with pytest.raises(SystemExit, match=r"no model checkpoint at .*absent.pt"):
        require_checkpoint(str(tmp_path / "absent.pt"), network)


def test_checkpoint_that_fits(network, tmp_path):
    plain, full = tmp_path / "model.pt", tmp_path / "checkpoint.pt"
    torch.save(network.state_dict(), plain)
    torch.save({"model": network.state_dict(), "optimizer": {}}, full)
    assert require_checkpoint(str(plain), network) == str(plain)
    assert require_checkpoint(str(full), network) == str(full)


def test_resume_from_a_checkpoint_of_another_network(network, tmp_path):
    torch.save({"model": EASUNet(features=(16, 32, 64, 128, 256)).state_dict()}, tmp_path / "checkpoint_epoch=2.pt")
    resume = ResumeFromLatest(str(tmp_path), {"model": network}, enabled=True)
    with pytest.raises(SystemExit, match=r"checkpoint_epoch=2.pt does not fit the configured network EASUNet"):
        resume.attach(engine=None)


# ---------------------------------------------------------------- command-line overrides


def overrides(*args: str, config: str = str(TRAIN)) -> str | None:
    """The message `check_overrides` stops `python -m monai.bundle run --config_file CONFIG ARGS` with, or None."""
    try:
        check_overrides([BUNDLE_MAIN, "run", "--config_file", config, *args])
    except SystemExit as e:
        return str(e)
    return None


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--max_epoch", "3"], "--max_epoch 3: the config has no key 'max_epoch' (did you mean 'max_epochs'?)"),
        (["--batch_size", "abc"], "--batch_size abc: 'batch_size' takes a whole number (default 16), got the text"),
        (["--learning_rate", "fast"], "--learning_rate fast: 'learning_rate' takes a number (default 0.01)"),
        (["--overwrite", "false"], "a lowercase false as the text 'false', which Python counts as True"),
        (["--resume=no"], "--resume no: 'resume' is a switch (default False); write True or False"),
        (["--label_preset", "2"], "--label_preset 2: 'label_preset' takes text (default 'oai-zib'), got int 2"),
        (["--network_def#feature", "[8]"], "scripts.networks.EASUNet has no argument 'feature' (did you mean"),
        (["--network_def#reference_size", "big"], "'network_def#reference_size' takes a whole number (default 384)"),
        (["--network_def#features", "8"], "'network_def#features' takes a list such as [32, 64, 128, 256, 512]"),
        (["--train#handlers#42#seed", "1"], "'train#handlers' is a list of"),
        (["--num_workers", "many"], "'num_workers' takes a whole number (default: set per machine), got the text"),
        (["--pin_memory", "false"], "'pin_memory' is a switch (default: set per machine); write True or False"),
        (["--compile_kwargs", "max-autotune"], "'compile_kwargs' takes a section (a dict), got the text"),
        # well typed, but values that cannot work (scripts.overrides.VALUE_RULES)
        (["--max_epochs", "-1"], "--max_epochs -1: 'max_epochs' takes a whole number of at least 1"),
        (["--batch_size", "0"], "--batch_size 0: 'batch_size' takes a whole number of at least 1"),
        (["--num_workers", "-2"], "'num_workers' takes a whole number of at least 0"),
        (["--learning_rate", "0"], "'learning_rate' takes a number above 0"),
        (["--cache_rate", "1.5"], "'cache_rate' takes a fraction from 0 to 1"),
        (
            ["--label_preset", "oaizib"],
            "--label_preset oaizib: 'label_preset' is one of cartilage, oai-labels, oai-zib, oaizib-cm",
        ),
        (["--intensity_percentiles", "[99.5,0.5]"], "takes [low, high] percentiles with 0 <= low < high <= 100"),
        (["--inplane_spacing", "0"], "'inplane_spacing' takes a spacing in mm above 0, or -1"),
        (["--stop_after_epoch", "-1"], "'stop_after_epoch' takes a whole number of at least 0"),
        (["--time_limit", "-60"], "--time_limit -60: 'time_limit' takes a number of seconds of at least 0"),
        (["--time_limit", "2h"], "'time_limit' takes a number (default 0.0), got the text '2h'"),
        (["--cpu_runtime", "ort"], "--cpu_runtime ort: 'cpu_runtime' is auto, torch or onnxruntime"),
    ],
)
def test_bad_override_is_named(args, expected):
    message = overrides(*args)
    assert message is not None and message.startswith("error: 1 command-line override(s) do not fit the config")
    assert str(TRAIN) in message and expected in message


def test_override_values_checked_per_config():
    """laterality exists in inference.json only; a CUDA device is refused where torch has no GPU."""
    message = overrides("--laterality", "lft", config=str(INFERENCE))
    assert message is not None and "--laterality lft: 'laterality' is auto, left or right" in message
    assert overrides("--laterality", "Left", config=str(INFERENCE)) is None
    evaluate = f"['{TRAIN}','{REPO / 'configs' / 'evaluate.json'}']"
    measures = overrides("--measure", "True", "--agreement_measures", "['thickness_mean']", config=evaluate)
    assert (
        measures is not None and "'agreement_measures' takes a list of measurement columns among volume_mm3" in measures
    )
    assert overrides("--measure", "True", "--agreement_measures", "['thickness_p95_mm']", config=evaluate) is None
    negative = overrides("--min_component_mm3", "-5", config=str(INFERENCE))
    assert negative is not None and "'min_component_mm3' takes a volume in mm^3 of at least 0" in negative
    assert overrides("--min_component_mm3", "0", config=str(INFERENCE)) is None
    cuda = overrides("--device", "cuda:0", config=str(INFERENCE))
    if torch.cuda.is_available():
        assert cuda is None
    else:
        assert cuda is not None and "names a CUDA device, but torch finds no usable GPU here" in cuda


def test_all_bad_overrides_in_one_message():
    message = overrides("--max_epoch", "3", "--batch_size", "abc", "--amp", "false")
    assert message.startswith("error: 3 command-line override(s)") and message.count("\n  --") == 3


@pytest.mark.parametrize(
    "args",
    [
        ["--max_epochs", "3", "--batch_size=8", "--learning_rate", "1", "--inplane_spacing", "-1", "--amp", "False"],
        ["--resume", "true", "--overwrite", "True", "--amp", "0", "--images_dir", "/data/oai", "--seed", "7"],
        ["--network_def#features", "[8,16,32,64,128]", "--network_def#reference_size", "64", "--datalist#num_val", "2"],
        ["--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf", "--bundle_root", "."],
        ["--tracking", "mlflow", "--experiment_name", "knee", "--tracking_uri", "sqlite:///x.db", "--run_name", "a"],
        ["--dataset_dir", "$@bundle_root + '/x'", "--max_epochs", "@val_interval", "--", "--help"],
        ["training", "--run_id", "training", "--validate#additional_metrics#val_extra", "{}"],
        ["--num_workers", "8", "--sw_batch_size", "16", "--pin_memory", "False", "--loss_log_interval", "1"],
        ["--compile", "True", "--compile_kwargs", "{'mode': 'max-autotune', 'dynamic': False}"],
    ],
)
def test_good_overrides_pass(args):
    assert overrides(*args) is None


def test_override_check_is_per_config_and_ignores_other_programs():
    assert overrides("--slices_per_epoch", "16", config=str(INFERENCE)).endswith(
        "switches take True or False."
    ) and "no key 'slices_per_epoch'" in overrides("--slices_per_epoch", "16", config=str(INFERENCE))
    merged = f"['{TRAIN}','{REPO / 'configs' / 'demo.json'}']"
    assert overrides("--network_def#reference_size", "32", config=merged) is None
    assert check_overrides(["pytest", "--max_epoch", "3"]) is True  # MONAI Label, tests: not a bundle command line
    assert check_overrides([BUNDLE_MAIN, "ckpt_export", "--max_epoch", "3"]) is True
    assert parse_cli([BUNDLE_MAIN, "run", "--a#b", "-1", "--flag", "--c=[1, 2]"]) == {
        "a#b": ("-1", -1),
        "flag": ("", True),
        "c": ("[1, 2]", [1, 2]),
    }


# ---------------------------------------------------------------- as a user runs it


@pytest.fixture(scope="module")
def scans_with_bad_ones(tmp_path_factory) -> Path:
    """Two good scans, one truncated download and one 2D image in one folder; a random tiny model beside them."""
    from scripts.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("batch")
    write_phantom_dataset(root / "phantoms", num_cases=2, num_test=2, shape=(16, 64, 64), seed=5)
    scans = root / "scans"
    (root / "phantoms" / "imagesTs").rename(scans)
    _truncated(scans / "broken.nii.gz")
    write_nifti(scans / "slice.nii.gz", volume((64, 64)))
    (root / "models").mkdir()
    torch.manual_seed(0)
    torch.save(EASUNet(features=TINY, reference_size=64).state_dict(), root / "models" / "model.pt")
    return root


def bundle(*args: str, config: str = str(INFERENCE)) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *args]
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=300, env={**os.environ}
    )


@pytest.mark.slow
def test_batch_inference_skips_bad_scans_and_exits_non_zero(scans_with_bad_ones):
    root = scans_with_bad_ones
    out = root / "out"
    result = bundle(
        "--dataset_dir", str(root / "scans"), "--output_dir", str(out), "--ckpt_dir", str(root / "models"),
        "--network_def#features", "[8,16,32,64,128]", "--network_def#reference_size", "64", "--inplane_spacing", "-1",
        "--num_workers", "1", "--amp", "False",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    for name in ("phantom_000", "phantom_001"):  # the good scans are all segmented and measured
        assert (out / f"{name}_seg.nii.gz").is_file() and (out / f"{name}_thickness.nii.gz").is_file()
    assert not list(out.glob("broken*")) and not list(out.glob("slice*")) and not list(out.glob(".*"))
    rows = list(csv.reader((out / "failures.csv").open()))
    assert rows[0] == ["scan", "error"] and [r[0] for r in rows[1:]] == [
        str(root / "scans" / "broken.nii.gz"),
        str(root / "scans" / "slice.nii.gz"),
    ]
    assert rows[1][1].startswith("cannot be read: the gzip data ends early: the file is truncated")
    assert rows[2][1] == "a single 3D volume is required, got data of shape (64, 64) (2D)"
    log = result.stdout + result.stderr
    assert "ERROR - skipped a scan: " in log and "broken.nii.gz: cannot be read" in log
    summary = result.stderr[result.stderr.rindex("error: ") :]
    assert summary.startswith("error: 2 of 4 scan(s) failed and were skipped (2 segmented")
    assert str(out / "failures.csv") in summary and "slice.nii.gz: a single 3D volume is required" in summary
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = bundle(*result.args[5:])  # the same command into the same folder: stopped before any scan is read
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1] == (
        f"error: output_dir {out} already holds measurements.csv from an earlier run. Write elsewhere with "
        "--output_dir DIR, or replace them with --overwrite True."
    )
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.slow
def test_cli_stops_on_a_misspelt_override_before_work(scans_with_bad_ones, tmp_path):
    result = bundle("--dataset_dir", str(tmp_path), "--max_epoch", "3", "--overwrite", "false")
    assert result.returncode == 1
    message = result.stderr[result.stderr.rindex("error: ") :]
    assert message.startswith(f"error: 2 command-line override(s) do not fit the config ({INFERENCE})")
    assert "--max_epoch 3: the config has no key 'max_epoch'" in message
    assert "--overwrite false: 'overwrite' is a switch (default False)" in message
    assert "Traceback" not in message


@pytest.mark.slow
def test_cli_stops_on_a_checkpoint_of_another_network(scans_with_bad_ones, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    torch.save(BasicUNet(spatial_dims=2, features=(8, 8, 16, 32, 64, 8)).state_dict(), models / "model.pt")
    result = bundle("--dataset_dir", str(scans_with_bad_ones / "scans"), "--ckpt_dir", str(models))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: checkpoint {models / 'model.pt'} does not fit the configured network EASUNet")


def test_stretched_schedule_hand_computed():
    """A polynomial schedule of 2 epochs, finished (lr 0), stretched to 4: lr = 0.01 * (1 - 2/4) ** 0.9."""
    from scripts.handlers import stretch_schedule

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=2, power=0.9)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.0
    stretch_schedule(scheduler, 4, "ckpt.pt")
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**0.9)
    optimizer.step()
    scheduler.step()  # the chained update continues the stretched schedule
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.25**0.9)
    stretch_schedule(scheduler, 4, "ckpt.pt")  # the same length: untouched
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.25**0.9)


def test_schedule_that_cannot_be_stretched_is_named():
    from scripts.handlers import stretch_schedule

    class Custom:
        total_iters = 2

    message = r"ckpt.pt holds a Custom of 2 epochs, this run asks for 5 \(max_epochs\), and only a PolynomialLR"
    with pytest.raises(ValueError, match=message):
        stretch_schedule(Custom(), 5, "ckpt.pt")


def test_compile_without_triton_or_cxx_is_named_before_the_run(monkeypatch):
    """`--compile True` where torch.compile cannot build kernels stops at start-up with one paragraph, not at the
    first batch after the dataset is cached."""
    import torch._inductor.cpp_builder as cpp_builder
    import torch.utils._triton as triton_probe
    from torch._inductor.exc import InvalidCxxCompiler

    from scripts.checks import require_compiler

    monkeypatch.setattr(triton_probe, "has_triton", lambda: False)

    def no_compiler():
        raise InvalidCxxCompiler

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    require_compiler(False, "cuda:0")  # compile off: nothing to check
    require_compiler(False, torch.device("cpu"))
    with pytest.raises(SystemExit, match="cannot build GPU kernels here: Triton is not installed"):
        require_compiler(True, torch.device("cuda:0"))
    with pytest.raises(SystemExit, match=r"cannot build CPU kernels here: no working C\+\+ compiler"):
        require_compiler(True, "cpu")


@pytest.mark.parametrize("configs", [["train.json"], ["inference.json"], ["train.json", "multi_gpu_train.json"]])
def test_every_compiling_workflow_checks_the_compiler(configs):
    """Once, in `initialize`: directly, or through train.json's `prepare_run` list that multi_gpu_train.json reuses."""
    parser = ConfigParser()
    parser.read_config([str(REPO / "configs" / c) for c in configs])
    steps = [t for s in parser["initialize"] for t in (parser["prepare_run"] if s == "@prepare_run" else [s])]
    checks = [s for s in steps if isinstance(s, dict) and s.get("_target_") == "scripts.checks.require_compiler"]
    assert checks == [{"_target_": "scripts.checks.require_compiler", "enabled": "@compile", "device": "@device"}]
