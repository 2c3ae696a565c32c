"""`python -m scripts.longitudinal MEASUREMENTS.csv... --output change.csv`: cartilage change between visits."""

from scripts.cli import run_command
from scripts.longitudinal.cli import main

if __name__ == "__main__":
    run_command(main, "scripts.longitudinal")
