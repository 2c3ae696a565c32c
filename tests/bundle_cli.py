"""Command-line overrides that shrink the bundle's training to CPU-test size, shared by the end-to-end tests."""

from __future__ import annotations

#: a tiny network on tiny phantoms at their own spacing, no loader workers
TINY_MODEL = {
    "network_def#features": "[8,16,32,64,128]",
    "network_def#reference_size": "64",
    "inplane_spacing": "-1",
    "num_workers": "0",
}
#: one short epoch with a validation, nothing cached (TINY_MODEL included)
TINY_EPOCH = {
    **TINY_MODEL,
    "cache_rate": "0",
    "max_epochs": "1",
    "slices_per_epoch": "16",
    "batch_size": "4",
    "val_interval": "1",
    "sw_batch_size": "8",
}


def as_cli(overrides: dict[str, str]) -> list[str]:
    """`{"a#b": "1"}` -> `["--a#b", "1"]`, in insertion order."""
    return [arg for key, value in overrides.items() for arg in (f"--{key}", value)]
