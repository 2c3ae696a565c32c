"""`python -m scripts.datalist build|check|write_split`: write a datalist, check a dataset, write subject splits."""

import logging

import fire

from scripts.datalist.cli import build, check, write_split

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fire.Fire({"build": build, "check": check, "write_split": write_split}, name="scripts.datalist")
