"""`python -m scripts.quantify LABELMAP... --output CSV`: cartilage measurements per scan (help: `--help`)."""

from scripts.cli import run_command
from scripts.quantify.cli import main

if __name__ == "__main__":
    run_command(main, "scripts.quantify")
