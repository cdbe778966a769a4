"""The ``models_repo`` resource: where ``landing_table_git_job`` reads schemas and writes dbt files.

Plain values only, built at the edge with :meth:`ModelsRepoResource.from_settings` from
``Settings.paths`` (``DATALOADER_MODELS_REPO``, ``DATALOADER_MODELS_BRANCH``,
``DATALOADER_MODELS_REMOTE``, ``DATALOADER_LAKE_ROOT``, ``DATALOADER_HOME``) and
``Settings.execution`` (``DATALOADER_EXECUTION``).

With ``DATALOADER_MODELS_URL`` (required in a deployment) every run clones the repository
shallowly into a temporary directory, commits on the branch and must push; the copy is deleted
afterwards, so nothing depends on the container's disk. Without it (local work) the working copy
at ``DATALOADER_MODELS_REPO`` is used as before (``git init``-ed if missing, pushed when it has a
remote). Push credentials: an SSH key / credential helper of the machine, or
``DATALOADER_MODELS_TOKEN`` (an https token, handed to git through a credential helper; kept as
``dg.EnvVar`` so it never shows in the UI), or ``DATALOADER_MODELS_TOKEN_SECRET=<scope>/<key>``
(the token read from a Databricks secret scope at the start of each run, never stored, through
the code location's injected ``databricks_workspace`` resource). A URL that carries credentials
is kept as an ``EnvVar`` too.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import dagster as dg
from pydantic import Field

from dagsters.resources.databricks_workspace import (
    DatabricksWorkspaceResource,
    workspace_or_default,
)
from dagsters.settings import DEFAULT_MODELS_BRANCH, Settings
from databricks_scripts.redaction import redact

if TYPE_CHECKING:
    # Imported when the landing job uses the repository: a run worker of a load never does.
    from dagsters.landing.git_repo import ModelsRepo


class ModelsRepoResource(dg.ConfigurableResource):
    """The models repository's working copy, its branch and remote, and where schemas are read."""

    path: str = Field(description="Working copy the dbt files are written to (created if missing)")
    branch: str = Field(default=DEFAULT_MODELS_BRANCH, description="Branch the job commits to")
    remote: str | None = Field(
        default=None, description="Remote to push to; unset: origin, or the only remote, or none"
    )
    lock_dir: str = Field(description="Directory of the lock file serialising runs on the copy")
    lake_root: str = Field(description="Local lake the local loader writes Delta tables to")
    execution: str = Field(
        default="local", description="local (schemas from Delta) | databricks (Unity Catalog)"
    )
    url: str | None = Field(
        default=None,
        description="DATALOADER_MODELS_URL: clone this into a temporary directory per run and "
        "push (required in a deployment); unset: the working copy at path",
    )
    token: str | None = Field(
        default=None, description="DATALOADER_MODELS_TOKEN (an EnvVar): https push credential"
    )
    token_secret: str | None = Field(
        default=None,
        description="DATALOADER_MODELS_TOKEN_SECRET: <scope>/<key> of a Databricks secret "
        "holding the push token (read per run, never stored)",
    )
    workspace: DatabricksWorkspaceResource | None = Field(
        default=None,
        description="The code location's databricks_workspace (for token_secret); unset: the "
        "SDK's own host",
    )

    @classmethod
    def from_settings(
        cls, settings: Settings, workspace: DatabricksWorkspaceResource | None = None
    ) -> ModelsRepoResource:
        """The resource for ``settings``; ``workspace``: the code location's shared one."""
        paths = settings.paths
        return cls(
            path=str(paths.models_repo),
            branch=paths.models_branch,
            remote=paths.models_remote,
            lock_dir=str(paths.home / "locks"),
            lake_root=str(paths.lake_root),
            execution=settings.execution,
            url=_url_config(paths.models_url),
            token=dg.EnvVar("DATALOADER_MODELS_TOKEN") if paths.models_token else None,
            token_secret=paths.models_token_secret,
            workspace=workspace or DatabricksWorkspaceResource.from_settings(settings),
        )

    def repo(self) -> ModelsRepo:
        """The local working copy at ``path`` (local mode, no URL)."""
        from dagsters.landing.git_repo import ModelsRepo

        return ModelsRepo(
            Path(self.path), branch=self.branch, remote=self.remote, lock_dir=Path(self.lock_dir)
        )

    @property
    def location(self) -> str:
        """Where the files go, fit to show (credentials in a URL masked)."""
        return redact(self.url) if self.url else self.path

    @contextmanager
    def checkout(self) -> Iterator[ModelsRepo]:
        """The copy to publish into: a fresh shallow clone of ``url`` (deleted afterwards), or
        the local working copy when no URL is configured."""
        if not self.url:
            yield self.repo()
            return
        from dagsters.landing.git_repo import clone_shallow

        with tempfile.TemporaryDirectory(prefix="dataloader-models-") as tmp:
            yield clone_shallow(
                self.url,
                Path(tmp) / "models",
                branch=self.branch,
                lock_dir=Path(tmp) / "locks",
                token=self.push_token(),
            )

    def push_token(self) -> str | None:
        """The https push token: DATALOADER_MODELS_TOKEN, else the Databricks secret, else None."""
        if self.token or not self.token_secret:
            return self.token
        scope, _, key = self.token_secret.partition("/")
        client = workspace_or_default(self.workspace).get_client()
        secret = client.secrets.get_secret(scope, key)
        return base64.b64decode(secret.value or "").decode() or None


def _url_config(url: str | None) -> str | dg.EnvVar | None:
    """A URL with credentials in it stays an EnvVar (never visible resource config)."""
    if url and urlparse(url).password:
        return dg.EnvVar("DATALOADER_MODELS_URL")
    return url
