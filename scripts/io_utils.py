"""Atomic, non-clobbering output: a crash or a full disk never leaves a half-written file under its final name."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "check_report_outputs", "check_writable_target", "prepare_output_dir"]


def check_writable_target(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse to replace an existing file unless `overwrite` is set; return the target as a Path."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass --overwrite True to replace it")
    return target


def check_report_outputs(
    inputs: Sequence[object],
    output: object,
    markdown: object,
    overwrite: bool,
    what: str,
    error: type[ValueError] = ValueError,
) -> None:
    """Before a report command reads anything: `--output` given, `--markdown` another file, neither one of the input
    CSVs (never written over, not even with overwrite), and neither an existing file unless `overwrite`; else `error`
    with one sentence (`what` names the report, e.g. "change")."""
    if output is None:
        raise error(f"--output is required: name the {what} CSV to write, e.g. --output {what}.csv")
    targets = [Path(str(output))] + ([Path(str(markdown))] if markdown else [])  # str(): Fire may hand over a number
    if len({t.resolve() for t in targets}) < len(targets):
        raise error(f"--output and --markdown name the same file {output}")
    own = {Path(str(p)).resolve() for p in inputs}
    for target in targets:
        if target.resolve() in own:
            raise error(f"{target} is one of the input CSVs; write the {what} to another file")
        try:
            check_writable_target(target, overwrite)
        except FileExistsError as e:
            raise error(str(e)) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on error delete it.

    The temporary name keeps the full suffix (e.g. `.nii.gz`) so writers that pick a format by extension still work.
    """
    target = check_writable_target(path, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name.split('.')[0]}-", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600; give the final file the permissions a plain open() would
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """Write `text` to `path` atomically."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def prepare_output_dir(
    folder: str | os.PathLike, existing: Sequence[str] = (), overwrite: bool = False, what: str = "output_dir"
) -> bool:
    """Before any work: create `folder`, prove it can be written, and refuse (one paragraph, SystemExit) when it
    already holds any of the run-level files in `existing` from an earlier run and `overwrite` is off. Without this a
    read-only or mistyped folder fails after the first scan or epoch with a long traceback, and an evaluation rerun
    replaces the earlier one's reports without a word. True, so it can sit in a config's `initialize`."""
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=".write-test-", dir=path):
            pass
    except OSError as e:
        reason = (
            "it is a file, or a file is in its path"
            if isinstance(e, (FileExistsError, NotADirectoryError))
            else e.strerror
        )
        raise SystemExit(f"error: {what} {path} cannot be written: {reason}. Choose another --{what}.") from None
    found = [name for name in existing if (path / name).exists()]
    if found and not overwrite:
        raise SystemExit(
            f"error: {what} {path} already holds {', '.join(found)} from an earlier run. Write elsewhere with "
            f"--{what} DIR, or replace them with --overwrite True."
        )
    return True
