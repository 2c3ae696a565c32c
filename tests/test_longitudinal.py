"""Change between visits (scripts.longitudinal): pairing, hand-computed changes, flags that keep pairs out of the
summary, the CLI end to end from quantify's own CSV, and one-paragraph errors on bad input."""

from __future__ import annotations

import csv
import math

import fire
import nibabel as nib
import numpy as np
import pytest

from scripts import quantify
from scripts.longitudinal import (
    CHANGE_COLUMNS,
    change_csv_text,
    change_rows,
    main,
    read_measurements,
    summarise,
    summary_markdown,
)
from scripts.quantify import CSV_COLUMNS, CompartmentRow, csv_text

SPACING = (0.7, 0.3646, 0.3646)


def _row(
    scan, compartment, volume, mean, median=None, laterality="right", voxel="0.7x0.3646x0.3646", flags="", dice=""
):
    return CompartmentRow(
        scan=scan,
        compartment=compartment,
        laterality=laterality,
        laterality_source="affine",
        volume_mm3=volume,
        surface_area_mm2=100.0,
        thickness_mean_mm=mean,
        thickness_sd_mm=0.1,
        thickness_median_mm=mean if median is None else median,
        thickness_p95_mm=mean + 1,
        thickness_max_mm=mean + 2,
        n_components=1,
        n_large_components=1,
        voxel_size_mm=voxel,
        ml_split="",
        flags=flags,
        expected_dice=dice,
    )


def _csv(tmp_path, rows, name="m.csv"):
    path = tmp_path / name
    path.write_text(csv_text(rows))
    return path


def test_changes_are_followup_minus_baseline_and_the_summary_is_hand_computed(tmp_path):
    rows = [
        _row("s1_00m", "femoral", 1000.0, 2.0, 1.9),
        _row("s1_24m", "femoral", 900.0, 1.8, 1.6),
        _row("s2_00m", "femoral", 2000.0, 1.5),
        _row("s2_24m", "femoral", 2100.0, 1.6),
        _row("s3_00m", "femoral", 1000.0, 2.0),
        _row("s3_24m", "femoral", 800.0, 1.7),
    ]
    changes = change_rows(read_measurements([_csv(tmp_path, rows)]))
    assert [(c.subject, c.baseline_visit, c.followup_visit) for c in changes] == [
        ("s1", "00m", "24m"),
        ("s2", "00m", "24m"),
        ("s3", "00m", "24m"),
    ]
    s1 = changes[0]
    assert s1.thickness_mean_change_mm == pytest.approx(-0.2)
    assert s1.thickness_median_change_mm == pytest.approx(-0.3)
    assert s1.volume_change_mm3 == pytest.approx(-100.0)
    assert s1.volume_change_percent == pytest.approx(-10.0)
    assert changes[1].volume_change_percent == pytest.approx(5.0)
    (summary,) = summarise(changes)
    dt = np.array([-0.2, 0.1, -0.3])
    assert summary.n == 3 and summary.n_flagged == 0
    assert summary.thickness_change_mean_mm == pytest.approx(dt.mean())
    assert summary.thickness_change_sd_mm == pytest.approx(dt.std(ddof=1))
    assert summary.srm == pytest.approx(dt.mean() / dt.std(ddof=1))
    assert (summary.thickness_change_min_mm, summary.thickness_change_max_mm) == pytest.approx((-0.3, 0.1))
    assert summary.n_thinned == 2 and summary.n_lost_volume == 2
    assert summary.volume_change_mean_percent == pytest.approx(np.mean([-10.0, 5.0, -20.0]))


def test_every_followup_is_compared_with_the_first_visit_in_numeric_order(tmp_path):
    rows = [
        _row("k_96m", "tibial", 700.0, 1.4),
        _row("k_00m", "tibial", 1000.0, 2.0),
        _row("k_12m", "tibial", 900, 1.9),
    ]
    changes = change_rows(read_measurements([_csv(tmp_path, rows)]))
    assert [(c.baseline_visit, c.followup_visit) for c in changes] == [("00m", "12m"), ("00m", "96m")]
    assert [round(c.thickness_mean_change_mm, 6) for c in changes] == [-0.1, -0.6]


def test_each_followup_visit_is_summarised_apart_unless_pooled(tmp_path):
    """Changes over 12 and 24 months are not one quantity: one summary per follow-up visit, in visit order."""
    rows = [_row(f"s{i}_00m", "femoral", 1000.0, 2.0) for i in (1, 2)]
    rows += [_row("s1_24m", "femoral", 900.0, 1.7), _row("s2_24m", "femoral", 950.0, 1.8)]
    rows += [_row("s1_12m", "femoral", 960.0, 1.9), _row("s2_12m", "femoral", 1000.0, 2.0)]
    changes = change_rows(read_measurements([_csv(tmp_path, rows)]))
    by_visit = summarise(changes, visit_key=lambda v: int(v[:2]))
    assert [(s.followup_visit, s.n) for s in by_visit] == [("12m", 2), ("24m", 2)]
    assert [round(s.thickness_change_mean_mm, 6) for s in by_visit] == [-0.05, -0.25]
    (pooled,) = summarise(changes, pool_visits=True)
    assert (pooled.followup_visit, pooled.n) == ("all", 4)
    assert pooled.thickness_change_mean_mm == pytest.approx(np.mean([-0.1, 0.0, -0.3, -0.2]))
    out, md = tmp_path / "change.csv", tmp_path / "change.md"
    main(str(tmp_path / "m.csv"), output=str(out), markdown=str(md))
    assert [line.split(" | ")[1] for line in md.read_text().splitlines() if line.startswith("| femoral |")] == [
        "12m",
        "24m",
    ]
    main(str(tmp_path / "m.csv"), output=str(out), markdown=str(md), pool_visits=True, overwrite=True)
    assert [line.split(" | ")[1] for line in md.read_text().splitlines() if line.startswith("| femoral |")] == ["all"]


def test_visit_order_for_labels_without_numbers(tmp_path):
    rows = [_row("k_FU", "femoral", 900.0, 1.8), _row("k_BL", "femoral", 1000.0, 2.0)]
    path = _csv(tmp_path, rows)
    with pytest.raises(ValueError, match=r"BL, FU hold no number .* --visit_order BL,FU"):
        change_rows(read_measurements([path]))
    (change,) = change_rows(read_measurements([path]), visit_order=["BL", "FU"])
    assert (change.baseline_visit, change.followup_visit) == ("BL", "FU")
    with pytest.raises(ValueError, match=r"visit\(s\) FU are not in --visit_order BL"):
        change_rows(read_measurements([path]), visit_order=["BL"])


def test_flagged_pairs_are_written_but_left_out_of_the_summary(tmp_path):
    rows = [
        _row("a_00m", "femoral", 1000.0, 2.0),
        _row("a_24m", "femoral", 900.0, 1.8),
        _row("b_00m", "femoral", 1000.0, 2.0),
        _row("b_24m", "femoral", 500.0, 1.0, laterality="left"),  # the other knee: not a change
        _row("c_00m", "femoral", 1000.0, 2.0),
        _row("c_24m", "femoral", 950.0, 1.9, voxel="1.5x0.3125x0.3125"),  # another protocol
        _row("d_00m", "femoral", 1000.0, 2.0),
        _row("d_24m", "femoral", 0.0, math.nan, flags="empty"),
    ]
    changes = {c.subject: c for c in change_rows(read_measurements([_csv(tmp_path, rows)]))}
    assert changes["a"].flags == ""
    assert changes["b"].flags == "laterality_differs" and changes["b"].laterality == "right/left"
    assert changes["c"].flags == "voxel_size_differs"
    assert changes["d"].flags == "followup:empty" and math.isnan(changes["d"].thickness_mean_change_mm)
    (summary,) = summarise(list(changes.values()))
    assert (summary.n, summary.n_flagged) == (1, 3)
    assert summary.thickness_change_mean_mm == pytest.approx(-0.2)
    assert math.isnan(summary.srm)  # one pair has no spread
    table = summary_markdown(list(changes.values()), [summary])
    assert "| femoral | 24m | 1 | 3 | -0.20 ± nan [-0.20, -0.20] | 1 / 1 |" in table
    assert "femoral: laterality_differs" in table


def test_an_unknown_side_flags_only_the_side_compartments(tmp_path):
    """laterality_unknown is a flag of the whole scan, but only the medial / lateral split depends on the side: the
    whole femur and tibia of a knee whose side is unknown (e.g. a centred phantom) still give a usable change."""
    unknown = "laterality_unknown"
    rows = [
        _row("a_00m", "femoral", 1000.0, 2.0, laterality="unknown", flags=unknown),
        _row("a_00m", "tibial_plate_A", 400.0, 2.0, laterality="unknown", flags=unknown),
        _row("a_24m", "femoral", 900.0, 1.8, laterality="unknown", flags=unknown),
        _row("a_24m", "tibial_plate_A", 380.0, 1.9, laterality="unknown", flags=f"{unknown};thick_over_7mm"),
        _row("b_00m", "femoral", 1000.0, 2.0, laterality="unknown", flags=unknown),
        _row("b_24m", "femoral", 800.0, 1.6, laterality="unknown", flags=f"{unknown};fragmented"),
    ]
    changes = {(c.subject, c.compartment): c for c in change_rows(read_measurements([_csv(tmp_path, rows)]))}
    assert changes[("a", "femoral")].flags == ""  # usable
    assert changes[("a", "tibial_plate_A")].flags == f"baseline:{unknown};followup:{unknown};thick_over_7mm"
    assert changes[("b", "femoral")].flags == "followup:fragmented"  # other flags still count
    femoral = next(s for s in summarise(list(changes.values())) if s.compartment == "femoral")
    assert (femoral.n, femoral.n_flagged) == (1, 1)


def test_subjects_with_one_visit_are_logged_and_a_run_without_pairs_is_an_error(tmp_path, caplog):
    rows = [_row("a_00m", "femoral", 1000.0, 2.0), _row("a_24m", "femoral", 900.0, 1.8)]
    rows.append(_row("lonely_00m", "femoral", 1000.0, 2.0))
    with caplog.at_level("WARNING"):
        changes = change_rows(read_measurements([_csv(tmp_path, rows)]))
    assert [c.subject for c in changes] == ["a"]
    assert "1 subject(s) seen at one visit only, no change to measure: lonely" in caplog.text
    with pytest.raises(ValueError, match=r"no subject has two visits among 2 subject\(s\)"):
        change_rows(read_measurements([_csv(tmp_path, [rows[0], rows[2]], "single.csv")]))


def test_change_csv_has_units_in_the_header_and_one_row_per_pair(tmp_path):
    rows = [
        _row(f"s{i}_{v}", c, 1000.0 - 50 * j, 2.0 - 0.1 * j)
        for i in (1, 2)
        for j, v in enumerate(("00m", "48m"))
        for c in ("femoral", "tibial")
    ]
    text = change_csv_text(change_rows(read_measurements([_csv(tmp_path, rows)])))
    table = list(csv.reader(text.splitlines()))
    assert tuple(table[0]) == CHANGE_COLUMNS
    assert {"volume_change_mm3", "volume_change_percent", "thickness_mean_change_mm"} <= set(table[0])
    assert len(table) == 1 + 2 * 2
    assert table[1][CHANGE_COLUMNS.index("thickness_mean_change_mm")] == "-0.1000"
    assert table[1][CHANGE_COLUMNS.index("volume_change_percent")] == "-5.0000"


def test_scan_pattern_picks_subject_and_visit(tmp_path):
    rows = [_row("V00-knee7", "femoral", 1000.0, 2.0), _row("V03-knee7", "femoral", 960.0, 1.9)]
    path = _csv(tmp_path, rows)
    with pytest.raises(ValueError, match=r"2 scan name\(s\) do not match --scan_pattern .*: V00-knee7, V03-knee7"):
        read_measurements([path])
    (change,) = change_rows(read_measurements([path], r"(?P<visit>V\d+)-(?P<subject>.+)"))
    assert (change.subject, change.baseline_visit, change.followup_visit) == ("knee7", "V00", "V03")
    with pytest.raises(ValueError, match="needs the named groups"):
        read_measurements([path], r"(.+)-(.+)")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        ("scan,compartment\nx_00m,femoral\n", "not a quantify measurement CSV, columns laterality, volume_mm3"),
        (",".join(CSV_COLUMNS) + "\n", "no rows under the header"),
    ],
)
def test_bad_measurement_files_are_named(tmp_path, content, expected):
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=expected) as err:
        read_measurements([path])
    assert str(path) in str(err.value)


def test_a_non_number_and_a_duplicate_row_are_named(tmp_path):
    text = csv_text([_row("a_00m", "femoral", 1000.0, 2.0)]).replace("1000.0000", "lots")
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"m.csv \(scan a_00m, femoral\): column volume_mm3 holds 'lots'"):
        read_measurements([path])
    same = _csv(tmp_path, [_row("a_00m", "femoral", 1000.0, 2.0)], "one.csv")
    with pytest.raises(ValueError, match="scan a_00m has two femoral rows"):
        read_measurements([same, same])


def _knee(femoral_voxels: int) -> np.ndarray:
    labels = np.zeros((44, 60, 56), np.uint8)
    labels[4:40, 8:52, 36 : 36 + femoral_voxels] = 1  # femoral layer, thickness along axis 2
    labels[3:19, 10:50, 20:26] = 2
    labels[26:38, 14:46, 20:26] = 2
    return labels


def test_cli_from_quantify_csv_to_change_with_known_thinning(tmp_path):
    """6 -> 5 voxels of 0.3646 mm femoral cartilage: -0.3646 mm and -1/6 of the volume; the tibia is unchanged."""
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (60.0, -40.0, -30.0)
    for name, voxels in (("knee1_00m", 6), ("knee1_24m", 5)):
        nib.save(nib.Nifti1Image(_knee(voxels), affine), str(tmp_path / f"{name}.nii.gz"))
    measured = tmp_path / "measurements.csv"
    quantify.main(str(tmp_path), output=str(measured))
    out, md = tmp_path / "change.csv", tmp_path / "change.md"
    fire.Fire(main, command=[str(measured), "--output", str(out), "--markdown", str(md)])
    table = {r["compartment"]: r for r in csv.DictReader(out.open())}
    assert set(table) == {"femoral", "tibial", "tibial_medial", "tibial_lateral"}
    femoral = table["femoral"]
    assert (femoral["subject"], femoral["baseline_visit"], femoral["followup_visit"]) == ("knee1", "00m", "24m")
    assert float(femoral["thickness_mean_change_mm"]) == pytest.approx(-SPACING[2], abs=0.02)
    assert float(femoral["volume_change_percent"]) == pytest.approx(-100 / 6, abs=1e-3)
    assert float(table["tibial"]["thickness_mean_change_mm"]) == 0.0
    assert float(table["tibial"]["volume_change_mm3"]) == 0.0
    pair_line = next(line for line in md.read_text().splitlines() if line.startswith("| knee1 |"))
    assert pair_line.startswith("| knee1 | 00m | 24m | 2.19 | 1.82 | -0.3")  # 6 and 5 voxels of 0.3646 mm
    assert pair_line.endswith("| 2.19 | 2.19 | +0.00 | -16.7 | +0.0 |  |")
    with pytest.raises(SystemExit, match="already exists; pass --overwrite True"):
        main(str(measured), output=str(out))
    with pytest.raises(SystemExit, match="is one of the input CSVs"):
        main(str(measured), output=str(measured), overwrite=True)
    with pytest.raises(SystemExit, match="--output is required"):
        main(str(measured))
    with pytest.raises(SystemExit, match="'overwrite' is a switch"):
        main(str(measured), output=str(out), overwrite="maybe")
    main(str(measured), output=str(out), overwrite=True)  # an explicit overwrite replaces it


def test_expected_dice_of_predictions_is_carried_and_can_gate_the_summary(tmp_path):
    """inference's measurements.csv has an expected Dice per row: the pair keeps the lower one, and
    --min_expected_dice leaves out pairs with a doubtful segmentation (or none to judge by)."""
    rows = [
        _row("a_00m", "femoral", 1000.0, 2.0, dice="0.9100"),
        _row("a_24m", "femoral", 900.0, 1.8, dice="0.8800"),
        _row("b_00m", "femoral", 1000.0, 2.0, dice="0.9000"),
        _row("b_24m", "femoral", 700.0, 1.4, dice="0.6200"),
        _row("c_00m", "femoral", 1000.0, 2.0, dice="0.9000"),
        _row("c_24m", "femoral", 950.0, 1.9),  # a manual label map: no expected Dice
    ]
    path = _csv(tmp_path, rows)
    plain = {c.subject: c for c in change_rows(read_measurements([path]))}
    assert plain["a"].expected_dice_min == pytest.approx(0.88)
    assert plain["b"].expected_dice_min == pytest.approx(0.62)
    assert math.isnan(plain["c"].expected_dice_min)
    assert all(c.flags == "" for c in plain.values())
    gated = {c.subject: c for c in change_rows(read_measurements([path]), min_expected_dice=0.8)}
    assert (gated["a"].flags, gated["b"].flags, gated["c"].flags) == ("", "low_expected_dice", "low_expected_dice")
    (summary,) = summarise(list(gated.values()))
    assert (summary.n, summary.n_flagged) == (1, 2)
    text = change_csv_text(list(plain.values()))
    column = CHANGE_COLUMNS.index("expected_dice_min")
    assert [line[column] for line in csv.reader(text.splitlines()[1:])] == ["0.8800", "0.6200", ""]
    out = tmp_path / "change.csv"
    with pytest.raises(SystemExit, match="--min_expected_dice 1.5 must be a number from 0 to 1"):
        main(str(path), output=str(out), min_expected_dice=1.5)
    main(str(path), output=str(out), min_expected_dice=0.8)
    assert [r["flags"] for r in csv.DictReader(out.open())] == ["", "low_expected_dice", "low_expected_dice"]
