"""Removal of small stray pieces of a predicted class (scripts.components), on hand-built label maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from scripts.components import RemoveSmallComponents, RemoveSmallComponentsd, remove_small_components

SPACING = (0.7, 0.3646, 0.3646)  # OAI: one voxel is 0.0930 mm^3


def _label_map() -> torch.Tensor:
    lab = torch.zeros(1, 20, 30, 30)
    lab[0, 2:10, 2:20, 2:20] = 1  # 2,592 voxels = 241 mm^3
    lab[0, 15, 25, 25] = 1  # one voxel, far away
    lab[0, 12:14, 5:7, 5:7] = 2  # 8 voxels = 0.74 mm^3
    lab[0, 12:18, 20:28, 2:10] = 2  # 384 voxels = 35.7 mm^3
    return lab


def _meta(t: torch.Tensor) -> MetaTensor:
    return MetaTensor(t, affine=torch.diag(torch.tensor([*SPACING, 1.0], dtype=torch.float64)))


def test_label_map_small_pieces_go_to_background_large_stay():
    lab = _label_map()
    out = remove_small_components(lab, 1.0, SPACING)
    assert out.shape == lab.shape and out.dtype == lab.dtype
    assert int((out == 1).sum()) == 2592 and out[0, 15, 25, 25] == 0
    assert int((out == 2).sum()) == 384 and not out[0, 12:14, 5:7, 5:7].any()
    assert torch.equal(lab, _label_map()), "the input was modified"
    clean = remove_small_components(out, 1.0, SPACING)
    assert clean is out, "nothing to remove, yet the volume was copied"


def test_threshold_is_a_volume_in_mm3_from_the_anisotropic_spacing():
    lab = _label_map()
    voxel = float(np.prod(SPACING))
    # the 384-voxel piece is 35.7 mm^3: kept just below its volume, removed just above
    assert int((remove_small_components(lab, 384 * voxel * 0.99, SPACING) == 2).sum()) == 384
    assert int((remove_small_components(lab, 384 * voxel * 1.01, SPACING) == 2).sum()) == 0
    # at 1 mm isotropic the same 8 voxels are 8 mm^3 and survive a 5 mm^3 threshold
    assert int((remove_small_components(lab, 5.0, (1.0, 1.0, 1.0)) == 2).sum()) == 392


def test_one_hot_removed_voxels_move_to_background_channel():
    lab = _label_map().long()
    one_hot = torch.nn.functional.one_hot(lab[0], 3).permute(3, 0, 1, 2).float()
    out = remove_small_components(one_hot, 1.0, SPACING)
    assert torch.equal(out.sum(0), torch.ones(20, 30, 30)), "no longer one-hot"
    expected = remove_small_components(lab, 1.0, SPACING)[0]
    assert torch.equal(out.argmax(0), expected)


def test_connectivity_decides_whether_diagonal_voxels_are_one_piece():
    lab = torch.zeros(1, 5, 5, 5)
    lab[0, 1, 1, 1] = 1
    lab[0, 2, 2, 2] = 1  # touches the first only at a corner
    # threshold 1.5 voxels at 1 mm: a 2-voxel piece stays, single voxels go
    assert int(remove_small_components(lab, 1.5, (1, 1, 1), connectivity=3).sum()) == 2
    assert int(remove_small_components(lab, 1.5, (1, 1, 1), connectivity=2).sum()) == 0
    assert int(remove_small_components(lab, 1.5, (1, 1, 1), connectivity=1).sum()) == 0


def test_dictionary_transform_reads_spacing_from_metatensor_and_keeps_metadata():
    data = {"pred": _meta(_label_map()), "other": torch.ones(1)}
    out = RemoveSmallComponentsd("pred", 1.0)(data)
    assert isinstance(out["pred"], MetaTensor)
    assert torch.equal(out["pred"].affine, data["pred"].affine)
    assert int((out["pred"] == 2).sum()) == 384 and out["other"] is data["other"]


def test_zero_threshold_is_identity_and_numpy_stays_numpy():
    lab = _label_map()
    assert RemoveSmallComponents(0.0)(lab) is lab  # off: no spacing needed, nothing copied
    out = remove_small_components(lab.numpy(), 1.0, SPACING)
    assert isinstance(out, np.ndarray) and int((out == 1).sum()) == 2592


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: RemoveSmallComponents(-1.0), "must be >= 0"),
        (lambda: RemoveSmallComponents(1.0)(_label_map()), "voxel size is unknown"),
        (lambda: remove_small_components(_label_map(), 1.0, (1.0, 1.0)), "3 positive voxel sizes"),
        (lambda: remove_small_components(_label_map(), 1.0, SPACING, connectivity=4), "between 1 and 3"),
        (lambda: remove_small_components(torch.zeros(5), 1.0, SPACING), "channel-first"),
        (lambda: remove_small_components(_label_map() * 1000, 1.0, SPACING), "expected a label map"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _reference(lab: np.ndarray, min_voxels: float) -> np.ndarray:
    """Brute force: label each class over the whole volume, drop the pieces below `min_voxels`."""
    from scipy import ndimage

    out = lab.copy()
    for value in range(1, int(lab.max()) + 1):
        labelled, _ = ndimage.label(lab[0] == value, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(labelled.ravel())
        small = sizes < min_voxels
        small[0] = False
        out[0][small[labelled]] = 0
    return out


def test_a_small_piece_inside_a_large_piece_box_goes_alone():
    lab = np.zeros((1, 12, 12, 12), np.uint8)
    lab[0, 1:10, 1:3, 1:10] = 1  # an L: a floor ...
    lab[0, 1:10, 1:10, 1:3] = 1  # ... and a wall; their box holds the empty corner below
    lab[0, 5, 7, 7] = 1  # a single voxel inside the L's box, touching nothing
    out = remove_small_components(lab, 2.0, (1, 1, 1))
    assert out[0, 5, 7, 7] == 0
    assert int(out.sum()) == int(lab.sum()) - 1, "voxels of the large piece in the small piece's region were removed"


@pytest.mark.parametrize("seed", range(4))
def test_matches_a_whole_volume_brute_force_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    lab = (rng.random((1, 16, 18, 20)) < 0.12).astype(np.uint8) * rng.integers(1, 4, (1, 16, 18, 20)).astype(np.uint8)
    lab[0, 3:9, 4:12, 5:15] = 2  # one large piece among the random specks
    for min_voxels in (2, 5, 40):
        np.testing.assert_array_equal(remove_small_components(lab, min_voxels, (1, 1, 1)), _reference(lab, min_voxels))


def test_speed_experiment_times_maps_and_checks_what_it_removes(tmp_path, capsys):
    import json

    import nibabel as nib

    from scripts.experiments.components_speed import main

    for i in range(2):
        lab = np.zeros((24, 40, 40), np.uint8)
        lab[4:12, 5:30, 5:30] = 1
        lab[14:18, 5:30, 5:30] = 2
        lab[20, 35, 35] = 2  # the map's own tiny piece, removed as well
        nib.save(nib.Nifti1Image(lab, np.diag([0.7, 0.3646, 0.3646, 1.0])), str(tmp_path / f"case{i}.nii.gz"))
    main(str(tmp_path), preset="cartilage", every=1, strays=3, repeats=1, output=str(tmp_path / "out.json"))
    result = json.loads((tmp_path / "out.json").read_text())
    assert [row["maps"] for row in result["rows"]] == [2, 2]
    assert all(0 < row["median_s"] <= row["max_s"] for row in result["rows"])
    assert "with 3 far strays" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no NIfTI label maps"):
        main(str(tmp_path / "empty"))
