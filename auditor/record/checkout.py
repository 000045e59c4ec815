"""``audit checkout``: a run's source tree re-created in a folder, all or nothing.

The tree is rebuilt in a fresh folder beside the target (same filesystem) and renamed
into place only once it is whole and matches the record; a target that cannot be filled
(read-only, full, a failing extraction) leaves no half-written tree and none of the
folders this call created.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from auditor.core.errors import InputError
from auditor.core.schema import ArtifactRef, Code
from auditor.record.capture.git import rebuild_tree
from auditor.store.blobs import BlobStore


def checkout_tree(code: Code, artifacts: dict[str, ArtifactRef], blobs: BlobStore,
                  dest: Path) -> Path:
    """Rebuild ``code`` into ``dest`` (new or empty) atomically."""
    dest = dest.absolute()
    made = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    work: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.checkout-", dir=dest.parent))
        rebuild_tree(code, artifacts, blobs, work / "tree")
        if dest.exists():
            dest.rmdir()  # empty (checked by the caller); rename needs it gone or empty
        os.rename(work / "tree", dest)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise InputError(f"cannot check out into {dest}: {_why(exc)}; nothing was left "
                         "there", hint="choose a writable location with room") from None
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        for folder in made:  # innermost first: the folders this call made, if still empty
            if not (dest.exists() and dest.is_relative_to(folder)):
                with contextlib.suppress(OSError):
                    folder.rmdir()
    return dest


def _why(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        return " ".join((err or f"{exc.cmd[0]} failed (exit {exc.returncode})").split())[:300]
    assert isinstance(exc, OSError)
    return exc.strerror or str(exc)
