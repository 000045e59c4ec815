"""The exact source tree of a run, and its reconstruction.

Inside git: commit, branch, remote (credentials stripped), dirty flag, the binary diff of
tracked files against HEAD (staged and unstaged) and every untracked, non-ignored file,
stored as artifacts. Outside git: a snapshot of the code directory. The store directory
is never part of the tree, nor are auditor's own log files (``streams``), FIFOs and other
special files, or untracked files the run rewrites (``without_changed``: they are outputs);
large binary untracked files are data (``is_data_file``). ``tree_sha256`` is a Merkle root
over the captured tree (``data.merkle_root``); ``rebuild_tree`` re-creates the tree from
the commit and the artifacts and checks it against that root.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from auditor.core.errors import CouldNotVerify, IntegrityError
from auditor.core.schema import ArtifactRef, Code, DataInput
from auditor.record.capture import data as data_capture
from auditor.record.capture.code_secrets import secret_in_file, secret_in_patch
from auditor.record.capture.data import (
    SKIP_DIRS,
    merkle_entries,
    merkle_of,
    merkle_root,
    special_kind,
    walk_files,
)
from auditor.record.capture.secrets import strip_url_credentials
from auditor.record.capture.streams import OwnLogs
from auditor.store.blobs import BlobStore

# Untracked files that are large and binary are data (weights, datasets), not source: they
# are fingerprinted as inputs (``DataInput(origin="untracked")``), not copied into the
# store, and the rerun gets them from the original tree, checked against the fingerprint.
# "Binary" is git's own test (a NUL byte in the first 8000 bytes); any untracked file over
# MAX_UNTRACKED_BYTES is data whatever it holds.
DATA_MIN_BYTES = 1 << 20
MAX_UNTRACKED_BYTES = 50 << 20
_BINARY_PROBE = 8000


@dataclass
class CodeCapture:
    """The Code section plus the artifacts that hold its bytes.

    ``entries`` (one Merkle line per file of the tree) and ``stamps`` (size and mtime of
    each untracked file) let ``without_changed`` drop, after the run, the untracked files
    the run itself rewrote: a file the run creates or changes is an output, never source."""

    code: Code
    artifacts: list[ArtifactRef] = field(default_factory=list)
    data: list[DataInput] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    entries: dict[str, tuple[str, int]] = field(default_factory=dict)
    stamps: dict[str, tuple[int, int]] = field(default_factory=dict)


def git(root: Path, *args: str, check: bool = True) -> bytes:
    """Run git in ``root`` and return stdout bytes."""
    out = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, check=False, timeout=120
    )
    if check and out.returncode != 0:
        msg = out.stderr.decode(errors="replace").strip().splitlines()
        raise CouldNotVerify(
            f"git {' '.join(args[:2])} failed in {root}: {msg[-1] if msg else out.returncode}"
        )
    return out.stdout


def _git_text(root: Path, *args: str) -> str | None:
    out = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=False, timeout=60
    )
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _excluded(rel: str, store_rel: str | None) -> bool:
    return store_rel is not None and (rel == store_rel or rel.startswith(store_rel + "/"))


def _z(data: bytes) -> list[str]:
    return [p.decode("utf-8", "surrogateescape") for p in data.split(b"\0") if p]


def is_data_file(path: Path) -> bool:
    """True for an untracked file that is data rather than source (see DATA_MIN_BYTES)."""
    size = path.stat().st_size
    if size > MAX_UNTRACKED_BYTES:
        return True
    if size < DATA_MIN_BYTES:
        return False
    with open(path, "rb") as fh:
        return b"\0" in fh.read(_BINARY_PROBE)


def _holds_secret(path: Path, capture: CodeCapture, rel: str) -> bool:
    try:
        data = path.read_bytes()
    except OSError:
        return False
    found = secret_in_file(rel, data)
    if found:
        line = data.count(b"\n", 0, found[1]) + 1
        capture.notes[f"code.skipped.{rel}"] = (
            f"not stored: it holds a secret ({found[0]} on line {line}); git-ignore it, or keep "
            "the secret in the environment (the rerun gets it through the policy's pass_env)")
    return found is not None


def _patch_line(diff: bytes, offset: int) -> str:
    """`` near line N``: the new side's line of the hunk that holds ``offset``."""
    hunk = diff.rfind(b"\n@@ -", 0, offset)
    end = diff.find(b"\n", hunk + 1)
    if hunk < 0 or end < 0:
        return ""
    fields = diff[hunk + 1:end].split(b" ")
    first = fields[2].lstrip(b"+").split(b",")[0] if len(fields) > 2 else b""
    if not first.isdigit():
        return ""
    lines = diff[end + 1:offset].split(b"\n")[:-1]
    shown = [ln for ln in lines if not ln.startswith(b"-")]
    return f" near line {int(first) + len(shown)}"


def _sort_untracked(
    root: Path, rels: list[str], own_logs: OwnLogs, capture: CodeCapture
) -> tuple[list[str], list[str], list[str]]:
    """(source, data, skipped) among untracked ``rels``; notes say why a file is skipped."""
    source: list[str] = []
    data: list[str] = []
    skipped: list[str] = []
    for rel in rels:
        path = root / rel
        if path.is_symlink():
            source.append(rel)
        elif how := own_logs.how(path):
            skipped.append(rel)
            capture.notes[f"code.skipped.{rel}"] = f"{how}: neither source nor output"
        elif kind := special_kind(path):
            skipped.append(rel)
            capture.notes[f"code.skipped.{rel}"] = f"not a regular file: {kind}"
        elif path.is_file():
            if is_data_file(path):
                data.append(rel)
            elif _holds_secret(path, capture, rel):
                skipped.append(rel)
                continue
            else:
                source.append(rel)
            st = path.stat()
            capture.stamps[rel] = (st.st_size, st.st_mtime_ns)
    return source, data, skipped


def capture_git(
    root: Path, blobs: BlobStore, store_dir: Path, own_logs: OwnLogs | None = None
) -> CodeCapture:
    """Capture a git work tree rooted at ``root``."""
    own_logs = own_logs or OwnLogs()
    store_rel = _relative(store_dir, root)
    exclude = [f":(exclude){store_rel}"] if store_rel else []
    commit = _git_text(root, "rev-parse", "--verify", "-q", "HEAD")
    listed = _z(git(root, "ls-files", "-co", "--exclude-standard", "-z"))
    files = sorted(
        {
            p
            for p in listed
            if not _excluded(p, store_rel) and ((root / p).is_symlink() or (root / p).is_file())
        }
    )
    untracked = [
        p
        for p in _z(git(root, "ls-files", "--others", "--exclude-standard", "-z"))
        if not _excluded(p, store_rel)
    ]
    capture = CodeCapture(code=Code(vcs="git", root=str(root), tree_sha256=""))
    diff_name = None
    if commit:
        diff = git(
            root, "diff", "--binary", "--no-color", "--no-ext-diff", "HEAD", "--", ".", *exclude
        )
        found = secret_in_patch(diff) if diff else None
        if found:  # never stored: the rerun's tree will not match, and verify says so
            line = _patch_line(diff, found[1])
            capture.notes["code.diff"] = (
                f"the uncommitted changes were not stored: they hold a secret ({found[0]} in "
                f"{found[2]}{line}); remove it, or keep it in the environment "
                "(the rerun gets it through the policy's pass_env)")
        elif diff:
            diff_name = _store(capture, blobs, "code/diff.patch", data=diff)
    else:  # no commit yet: every file is "untracked" for the purpose of rebuilding
        untracked = files
    kept, data, skipped = _sort_untracked(root, untracked, own_logs, capture)
    for rel in kept:
        _store(capture, blobs, f"code/untracked/{rel}", path=root / rel)
    capture.data = [data_capture.fingerprint(root / rel, display=rel, origin="untracked")
                    for rel in data]
    left_out = set(data) | set(skipped)
    capture.entries = merkle_entries(root, [p for p in files if p not in left_out])
    tree, _size, count = merkle_of(capture.entries)
    remote = _git_text(root, "remote", "get-url", "origin")
    status = git(
        root, "status", "--porcelain=v2", "-z", "--untracked-files=normal", "--", ".", *exclude
    )
    capture.code = Code(
        vcs="git",
        root=str(root),
        remote=strip_url_credentials(remote) if remote else None,
        commit=commit,
        branch=_git_text(root, "rev-parse", "--abbrev-ref", "HEAD"),
        dirty=bool(status),
        diff_artifact=diff_name,
        untracked_artifacts=tuple(f"code/untracked/{p}" for p in kept),
        tree_sha256=tree,
        files=count,
        excluded=tuple(([store_rel] if store_rel else []) + skipped),
    )
    return capture


def capture_snapshot(
    code_dir: Path, blobs: BlobStore, store_dir: Path, own_logs: OwnLogs | None = None
) -> CodeCapture:
    """Snapshot a directory outside git (every file except caches and the store)."""
    store_rel = _relative(store_dir, code_dir)

    def skip(rel: str) -> bool:
        return rel.split("/")[-1] in SKIP_DIRS or _excluded(rel, store_rel)

    capture = CodeCapture(code=Code(vcs="snapshot", root=str(code_dir), tree_sha256=""))
    small, data, skipped = _sort_untracked(
        code_dir, walk_files(code_dir, skip), own_logs or OwnLogs(), capture
    )
    for rel in small:
        _store(capture, blobs, f"code/untracked/{rel}", path=code_dir / rel)
    capture.data = [data_capture.fingerprint(code_dir / rel, display=rel, origin="untracked")
                    for rel in data]
    capture.entries = merkle_entries(code_dir, small)
    tree, _size, count = merkle_of(capture.entries)
    capture.code = Code(
        vcs="snapshot",
        root=str(code_dir),
        tree_sha256=tree,
        files=count,
        untracked_artifacts=tuple(f"code/untracked/{p}" for p in small),
        excluded=tuple(skipped),
    )
    return capture


def without_changed(capture: CodeCapture, root: Path) -> tuple[CodeCapture, list[str]]:
    """The capture minus the untracked files the run changed (they are its outputs).

    A file deleted by the run stays source: the run found it there when it started."""
    changed = []
    for rel, stamp in capture.stamps.items():
        try:
            st = os.lstat(root / rel)
        except OSError:
            continue
        if (st.st_size, st.st_mtime_ns) != stamp:
            changed.append(rel)
    if not changed:
        return capture, []
    gone = set(changed)
    names = {f"code/untracked/{rel}" for rel in gone}
    entries = {rel: e for rel, e in capture.entries.items() if rel not in gone}
    tree, _size, count = merkle_of(entries)
    code = capture.code.model_copy(update={
        "untracked_artifacts": tuple(n for n in capture.code.untracked_artifacts
                                     if n not in names),
        "tree_sha256": tree,
        "files": count,
    })
    notes = dict(capture.notes)
    for rel in sorted(gone):
        notes[f"code.skipped.{rel}"] = ("untracked when the run began and changed by it: an "
                                        "output of the run, not source")
    return CodeCapture(
        code=code,
        artifacts=[a for a in capture.artifacts if a.name not in names],
        data=[d for d in capture.data if d.path not in gone],
        notes=notes,
        entries=entries,
        stamps={r: s for r, s in capture.stamps.items() if r not in gone},
    ), sorted(gone)


def _relative(path: Path, root: Path) -> str | None:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def _store(
    capture: CodeCapture,
    blobs: BlobStore,
    name: str,
    *,
    data: bytes | None = None,
    path: Path | None = None,
) -> str:
    if path is not None and path.is_symlink():
        data = os.readlink(path).encode("utf-8", "surrogateescape")
        name = name + ".symlink"
    sha, size = blobs.put_bytes(data) if data is not None else blobs.put_file(path)  # type: ignore[arg-type]
    capture.artifacts.append(ArtifactRef(name=name, sha256=sha, size=size, kind="code"))
    return name


def rebuild_tree(
    code: Code,
    artifacts: dict[str, ArtifactRef],
    blobs: BlobStore,
    dest: Path,
    *,
    repo: Path | None = None,
) -> Path:
    """Re-create the captured tree in ``dest`` and check it against ``tree_sha256``."""
    dest.mkdir(parents=True, exist_ok=True)
    if code.vcs == "git" and code.commit:
        source = repo or Path(code.root)
        if not (source / ".git").exists() and not _git_text(source, "rev-parse", "--git-dir"):
            raise CouldNotVerify(
                f"git repository {source} is gone; cannot check out {code.commit[:12]}",
                hint="run from a clone of the repository",
            )
        _extract_commit(source, code.commit, dest)
        if code.diff_artifact:
            patch = blobs.verified_path(artifacts[code.diff_artifact].sha256, code.diff_artifact)
            git(dest, "apply", "--binary", "--whitespace=nowarn", str(patch))
    for name in code.untracked_artifacts:
        _restore(name, artifacts, blobs, dest)
    files = walk_files(dest, lambda rel: rel == ".git")
    rebuilt, _size, count = merkle_root(dest, files)
    if rebuilt != code.tree_sha256:
        raise IntegrityError(
            f"rebuilt source tree does not match the record (tree sha256 "
            f"{code.tree_sha256[:12]}…, rebuilt {rebuilt[:12]}…): "
            + tree_mismatch(code, files, count),
            hint=None if not _left_out_in(code, files) else
            "the store was committed to git: `git rm -r --cached` it and add it to .gitignore",
        )
    return dest


def _left_out_in(code: Code, files: list[str]) -> list[str]:
    """Files of the rebuilt tree under a path the capture left out (the store)."""
    left = [e.rstrip("/") for e in code.excluded if e]
    return [f for f in files if any(f == e or f.startswith(e + "/") for e in left)]


def tree_mismatch(code: Code, files: list[str], count: int) -> str:
    """Which paths make the rebuilt tree differ, as far as the record can tell (it keeps
    the tree's root and file count, not each file's digest)."""
    extra = _left_out_in(code, files)
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        return (f"{len(extra)} rebuilt file(s) lie where recording left files out "
                f"(the store?): {shown}")
    if code.files and count != code.files:
        return f"the rebuilt tree has {count} files, the record {code.files}"
    return f"the same {count} files, some with other contents"


def _extract_commit(repo: Path, commit: str, dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "tree.tar"
        tar.write_bytes(git(repo, "archive", "--format=tar", commit))
        subprocess.run(["tar", "-xf", str(tar), "-C", str(dest)], check=True, timeout=300,
                       capture_output=True)  # its stderr names what failed (a full disk)
    if not (dest / ".git").exists():
        # git apply needs no repository, but must not find the caller's: make dest its own.
        subprocess.run(["git", "init", "-q", str(dest)], check=True, timeout=60)


def _restore(name: str, artifacts: dict[str, ArtifactRef], blobs: BlobStore, dest: Path) -> None:
    ref = artifacts[name]
    rel = name.removeprefix("code/untracked/")
    is_link = rel.endswith(".symlink") and ref.name == name
    data = blobs.read_bytes(ref.sha256, name)
    target = dest / (rel.removesuffix(".symlink") if is_link else rel)
    if not target.resolve().is_relative_to(dest.resolve()):
        raise IntegrityError(f"artifact {name!r} escapes the tree")
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_link:
        os.symlink(data.decode("utf-8", "surrogateescape"), target)
    else:
        target.write_bytes(data)
