"""The exact source tree of a run, and its reconstruction.

Inside git: commit, branch, remote (credentials stripped), dirty flag, the binary diff of
tracked files against HEAD (staged and unstaged) and every untracked, non-ignored file,
stored as artifacts. Outside git: a snapshot of the code directory. The store directory
is never part of the tree. ``tree_sha256`` is a Merkle root over the captured tree
(``data.merkle_root``); ``rebuild_tree`` re-creates the tree from the commit and the
artifacts and checks it against that root.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from auditor.errors import CouldNotVerify, IntegrityError
from auditor.record.capture.data import SKIP_DIRS, merkle_root, walk_files
from auditor.record.capture.secrets import strip_url_credentials
from auditor.schema import ArtifactRef, Code
from auditor.store.blobs import BlobStore

MAX_UNTRACKED_BYTES = 50 << 20  # per file; larger untracked files are listed, not stored


@dataclass
class CodeCapture:
    """The Code section plus the artifacts that hold its bytes."""

    code: Code
    artifacts: list[ArtifactRef] = field(default_factory=list)


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


def capture_git(root: Path, blobs: BlobStore, store_dir: Path) -> CodeCapture:
    """Capture a git work tree rooted at ``root``."""
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
        if diff:
            diff_name = _store(capture, blobs, "code/diff.patch", data=diff)
    else:  # no commit yet: every file is "untracked" for the purpose of rebuilding
        untracked = files
    too_big = [
        p
        for p in untracked
        if (root / p).is_file()
        and not (root / p).is_symlink()
        and (root / p).stat().st_size > MAX_UNTRACKED_BYTES
    ]
    kept = [p for p in untracked if p not in too_big]
    for rel in kept:
        _store(capture, blobs, f"code/untracked/{rel}", path=root / rel)
    tree, _size, count = merkle_root(root, [p for p in files if p not in too_big])
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
        excluded=tuple(([store_rel] if store_rel else []) + too_big),
    )
    return capture


def capture_snapshot(code_dir: Path, blobs: BlobStore, store_dir: Path) -> CodeCapture:
    """Snapshot a directory outside git (every file except caches and the store)."""
    store_rel = _relative(store_dir, code_dir)

    def skip(rel: str) -> bool:
        return rel.split("/")[-1] in SKIP_DIRS or _excluded(rel, store_rel)

    files = walk_files(code_dir, skip)
    small = [
        p
        for p in files
        if (code_dir / p).is_symlink() or (code_dir / p).stat().st_size <= MAX_UNTRACKED_BYTES
    ]
    capture = CodeCapture(code=Code(vcs="snapshot", root=str(code_dir), tree_sha256=""))
    for rel in small:
        _store(capture, blobs, f"code/untracked/{rel}", path=code_dir / rel)
    tree, _size, count = merkle_root(code_dir, small)
    capture.code = Code(
        vcs="snapshot",
        root=str(code_dir),
        tree_sha256=tree,
        files=count,
        untracked_artifacts=tuple(f"code/untracked/{p}" for p in small),
        excluded=tuple(sorted(set(files) - set(small))),
    )
    return capture


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
        import os

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
    rebuilt, _size, _count = merkle_root(dest, walk_files(dest, lambda rel: rel == ".git"))
    if rebuilt != code.tree_sha256:
        raise IntegrityError(
            f"rebuilt source tree does not match the record (tree sha256 "
            f"{code.tree_sha256[:12]}…, rebuilt {rebuilt[:12]}…)"
        )
    return dest


def _extract_commit(repo: Path, commit: str, dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "tree.tar"
        tar.write_bytes(git(repo, "archive", "--format=tar", commit))
        subprocess.run(["tar", "-xf", str(tar), "-C", str(dest)], check=True, timeout=300)
    if not (dest / ".git").exists():
        # git apply needs no repository, but must not find the caller's: make dest its own.
        subprocess.run(["git", "init", "-q", str(dest)], check=True, timeout=60)


def _restore(name: str, artifacts: dict[str, ArtifactRef], blobs: BlobStore, dest: Path) -> None:
    import os

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
