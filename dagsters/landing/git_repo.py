"""The models repository: a git working copy dedicated to DataLoader's generated dbt files.

Plain module (no Dagster). Uses the ``git`` command line, so behaviour matches what a person would
do by hand; runs sharing a working copy are serialised with a lock file.
"""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dagsters.settings import DEFAULT_MODELS_BRANCH, child_environment
from databricks_scripts.redaction import redact

GIT_AUTHOR_NAME = "DataLoader"
GIT_AUTHOR_EMAIL = "dataloader@localhost"
# git commands talk to local paths or the configured remote; a hung credential prompt must not
# block a Dagster run forever.
GIT_TIMEOUT_SECONDS = 300


# The token reaches git only as this variable of the git child process.
_TOKEN_VARIABLE = "DATALOADER_GIT_TOKEN"
_CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || exit 0; echo username=x-access-token; '
    f'echo "password=${_TOKEN_VARIABLE}"; }}; f'
)


class GitError(Exception):
    """A git command failed; the message has the command and git's own output."""


@dataclass
class ModelsRepo:
    """A git working copy dedicated to DataLoader's generated dbt files.

    ``lock_dir`` is where the lock file serialising runs on this working copy lives: the project's
    data directory (``Settings.paths.home / "locks"``), not next to a person's checkout.
    """

    path: Path
    branch: str = DEFAULT_MODELS_BRANCH
    remote: str | None = None  # None: ``origin`` if present, else the only remote, else none
    lock_dir: Path = field(kw_only=True)
    # A push must happen (the repository was cloned from DATALOADER_MODELS_URL): publishing
    # without one is an error instead of a local-only commit.
    push_required: bool = field(default=False, kw_only=True)
    # Password/token for an https remote, handed to git through a credential helper that reads it
    # from the child's environment: never in a command line, a URL, a log or an exception.
    token: str | None = field(default=None, kw_only=True, repr=False)
    _identity_args: list[str] | None = field(default=None, init=False, repr=False)

    # -- plumbing

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # Never wait for a password prompt inside a Dagster run.
        env = child_environment({"GIT_TERMINAL_PROMPT": "0", **self._token_env()})
        env.setdefault("GIT_ASKPASS", "true")
        proc = subprocess.run(
            ["git", *self._identity(), *self._credential_args(), *args],
            cwd=self.path,
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=GIT_TIMEOUT_SECONDS,
        )
        if check and proc.returncode != 0:
            output = (proc.stderr or proc.stdout).strip()
            # Remote URLs may carry credentials (https://user:token@host/...).
            raise GitError(
                redact(f"git {' '.join(args)} failed in {self.path}: {output}", [self.token])
            )
        return proc

    def _token_env(self) -> dict[str, str]:
        return {_TOKEN_VARIABLE: self.token} if self.token else {}

    def _credential_args(self) -> list[str]:
        if not self.token:
            return []
        # The empty helper first drops any helper of the machine's config for this command.
        return ["-c", "credential.helper=", "-c", f"credential.helper={_CREDENTIAL_HELPER}"]

    def _identity(self) -> list[str]:
        # Use the machine's git identity when there is one; otherwise commits still need an author.
        if self._identity_args is None:
            probe = subprocess.run(
                ["git", "config", "user.email"],
                cwd=self.path,
                capture_output=True,
                text=True,
                check=False,
            )
            self._identity_args = (
                []
                if probe.stdout.strip()
                else ["-c", f"user.name={GIT_AUTHOR_NAME}", "-c", f"user.email={GIT_AUTHOR_EMAIL}"]
            )
        return self._identity_args

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise runs that share this working copy (git's own index.lock would just fail).

        The lock file lives in ``lock_dir`` (the project's data directory), not next to a
        person's checkout.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:16]
        lock_path = Path(self.lock_dir) / f"models_repo-{digest}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- steps

    def ensure(self) -> None:
        """Make ``path`` a git working copy on ``branch``, up to date with the remote branch."""
        self.path.mkdir(parents=True, exist_ok=True)
        inside = self.git("rev-parse", "--is-inside-work-tree", check=False)
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            if any(self.path.iterdir()):
                raise GitError(
                    f"{self.path} is not empty and not a git working copy; point "
                    "DATALOADER_MODELS_REPO at a clone of the models repository"
                )
            self.git("init", "--quiet", f"--initial-branch={self.branch}")
        remote = self.remote_name()
        remote_has_branch = False
        if remote:
            self.git("fetch", "--quiet", remote)
            remote_has_branch = (
                self.git(
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    f"refs/remotes/{remote}/{self.branch}",
                    check=False,
                ).returncode
                == 0
            )
        if self.current_branch() != self.branch:
            local = self.git(
                "rev-parse", "--verify", "--quiet", f"refs/heads/{self.branch}", check=False
            )
            if local.returncode == 0:
                self.git("checkout", "--quiet", self.branch)
            elif remote_has_branch:
                self.git(
                    "checkout", "--quiet", "-b", self.branch, "--track", f"{remote}/{self.branch}"
                )
            else:
                self.git("checkout", "--quiet", "-b", self.branch)
        if remote_has_branch and self.head() is not None:
            # Someone may have pushed to the branch (a reviewer's fix); never rewrite their work.
            self.git("merge", "--quiet", "--ff-only", f"{remote}/{self.branch}")
        elif remote_has_branch:
            self.git("reset", "--quiet", "--hard", f"{remote}/{self.branch}")

    def remote_name(self) -> str | None:
        remotes = self.git("remote").stdout.split()
        if self.remote:
            if self.remote not in remotes:
                raise GitError(f"remote {self.remote!r} is not configured in {self.path}")
            return self.remote
        if "origin" in remotes:
            return "origin"
        return remotes[0] if len(remotes) == 1 else None

    def current_branch(self) -> str | None:
        proc = self.git("symbolic-ref", "--quiet", "--short", "HEAD", check=False)
        return proc.stdout.strip() or None

    def head(self) -> str | None:
        proc = self.git("rev-parse", "--verify", "--quiet", "HEAD", check=False)
        return proc.stdout.strip() or None

    def commit(self, paths: Sequence[str], message: str) -> str | None:
        """Commit exactly ``paths``; None when they hold no change (nothing is committed then)."""
        if not paths:
            return None
        self.git("add", "--", *paths)
        staged = self.git("diff", "--cached", "--quiet", "--", *paths, check=False)
        if staged.returncode == 0:
            return None
        # ``commit -- paths`` commits only these paths, whatever else a person staged.
        self.git("commit", "--quiet", "--no-verify", "-m", message, "--", *paths)
        return self.head()

    def push(self) -> str | None:
        """Push the branch when a remote is configured; returns the remote name or None.

        With ``push_required`` a missing remote is an error: the files must leave this machine.
        """
        remote = self.remote_name()
        if remote is None and self.push_required:
            raise GitError(f"no remote to push {self.branch} to from {self.path}")
        if remote is None or self.head() is None:
            return None
        # Also pushes a commit left behind by an earlier run whose push failed.
        self.git("push", "--quiet", "--set-upstream", remote, f"HEAD:refs/heads/{self.branch}")
        return remote

    def tracked_and_clean(self, paths: Sequence[str]) -> bool:
        """True when every path is in HEAD and the working copy matches it."""
        if not paths or self.head() is None:
            return False
        listed = set(self.git("ls-files", "--", *paths).stdout.split("\n")) - {""}
        if listed != set(paths):
            return False
        return self.git("diff", "--quiet", "HEAD", "--", *paths, check=False).returncode == 0


def clone_shallow(
    url: str,
    into: Path,
    *,
    branch: str,
    lock_dir: Path,
    token: str | None = None,
) -> ModelsRepo:
    """A fresh shallow clone of ``url`` at ``branch`` in ``into`` (an empty temporary directory).

    The branch is created from the default branch when the remote has no such branch yet (or
    from nothing when the repository is empty). Pushing is required for the returned copy.
    """
    into.mkdir(parents=True, exist_ok=True)
    repo = ModelsRepo(
        into, branch=branch, remote="origin", lock_dir=lock_dir, push_required=True, token=token
    )
    heads = repo.git("ls-remote", "--heads", url).stdout.split()
    depth = ["--depth", "1", "--no-tags"]
    if f"refs/heads/{branch}" in heads:
        repo.git("clone", "--quiet", *depth, "--single-branch", "--branch", branch, url, ".")
    elif heads:
        repo.git("clone", "--quiet", *depth, url, ".")
        repo.git("checkout", "--quiet", "-b", branch)
    else:  # an empty repository: the branch starts from nothing
        repo.git("init", "--quiet", f"--initial-branch={branch}")
        repo.git("remote", "add", "origin", url)
    return repo
