"""`python -m scripts.phantom OUTPUT_DIR ...`: the phantom generator's command line (help: `--help`)."""

from scripts.cli import run_command
from scripts.phantom.dataset import main

if __name__ == "__main__":
    run_command(main, "scripts.phantom")
