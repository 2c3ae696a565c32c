"""`python -m scripts.phantom OUTPUT_DIR ...`: the phantom generator's command line (help: `--help`)."""

import fire

from scripts.phantom.dataset import main

if __name__ == "__main__":
    fire.Fire(main, name="scripts.phantom")
