"""`python -m scripts.quantify LABELMAP... --output CSV`: cartilage measurements per scan (help: `--help`)."""

import fire

from scripts.quantify.cli import main

if __name__ == "__main__":
    fire.Fire(main, name="scripts.quantify")
