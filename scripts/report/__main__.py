"""`python -m scripts.report curves|table|seeds|dump_slices|overlays`: the figures and tables of a comparison."""

import fire

from scripts.report import curves, dump_slices, overlays, seeds, table

if __name__ == "__main__":
    fire.Fire(
        {"curves": curves, "table": table, "seeds": seeds, "dump_slices": dump_slices, "overlays": overlays},
        name="scripts.report",
    )
