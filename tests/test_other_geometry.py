"""The other-scanner-geometry stand-in: files in the asked geometry and orientation, and an exact comparison."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from scripts.experiments import other_geometry


def _label_map(path, shape=(20, 32, 32), spacing=(0.7, 0.4, 0.4)):
    label = np.zeros(shape, np.uint16)
    label[4:16, 4:14, 6:26] = 1  # femoral bone
    label[4:16, 14:16, 6:26] = 2  # femoral cartilage
    label[4:16, 17:19, 6:26] = 4  # tibial cartilage
    label[4:16, 19:28, 6:26] = 3  # tibial bone
    nib.save(nib.Nifti1Image(label, np.diag([*spacing, 1.0])), str(path))
    return label


def test_make_writes_the_target_geometry_and_orientation(tmp_path):
    src = tmp_path / "9000001_00m.nii.gz"
    _label_map(src)
    paths = other_geometry.make(
        str(src), str(tmp_path / "out"), spacing=(1.4, 0.5, 0.5), shape=(10, 24, 24), axcodes="PIL", seed=1
    )
    image, truth = nib.load(paths["image"]), nib.load(paths["truth"])
    for img in (image, truth):
        assert nib.aff2axcodes(img.affine) == ("P", "I", "L")
        assert img.shape == (24, 24, 10)
        assert np.allclose(img.header.get_zooms(), (0.5, 0.5, 1.4))
    values = np.unique(np.asarray(truth.dataobj))
    assert set(values.tolist()) == {0, 1, 2}  # oai-labels codes 2 and 4 became 1 and 2
    data = np.asarray(image.dataobj)
    assert data.dtype == np.float32 and np.isfinite(data).all() and data.std() > 0
    with pytest.raises(FileExistsError):  # never replaces an earlier output
        other_geometry.make(str(src), str(tmp_path / "out"), spacing=(1.4, 0.5, 0.5), shape=(10, 24, 24))


def test_compare_dice_and_volumes_by_hand(tmp_path):
    affine = np.diag([0.5, 0.5, 2.0, 1.0])  # 0.5 mm³ per voxel
    truth = np.zeros((10, 10, 4), np.uint8)
    pred = np.zeros_like(truth)
    truth[0:4, 0:5, 0] = 1  # 20 voxels
    pred[0:4, 0:4, 0] = 1  # 16 voxels, all inside: Dice 32/36
    truth[5:7, 0:5, 1] = 2  # 10 voxels
    pred[5:7, 0:5, 2] = 2  # 10 voxels, none overlapping: Dice 0
    nib.save(nib.Nifti1Image(truth, affine), str(tmp_path / "t.nii.gz"))
    nib.save(nib.Nifti1Image(pred, affine), str(tmp_path / "p.nii.gz"))
    out = tmp_path / "c.json"
    r = other_geometry.compare(str(tmp_path / "p.nii.gz"), str(tmp_path / "t.nii.gz"), output=str(out))
    assert r["femoral cartilage"]["dice"] == pytest.approx(32 / 36)
    assert r["femoral cartilage"]["volume_pred_mm3"] == pytest.approx(8.0)
    assert r["femoral cartilage"]["volume_error_pct"] == pytest.approx(-20.0)
    assert r["tibial cartilage"]["dice"] == 0.0
    assert out.exists()
    nib.save(nib.Nifti1Image(pred, np.diag([0.5, 0.5, 1.0, 1.0])), str(tmp_path / "q.nii.gz"))
    with pytest.raises(ValueError, match="differ in geometry"):
        other_geometry.compare(str(tmp_path / "q.nii.gz"), str(tmp_path / "t.nii.gz"))
