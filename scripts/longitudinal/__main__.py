"""`python -m scripts.longitudinal MEASUREMENTS.csv... --output change.csv`: cartilage change between visits."""

import fire

from scripts.longitudinal.cli import main

if __name__ == "__main__":
    fire.Fire(main, name="scripts.longitudinal")
