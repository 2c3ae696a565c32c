"""`python -m scripts.agreement AUTOMATED.csv REFERENCE.csv --output agreement.csv` (help: `--help`)."""

import fire

from scripts.agreement.cli import main

if __name__ == "__main__":
    fire.Fire(main, name="scripts.agreement")
