"""Datalists: layouts, subject-level splits, and one clear message for every problem in a dataset."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.datalist import (
    DatasetError,
    case_name,
    cross_validation_folds,
    find_pairs,
    fold_path,
    prepare_datalist,
    scan_datalist,
    split_by_subject,
    subject_id,
    validate_entries,
    write_split,
)

SPACING = np.diag([0.7, 0.5, 0.5, 1.0])


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = SPACING) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def label_volume(shape=(6, 8, 8)) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[2:4, 2:6, 2:4] = 2
    label[2:4, 2:6, 5:7] = 4
    return label


def make_cm_layout(root: Path, cases=("a_001", "b_002", "c_003"), test=("d_004",)) -> Path:
    for split, names in (("Tr", cases), ("Ts", test)):
        for name in names:
            write_nifti(root / f"images{split}" / f"{name}_0000.nii.gz", np.random.rand(6, 8, 8).astype(np.float32))
            write_nifti(root / f"labels{split}" / f"{name}.nii.gz", label_volume())
    return root


@pytest.mark.parametrize(
    "name,case,subject",
    [
        ("9014797_00m.nii.gz", "9014797_00m", "9014797"),
        ("9014797.segmentation_masks.mhd", "9014797", "9014797"),
        ("knee_001_0000.nii.gz", "knee_001", "knee_001"),
        ("scan.nrrd", "scan", "scan"),
    ],
)
def test_case_and_subject(name, case, subject):
    assert case_name(name) == case
    assert subject_id(case_name(name)) == subject


def test_pairs_in_oaizib_cm_layout(tmp_path):
    root = make_cm_layout(tmp_path / "ds")
    splits = prepare_datalist(str(root), num_val=1, validate=True, label_preset="oai-zib")
    assert len(splits["training"]) == 2 and len(splits["validation"]) == 1
    assert [Path(e["image"]).name for e in splits["test"]] == ["d_004_0000.nii.gz"]
    for entry in splits["training"] + splits["validation"]:
        assert case_name(entry["image"]) == case_name(entry["label"])


def test_unpaired_files_are_all_reported(tmp_path):
    root = make_cm_layout(tmp_path / "ds")
    (root / "labelsTr" / "b_002.nii.gz").unlink()
    write_nifti(root / "labelsTr" / "z_999.nii.gz", label_volume())
    with pytest.raises(DatasetError) as err:
        find_pairs(root / "imagesTr", root / "labelsTr")
    assert "image without label" in str(err.value) and "b_002_0000.nii.gz" in str(err.value)
    assert "label without image" in str(err.value) and "z_999.nii.gz" in str(err.value)


def test_split_never_puts_one_subject_in_two_splits():
    entries = [{"subject": f"9{n:06d}", "case": f"9{n:06d}_{v}"} for n in range(20) for v in ("00m", "48m")]
    for seed in range(5):
        splits = split_by_subject(entries, num_val=4, num_test=3, seed=seed)
        subjects = {k: {e["subject"] for e in v} for k, v in splits.items()}
        assert not subjects["training"] & subjects["validation"]
        assert not subjects["training"] & subjects["test"]
        assert not subjects["validation"] & subjects["test"]
        assert (len(subjects["validation"]), len(subjects["test"]), len(subjects["training"])) == (4, 3, 13)
        assert sum(len(v) for v in splits.values()) == 40
    assert split_by_subject(entries, 4, 3, seed=1) == split_by_subject(entries, 4, 3, seed=1)
    assert split_by_subject(entries, 4, 3, seed=1) != split_by_subject(entries, 4, 3, seed=2)


def test_split_needs_training_subjects():
    entries = [{"subject": str(n)} for n in range(3)]
    with pytest.raises(DatasetError, match="cannot give 2 validation and 1 test"):
        split_by_subject(entries, 2, 1)


def test_cross_validation_tests_every_subject_once():
    entries = [{"subject": f"9{n:06d}", "case": f"9{n:06d}_{v}"} for n in range(24) for v in ("00m", "48m")]
    folds = cross_validation_folds(entries, folds=6, num_val=4, seed=0)
    assert len(folds) == 6
    tested = [e["subject"] for fold in folds for e in fold["test"] if e["case"].endswith("00m")]
    assert sorted(tested) == sorted({e["subject"] for e in entries})  # each subject tested exactly once
    for fold in folds:
        subjects = {k: {e["subject"] for e in v} for k, v in fold.items()}
        assert [len(subjects[k]) for k in ("training", "validation", "test")] == [16, 4, 4]
        assert not (subjects["training"] & subjects["validation"]) | (subjects["training"] & subjects["test"])
        assert not subjects["validation"] & subjects["test"]
        assert sum(len(v) for v in fold.values()) == 48  # both visits of every subject, in one split
    assert folds == cross_validation_folds(entries, 6, 4, seed=0)
    assert folds != cross_validation_folds(entries, 6, 4, seed=1)


def test_cross_validation_uneven_folds_and_bad_settings():
    entries = [{"subject": str(n)} for n in range(7)]
    sizes = sorted(len(f["test"]) for f in cross_validation_folds(entries, folds=3, num_val=1))
    assert sizes == [2, 2, 3]
    with pytest.raises(DatasetError, match=r"folds must be from 2 to the number of subjects \(7\), got 8"):
        cross_validation_folds(entries, folds=8)
    with pytest.raises(DatasetError, match="folds must be from 2"):
        cross_validation_folds(entries, folds=1)
    with pytest.raises(DatasetError, match="fold 0: 4 non-test subjects cannot give 4 validation subjects"):
        cross_validation_folds(entries, folds=3, num_val=4)
    for fraction in (0.2, 0, -1):  # a fraction (train.json's num_val is 0.2) would silently mean 0
        with pytest.raises(DatasetError, match=f"num_val must be a whole number .* got {fraction}"):
            cross_validation_folds(entries, folds=3, num_val=fraction)


def test_fold_paths():
    assert fold_path("configs/splits/cv.json", 2) == str(Path("configs/splits/cv_fold2.json"))
    assert fold_path("splits/{fold}/split.json", 0) == "splits/0/split.json"


def test_write_split_folds_round_trip(tmp_path):
    root = tmp_path / "labels"
    for subject in range(4):
        for visit in ("00m", "24m"):
            write_nifti(root / f"900000{subject}_{visit}.nii.gz", label_volume())
    out = tmp_path / "cv.json"
    written = write_split(str(root), str(out), num_val=1, folds=4)
    assert written == [str(tmp_path / f"cv_fold{i}.json") for i in range(4)]
    specs = [json.loads(Path(p).read_text()) for p in written]
    assert sorted(s for spec in specs for s in spec["test"]) == [f"900000{i}" for i in range(4)]
    assert [(spec["fold"], spec["folds"], spec["seed"]) for spec in specs] == [(i, 4, 0) for i in range(4)]
    splits = prepare_datalist(str(root), layout="labels", split_file=written[1])
    assert {e["subject"] for e in splits["test"]} == set(specs[1]["test"])
    assert len(splits["test"]) == 2 and len(splits["validation"]) == 2 and len(splits["training"]) == 4
    Path(written[3]).unlink()
    before = Path(written[0]).read_text()
    with pytest.raises(FileExistsError, match="cv_fold0.json already exists; pass --overwrite True"):
        write_split(str(root), str(out), num_val=1, folds=4, seed=5)
    assert Path(written[0]).read_text() == before and not Path(written[3]).exists()  # nothing half-written
    write_split(str(root), str(out), num_val=1, folds=4, seed=5, overwrite=True)
    assert json.loads(Path(written[3]).read_text())["seed"] == 5


def test_split_file_assigns_subjects(tmp_path):
    root = tmp_path / "labels"
    for name in ("9000001_00m", "9000001_24m", "9000002_00m", "9000003_00m"):
        write_nifti(root / f"{name}.nii.gz", label_volume())
    spec = {"training": ["9000001"], "validation": ["9000002"], "test": ["9000003"]}
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps(spec))
    splits = prepare_datalist(str(root), layout="labels", split_file=str(split_file))
    assert [e["case"] for e in splits["training"]] == ["9000001_00m", "9000001_24m"]
    assert "image" not in splits["training"][0]
    spec["test"] = []
    split_file.write_text(json.dumps(spec))
    with pytest.raises(DatasetError, match="9000003"):
        prepare_datalist(str(root), layout="labels", split_file=str(split_file))


def _pair(tmp_path: Path, image: np.ndarray, label: np.ndarray, label_affine: np.ndarray = SPACING) -> dict:
    return {
        "image": str(write_nifti(tmp_path / "img.nii.gz", image)),
        "label": str(write_nifti(tmp_path / "lab.nii.gz", label, label_affine)),
    }


def test_validation_catches_shape_mismatch(tmp_path):
    entry = _pair(tmp_path, np.zeros((6, 8, 8), np.float32) + 1, label_volume((6, 8, 9)))
    with pytest.raises(DatasetError, match=r"img.nii.gz and .*lab.nii.gz: image shape \(6, 8, 8\) != label shape"):
        validate_entries([entry], "oai-zib")


def test_validation_catches_affine_mismatch(tmp_path):
    shifted = SPACING.copy()
    shifted[0, 3] = 5.0
    entry = _pair(tmp_path, np.ones((6, 8, 8), np.float32), label_volume(), shifted)
    with pytest.raises(DatasetError, match="geometry .affine. differ by up to 5 mm"):
        validate_entries([entry], "oai-zib")


def test_validation_catches_2d_file(tmp_path):
    entry = _pair(tmp_path, np.ones((8, 8), np.float32), label_volume())
    with pytest.raises(DatasetError, match=r"img.nii.gz: a 3D volume is required, got 2D"):
        validate_entries([entry], "oai-zib")


def test_validation_catches_corrupt_file(tmp_path):
    entry = _pair(tmp_path, np.ones((6, 8, 8), np.float32), label_volume())
    raw = Path(entry["image"]).read_bytes()
    Path(entry["image"]).write_bytes(raw[: len(raw) // 2])  # truncated download
    with pytest.raises(DatasetError, match=r"img.nii.gz: cannot be read"):
        validate_entries([entry], "oai-zib")


def test_validation_catches_unknown_labels_and_nan(tmp_path):
    image = np.ones((6, 8, 8), np.float32)
    image[0, 0, 0] = np.nan
    label = label_volume()
    label[0, 0, 0] = 7
    entry = _pair(tmp_path, image, label)
    with pytest.raises(DatasetError) as err:
        validate_entries([entry], "oai-zib")
    assert "2 problem(s)" in str(err.value)
    assert "NaN" in str(err.value) and "holds values [7]" in str(err.value)


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="is empty"):
        prepare_datalist(str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="does not exist"):
        prepare_datalist(str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit, match="dataset error: dataset_dir .*nowhere does not exist"):
        prepare_datalist(str(tmp_path / "nowhere"), exit_on_error=True)
    with pytest.raises(DatasetError, match="no scans in"):
        scan_datalist(tmp_path / "empty")
    with pytest.raises(DatasetError, match="datalist is empty"):
        validate_entries([])


def test_scan_datalist_finds_files_and_dicom_folders(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", np.ones((6, 8, 8), np.float32))
    (tmp_path / "b.mhd").write_text("ObjectType = Image\n")
    series = tmp_path / "series_1"
    series.mkdir()
    (series / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    (tmp_path / "notes.txt").write_text("not a scan")
    with gzip.open(tmp_path / "c.nii.gz", "wb") as f:
        f.write(b"x")
    names = [Path(e["image"]).name for e in scan_datalist(tmp_path)]
    assert names == ["a.nii.gz", "b.mhd", "c.nii.gz", "series_1"]
    assert scan_datalist(tmp_path / "a.nii.gz") == [{"image": str(tmp_path / "a.nii.gz")}]


# ---------------------------------------------------------------- names, own outputs, split files, geometry


def test_case_name_keeps_years_and_strips_only_the_channel_suffix():
    assert case_name("knee_2019.nii.gz") == "knee_2019"  # a year is part of the name, not an nnU-Net channel
    assert case_name("knee_2019_0000.nii.gz") == "knee_2019"
    assert case_name("knee_0001.nii.gz") == "knee_0001"  # only channel 0 is a single-channel scan


def test_two_scans_with_one_output_name_are_refused(tmp_path):
    for name in ("knee.nii", "knee.nii.gz"):
        write_nifti(tmp_path / name, np.random.rand(6, 8, 8).astype(np.float32))
    with pytest.raises(DatasetError, match=r"map to the same case 'knee': knee.nii, knee.nii.gz; their outputs would"):
        scan_datalist(tmp_path)


def test_own_outputs_beside_their_scans_are_not_segmented_again(tmp_path, caplog):
    write_nifti(tmp_path / "knee.nii.gz", np.random.rand(6, 8, 8).astype(np.float32))
    write_nifti(tmp_path / "knee_seg.nii.gz", label_volume())
    write_nifti(tmp_path / "knee_thickness.nii.gz", np.random.rand(6, 8, 8).astype(np.float32))
    write_nifti(tmp_path / "other_seg.nii.gz", np.random.rand(6, 8, 8).astype(np.float32))  # no scan "other": a scan
    with caplog.at_level("WARNING"):
        names = [Path(e["image"]).name for e in scan_datalist(tmp_path)]
    assert names == ["knee.nii.gz", "other_seg.nii.gz"]
    assert "skipped 2 file(s) that look like this bundle's outputs" in caplog.text


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "split_file .*missing.json does not exist"),
        ("{not json", "split_file .*split.json cannot be read as JSON \\(JSONDecodeError"),
        ('["a_001"]', "must be a JSON object with subject-id lists under \\['training', 'validation', 'test'\\]"),
    ],
)
def test_bad_split_file_is_a_dataset_error(tmp_path, content, expected):
    root = make_cm_layout(tmp_path / "data")
    split = tmp_path / ("missing.json" if content is None else "split.json")
    if content is not None:
        split.write_text(content)
    with pytest.raises(DatasetError, match=expected):
        prepare_datalist(str(root), split_file=str(split), validate=False)
    with pytest.raises(SystemExit, match="dataset error: split_file"):
        prepare_datalist(str(root), split_file=str(split), validate=False, exit_on_error=True)


def test_unknown_label_preset_is_one_error_before_any_file_is_read(tmp_path):
    with pytest.raises(DatasetError, match="^unknown label_preset 'oaizib'; choose one of") as err:
        prepare_datalist(str(tmp_path / "does-not-matter"), label_preset="oaizib")
    assert "problem(s)" not in str(err.value)


def test_singular_affine_is_named(tmp_path):
    path = tmp_path / "flat.nii.gz"
    header = nib.Nifti1Header()
    header.set_sform(np.diag([0.7, 0.5, 0.0, 1.0]), code=1)  # a zero spacing, as a damaged header has
    header["pixdim"][1:4] = [0.7, 0.5, 0.0]
    nib.save(nib.Nifti1Image(np.random.rand(6, 8, 8).astype(np.float32), None, header), str(path))
    with pytest.raises(DatasetError, match=r"flat.nii.gz: its voxel-to-world matrix \(affine\) is singular"):
        validate_entries([{"image": str(path)}])


def test_a_file_as_dataset_dir_is_named(tmp_path):
    path = write_nifti(tmp_path / "knee.nii.gz", np.random.rand(6, 8, 8).astype(np.float32))
    with pytest.raises(DatasetError, match=r"^dataset_dir .*knee.nii.gz is a file; point dataset_dir at the folder"):
        prepare_datalist(str(path), phantoms=None)


def test_committed_splits_cover_the_oai_label_maps(oai_label_files):
    """configs/splits: the benchmark's split and the six cross-validation folds assign every subject of the 48 real
    OAI label maps, both visits together, and the folds test each of the 24 subjects exactly once."""
    subjects = {subject_id(p.name) for p in oai_label_files}
    splits_dir = Path(__file__).resolve().parents[1] / "configs" / "splits"
    fixed = json.loads((splits_dir / "oai_labels.json").read_text())
    assert sorted(s for k in ("training", "validation", "test") for s in fixed[k]) == sorted(subjects)
    tested = []
    for fold in range(6):
        spec = json.loads((splits_dir / f"oai_labels_cv6_fold{fold}.json").read_text())
        assert sorted(s for k in ("training", "validation", "test") for s in spec[k]) == sorted(subjects)
        tested += spec["test"]
    assert sorted(tested) == sorted(subjects)


def test_training_refuses_a_datalist_without_validation_cases(tmp_path):
    """Two subjects at num_val 0.2 leave none for validation: a training would end without models/model.pt, so the
    training datalist (require_validation) is refused with the fix in the message; evaluation's is not."""
    for case in ("k1", "k2"):
        write_nifti(tmp_path / "images" / f"{case}.nii.gz", np.random.default_rng(0).random((6, 8, 8), np.float32))
        write_nifti(tmp_path / "labels" / f"{case}.nii.gz", label_volume())
    with pytest.raises(DatasetError, match=r"no validation cases: 2 training subject\(s\) .* --datalist#num_val 1"):
        prepare_datalist(str(tmp_path), num_val=0.2, require_validation=True)
    assert len(prepare_datalist(str(tmp_path), num_val=0.2)["training"]) == 2
    assert len(prepare_datalist(str(tmp_path), num_val=1, require_validation=True)["validation"]) == 1
