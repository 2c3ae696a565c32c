"""Agreement of automated with reference measurements (scripts.agreement): statistics against hand-computed values,
pairing rules and their errors, the command line and its files."""

from __future__ import annotations

import csv
import math

import pytest

from scripts.agreement import (
    AgreementError,
    agreement_markdown,
    agreement_rows,
    agreement_stats,
    main,
    pair_measurements,
)
from scripts.agreement.cli import CHANGE_MEASURES

HEADER = "scan,compartment,laterality,volume_mm3,thickness_mean_mm,thickness_median_mm,flags"


def write_csv(path, rows):
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_statistics_against_hand_computed_values():
    """a = 1, 2, 4 against r = 1.5, 2, 3: d = -0.5, 0, +1. Bias 1/6; sd sqrt(7/12); Pearson r exactly 1 (r = a/2 +
    1 is linear in a), but Lin's CCC = 2 cov / (var a + var r + (mean a - mean r)^2) = (14/9) / (71/36) = 56/71:
    agreement, not association, is what CCC measures."""
    s = agreement_stats([1.0, 2.0, 4.0], [1.5, 2.0, 3.0])
    sd = math.sqrt(7 / 12)
    assert s["n"] == 3 and s["n_missing"] == 0
    assert s["reference_mean"] == pytest.approx(6.5 / 3) and s["automated_mean"] == pytest.approx(7 / 3)
    assert s["bias"] == pytest.approx(1 / 6)
    assert s["sd_difference"] == pytest.approx(sd)
    assert (s["loa_lower"], s["loa_upper"]) == pytest.approx((1 / 6 - 1.96 * sd, 1 / 6 + 1.96 * sd))
    assert s["bias_percent"] == pytest.approx((-100 / 3 + 0 + 100 / 3) / 3)
    assert s["mean_abs_difference"] == pytest.approx(0.5) and s["max_abs_difference"] == pytest.approx(1.0)
    assert s["pearson_r"] == pytest.approx(1.0)
    assert s["lin_ccc"] == pytest.approx(56 / 71)


def test_identical_measurements_agree_perfectly_and_missing_values_are_counted():
    s = agreement_stats([1.0, 2.0, 3.0, math.nan], [1.0, 2.0, 3.0, 2.5])
    assert s["n"] == 3 and s["n_missing"] == 1
    assert s["bias"] == 0 and s["sd_difference"] == 0 and s["lin_ccc"] == pytest.approx(1.0)
    few = agreement_stats([2.0, 3.0], [1.0, 1.0])
    assert math.isnan(few["pearson_r"])  # under 3 pairs (and a constant side): no correlation
    one = agreement_stats([2.0], [1.0])
    assert one["bias"] == 1.0 and math.isnan(one["sd_difference"]) and math.isnan(one["loa_upper"])
    none = agreement_stats([math.nan], [1.0])
    assert none["n"] == 0 and none["n_missing"] == 1 and math.isnan(none["bias"])
    with pytest.raises(ValueError, match="not paired"):
        agreement_stats([1.0, 2.0], [1.0])


def test_pairs_by_scan_and_compartment_in_table_order(tmp_path):
    auto = write_csv(
        tmp_path / "auto.csv",
        [
            "k1,tibial,right,110,2.1,2.0,",
            "k1,femoral,right,210,2.2,2.1,",
            "k2,femoral,left,190,,,empty",
            "k2,tibial,left,100,2.0,1.9,",
        ],
    )
    ref = write_csv(
        tmp_path / "ref.csv",
        ["k1,femoral,right,200,2.0,2.0,", "k1,tibial,right,100,2.0,2.0,", "k2,femoral,left,200,2.0,2.0,",
         "k2,tibial,left,100,2.0,2.0,", "k2,tibial_medial,left,50,2.0,2.0,"],
    )  # fmt: skip
    pairs = pair_measurements(auto, ref, ["volume_mm3", "thickness_mean_mm"])
    assert [(p.scan, p.compartment) for p in pairs] == [("k1", "femoral"), ("k1", "tibial"), ("k2", "femoral"),
                                                         ("k2", "tibial")]  # fmt: skip
    rows = {(r.compartment, r.measure): r for r in agreement_rows(pairs, ["volume_mm3", "thickness_mean_mm"])}
    assert [k for k in rows] == [("femoral", "volume_mm3"), ("femoral", "thickness_mean_mm"),
                                 ("tibial", "volume_mm3"), ("tibial", "thickness_mean_mm")]  # fmt: skip
    assert rows[("femoral", "volume_mm3")].bias == pytest.approx(0.0)  # +10 and -10
    assert rows[("femoral", "volume_mm3")].mean_abs_difference == pytest.approx(10.0)
    assert rows[("femoral", "thickness_mean_mm")].n == 1 and rows[("femoral", "thickness_mean_mm")].n_missing == 1
    assert rows[("tibial", "volume_mm3")].bias_percent == pytest.approx(5.0)  # +10 % and 0 %
    text = agreement_markdown(list(rows.values()), pairs)
    assert "| femoral | volume/mm³ | 2 | 200 | 200 | +0 | +0.0 |" in text
    assert "| femoral | mean thickness/mm | 1 (1 without a value) |" in text
    assert "| k2 | femoral | 200 / 190 / -10 | 2.000 / - / - | -; empty |" in text


def test_pairing_errors_name_the_file_and_the_scans(tmp_path):
    ref = write_csv(tmp_path / "ref.csv", ["k1,femoral,right,200,2,2,", "k2,femoral,right,200,2,2,"])
    auto = write_csv(tmp_path / "auto.csv", ["k1,femoral,right,200,2,2,", "k3,femoral,right,200,2,2,"])
    with pytest.raises(AgreementError, match=r"1 scan\(s\) only in the reference .*ref.csv: k2; 1 scan\(s\) only in "
                       r"the automated .*auto.csv: k3\. .*--common_only True"):  # fmt: skip
        pair_measurements(auto, ref, ["volume_mm3"])
    assert [p.scan for p in pair_measurements(auto, ref, ["volume_mm3"], common_only=True)] == ["k1"]
    with pytest.raises(AgreementError, match=r"missing.csv: no such file"):
        pair_measurements(tmp_path / "missing.csv", ref, ["volume_mm3"])
    twice = write_csv(tmp_path / "twice.csv", ["k1,femoral,right,200,2,2,", "k1,femoral,right,201,2,2,"])
    with pytest.raises(AgreementError, match=r"twice.csv: k1 has two femoral rows"):
        pair_measurements(twice, ref, ["volume_mm3"])
    with pytest.raises(AgreementError, match=r"auto.csv: .*columns surface_area_mm2 are missing"):
        pair_measurements(auto, ref, ["surface_area_mm2"])
    bad = write_csv(tmp_path / "bad.csv", ["k1,femoral,right,lots,2,2,", "k2,femoral,right,200,2,2,"])
    with pytest.raises(AgreementError, match=r"bad.csv \(k1, femoral\): column volume_mm3 holds 'lots'"):
        pair_measurements(bad, ref, ["volume_mm3"])
    other = write_csv(tmp_path / "other.csv", ["k1,tibial,right,200,2,2,", "k2,tibial,right,200,2,2,"])
    with pytest.raises(AgreementError, match="share no scan and compartment"):
        pair_measurements(other, ref, ["volume_mm3"])


def test_command_line_writes_csv_and_markdown_and_keeps_existing_files(tmp_path):
    ref = write_csv(tmp_path / "ref.csv", [f"k{i},femoral,right,{200 + i},2.{i},2.0," for i in range(4)])
    auto = write_csv(tmp_path / "auto.csv", [f"k{i},femoral,right,{210 + 2 * i},2.{i + 1},2.1," for i in range(4)])
    out, md = tmp_path / "agreement.csv", tmp_path / "agreement.md"
    assert main(str(auto), str(ref), output=str(out), markdown=str(md), measures="volume_mm3") == str(out)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1 and rows[0]["compartment"] == "femoral" and rows[0]["measure"] == "volume_mm3"
    assert float(rows[0]["bias"]) == pytest.approx(10 + 1.5) and float(rows[0]["pearson_r"]) == pytest.approx(1)
    assert "| k3 | femoral | 203 / 216 / +13 | -; - |" in md.read_text()
    with pytest.raises(SystemExit, match=r"agreement.csv already exists; pass --overwrite True"):
        main(str(auto), str(ref), output=str(out), measures="volume_mm3")
    with pytest.raises(SystemExit, match=r"ref.csv is one of the input CSVs"):
        main(str(auto), str(ref), output=str(ref), overwrite=True)
    with pytest.raises(SystemExit, match=r"--output is required"):
        main(str(auto), str(ref))
    with pytest.raises(SystemExit, match=r"--measures is empty"):
        main(str(auto), str(ref), output=str(tmp_path / "x.csv"), measures=" , ")


def test_evaluation_handler_refuses_unknown_measures_before_the_run(tmp_path):
    """A typo in `agreement_measures` stops the evaluation when the config is built, not after every case is scored;
    the column list is quantify's own."""
    from dataclasses import fields

    from scripts.agreement import AgreementReport
    from scripts.agreement.report import MEASURE_COLUMNS
    from scripts.quantify import CompartmentRow

    numeric = {f.name for f in fields(CompartmentRow) if f.type in ("float", float)}
    assert set(MEASURE_COLUMNS) == numeric
    with pytest.raises(AgreementError, match=r"thickness_mean not among the measurement columns volume_mm3"):
        AgreementReport(str(tmp_path), measures=["volume_mm3", "thickness_mean"])
    AgreementReport(str(tmp_path), measures=["thickness_mean"], enabled=False)  # off: nothing to check


def test_change_between_visits_is_compared_with_other_key_columns(tmp_path):
    """The endpoint of a longitudinal study is change: scripts.longitudinal's change CSVs of the automated and of the
    reference measurements, paired by subject, compartment and follow-up visit. Reference thinning -0.10 mm in both
    knees; automated -0.15 and -0.05: bias 0, mean absolute difference 0.05 mm."""
    from scripts.longitudinal import main as longitudinal

    ref = write_csv(
        tmp_path / "ref.csv",
        [
            "k1_00m,femoral,right,200,2.00,2.0,",
            "k1_24m,femoral,right,190,1.90,1.9,",
            "k2_00m,femoral,right,300,2.50,2.5,",
            "k2_24m,femoral,right,285,2.40,2.4,",
        ],
    )
    auto = write_csv(
        tmp_path / "auto.csv",
        [
            "k1_00m,femoral,right,205,2.05,2.0,",
            "k1_24m,femoral,right,190,1.90,1.9,",
            "k2_00m,femoral,right,290,2.45,2.5,",
            "k2_24m,femoral,right,280,2.40,2.4,",
        ],
    )
    for name, source in (("ref", ref), ("auto", auto)):
        longitudinal(str(source), output=str(tmp_path / f"change_{name}.csv"))
    md = tmp_path / "agreement.md"
    main(str(tmp_path / "change_auto.csv"), str(tmp_path / "change_ref.csv"), output=str(tmp_path / "agreement.csv"),
         markdown=str(md), measures="thickness_mean_change_mm", keys="subject,compartment,followup_visit")  # fmt: skip
    row = next(csv.DictReader((tmp_path / "agreement.csv").open()))
    assert (row["compartment"], row["measure"], row["n"]) == ("femoral", "thickness_mean_change_mm", "2")
    assert float(row["reference_mean"]) == pytest.approx(-0.10) and float(row["bias"]) == pytest.approx(0, abs=1e-9)
    assert float(row["mean_abs_difference"]) == pytest.approx(0.05)
    assert math.isnan(float(row["bias_percent"]))  # no percentage of a change, which can be 0 or of either sign
    text = md.read_text()
    assert "| femoral | change in mean thickness/mm | 2 | -0.100 | -0.100 | +0.000 | - |" in text
    assert "| subject followup_visit | compartment |" in text and "| k1 24m | femoral |" in text
    # keyed by follow-up visit, the change columns are the default measures (no --measures needed)
    main(str(tmp_path / "change_auto.csv"), str(tmp_path / "change_ref.csv"), output=str(tmp_path / "all.csv"),
         keys="subject,compartment,followup_visit")  # fmt: skip
    measured = [r["measure"] for r in csv.DictReader((tmp_path / "all.csv").open())]
    assert measured == [*CHANGE_MEASURES]
    with pytest.raises(SystemExit, match=r"--keys subject,followup_visit: name the columns .* compartment among them"):
        main(str(tmp_path / "change_auto.csv"), str(tmp_path / "change_ref.csv"), output=str(tmp_path / "x.csv"),
             keys="subject,followup_visit")  # fmt: skip
