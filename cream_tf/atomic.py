"""Writes that never leave a half-written file or folder behind: write under a temporary name
beside the target, then rename into place."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def check_folder(path, what: str) -> None:
    """Raises ValueError unless `path` is a folder or could be made one, so a run fails on an
    unusable output path before any work rather than when it first writes."""
    path = Path(path).absolute()
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(
                    f"{what} {str(path)!r} cannot be a folder: {str(parent)!r} is a file; choose another path."
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"{what} {str(path)!r} cannot be written: {str(parent)!r} is not writable.")
            return


def write_bytes(path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path, data) -> None:
    """Strict JSON: a NaN or infinity is an error, not the bare `NaN` that parsers reject."""
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


@contextlib.contextmanager
def staged_folder(target, overwrite: bool = False):
    """Yields an empty staging folder beside `target`; on success it replaces `target`.

    Raises ValueError up front when `target` exists and `overwrite` is false; on any error the
    staging folder is removed and `target` is left as it was.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise ValueError(
            f"Output folder {str(target)!r} already exists; choose a new folder or "
            "pass overwrite=True (--overwrite) to replace it."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    staging.chmod(0o755)
    try:
        yield staging
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, old / "entry")
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
