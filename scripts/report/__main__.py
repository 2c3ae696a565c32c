"""`python -m scripts.report curves|table|seeds|dump_slices|overlays`: the figures and tables of a comparison."""

from scripts.cli import run_command
from scripts.report import curves, dump_slices, overlays, seeds, table

if __name__ == "__main__":
    run_command(
        {"curves": curves, "table": table, "seeds": seeds, "dump_slices": dump_slices, "overlays": overlays},
        "scripts.report",
    )
