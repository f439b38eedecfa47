"""Where the reconcile loop reads its manifests: a directory (re-read every pass) or a git branch (cloned and
fetched with the system `git`, argv only, each new commit taken in order).

A source hands out revisions; a revision whose manifests do not load carries its errors instead, and the loop
keeps running the last good one.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

GIT_TIMEOUT_S = 120
GitRunner = Callable[[Sequence[str]], str]


class SourceError(Exception):
    """The source cannot be read (git failed, path missing); the message says why. Retried next pass."""


@dataclass
class Revision:
    """One version of the manifests: `label` is what history records as the revision's source."""

    label: str
    manifests: Any
    commit: str | None = None

    @property
    def valid(self) -> bool:
        """True when the manifests loaded without a single error."""
        return bool(self.manifests.valid)

    def errors(self) -> list[str]:
        """Every load error as `file:line:col: code: message`."""
        return [f"{e.location()}: {e.code}: " + (f"{e.path}: " if e.path else "") + e.message
                for e in self.manifests.errors]


def digest(sources: Sequence[dict[str, str]]) -> str:
    """A fingerprint of manifest texts, to notice when a directory changed."""
    h = hashlib.sha256()
    for s in sorted(sources, key=lambda s: s["file"]):
        h.update(s["file"].encode() + b"\0" + s["text"].encode() + b"\0")
    return h.hexdigest()


class DirSource:
    """Manifests from files and directories, loaded again every pass; a new revision when their text changes."""

    def __init__(self, paths: Sequence[str], load: Callable[[Sequence[str]], Any]) -> None:
        self.paths = list(paths)
        self.load = load
        self._seen: str | None = None

    def describe(self) -> str:
        """For logs: what is watched."""
        return ", ".join(os.path.abspath(p) for p in self.paths)

    def restore(self) -> Revision | None:
        """Nothing to restore: the directory is read as it is."""
        return None

    def poll(self, fetch: bool = True) -> list[str]:
        """Revisions not yet handed out (at most one: the directory as it is now)."""
        return ["current"]

    def revision(self, ref: str) -> Revision | None:
        """The manifests as they are now; None when nothing changed since the previous call."""
        manifests = self.load(self.paths)
        fingerprint = digest(manifests.sources) + repr([str(e) for e in manifests.errors])
        if fingerprint == self._seen:
            return None
        self._seen = fingerprint
        return Revision(f"dir:{self.describe()}", manifests)


def check_git_args(url: str, branch: str, path: str) -> None:
    """Refuse values that git could read as options or that leave the checkout; raises ValueError."""
    if not url or url.startswith("-") or url.lower().startswith("ext::"):
        raise ValueError(f"--git {url!r}: not a repository URL")
    if not branch or branch.startswith("-") or ".." in branch or any(c in branch for c in " ~^:?*[\\"):
        raise ValueError(f"--branch {branch!r}: not a branch name")
    parts = PurePosixPath(path).parts
    if PurePosixPath(path).is_absolute() or ".." in parts:
        raise ValueError(f"--path {path!r}: must be relative to the repository, without '..'")


def run_git(argv: Sequence[str]) -> str:
    """Run `git` with an argv list (never a shell), no prompts; its stdout, or SourceError with its stderr."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "LC_ALL": "C"}
    try:
        done = subprocess.run(["git", *argv], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, env=env,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"git {argv[0] if argv else ''}: {exc}") from None
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}").splitlines()
        # git's own verdict is its `fatal:` / `error:` line; hints and advice follow it.
        verdict = next((ln for ln in lines if ln.startswith(("fatal:", "error:"))), lines[-1])
        raise SourceError(f"git {' '.join(a for a in argv[:3] if not a.startswith('/'))}: {verdict}")
    return done.stdout


class GitSource:
    """A branch of a git repository, cloned into `workdir`; every new commit on it is one revision.

    `applied` is the commit the last reconcile of this stack applied (from history), so a restarted loop
    continues after it instead of re-applying old commits.
    """

    def __init__(self, url: str, branch: str, path: str, workdir: Path, load: Callable[[Sequence[str]], Any],
                 applied: str | None = None, git: GitRunner = run_git) -> None:
        check_git_args(url, branch, path)
        self.url, self.branch, self.path = url, branch, path or "."
        self.workdir = workdir
        self.load = load
        self.seen = applied
        self.git = git

    def describe(self) -> str:
        """For logs: repository, branch and path."""
        return f"{self.url} branch {self.branch}" + (f" path {self.path}" if self.path != "." else "")

    def _repo(self, *argv: str) -> str:
        return self.git(["-C", str(self.workdir), *argv])

    def _clone(self) -> None:
        if (self.workdir / ".git").is_dir():
            origin = self._repo("config", "--get", "remote.origin.url").strip()
            if origin == self.url:
                return
            raise SourceError(f"{self.workdir} is a clone of {origin}, not {self.url}; remove it or use another "
                              "--stack")
        self.workdir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.git(["clone", "--quiet", "--no-checkout", "--branch", self.branch, "--", self.url, str(self.workdir)])

    def restore(self) -> Revision | None:
        """The revision a previous loop applied last (checked out again), to keep healing it after a restart;
        None when there is none or it no longer loads."""
        if not self.seen:
            return None
        try:
            self._clone()
            revision = self.revision(self.seen)
        except SourceError:
            return None
        return revision if revision.valid else None

    def poll(self, fetch: bool = True) -> list[str]:
        """Fetch (when `fetch`), then the commits after the last one seen, oldest first (first-parent)."""
        self._clone()
        ref = f"refs/remotes/origin/{self.branch}"
        if fetch:
            self._repo("fetch", "--quiet", "--prune", "origin", f"+refs/heads/{self.branch}:{ref}")
        head = self._repo("rev-parse", "--verify", f"{ref}^{{commit}}").strip()
        if head == self.seen:
            return []
        if self.seen:
            try:
                self._repo("merge-base", "--is-ancestor", self.seen, head)
                commits = self._repo("rev-list", "--first-parent", "--reverse", f"{self.seen}..{head}").split()
                return commits or [head]
            except SourceError:
                pass  # history was rewritten (or the commit is unknown here): take the tip.
        return [head]

    def revision(self, commit: str) -> Revision:
        """Check out `commit` and load its manifests (errors included: the loop reports them)."""
        self._repo("checkout", "--quiet", "--force", "--detach", commit)
        self.seen = commit
        target = self.workdir / self.path
        if not target.exists():
            from aimactl.manifest import Manifests
            from aimactl.manifest.errors import ManifestError

            missing = ManifestError("path-missing", f"{self.path} does not exist in commit {commit[:12]}",
                                    str(target))
            return Revision(self.label(commit), Manifests(errors=[missing]), commit)
        return Revision(self.label(commit), self.load([str(target)]), commit)

    def label(self, commit: str) -> str:
        """The source recorded in history: `git:URL#BRANCH@COMMIT`."""
        return f"git:{self.url}#{self.branch}@{commit}"


def applied_commit(label: str | None, url: str, branch: str) -> str | None:
    """The commit of a recorded source label when it names this repository and branch."""
    prefix = f"git:{url}#{branch}@"
    return label[len(prefix):] if label and label.startswith(prefix) else None
