"""`python -m scripts.agreement AUTOMATED.csv REFERENCE.csv --output agreement.csv` (help: `--help`)."""

from scripts.agreement.cli import main
from scripts.cli import run_command

if __name__ == "__main__":
    run_command(main, "scripts.agreement")
