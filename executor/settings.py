"""Settings of an executor node: codex, the transport, prompt optimization.

Read once with pydantic-settings and passed down; the fallbacks for the optimizer's key
and model are resolved here, in one place, exactly as docs/settings say.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from kernel.settings import BASE_CONFIG, CsvList, NodeSettings, split_csv
from wire import LABEL_PATTERN, MAX_LABELS


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names it."""


class ExecutorSettings(NodeSettings):
    """Everything an executor (or `codex-hub exec`) needs to run codex."""

    model_config = BASE_CONFIG

    # codex itself
    codex_bin: str = Field("", alias="CODEX_BIN")
    codex_home: Path | None = Field(None, alias="CODEX_HOME")
    codex_model: str = Field("", alias="CODEX_MODEL")
    codex_sandbox: Literal["read-only", "workspace-write", "danger-full-access"] = Field(
        "workspace-write", alias="CODEX_SANDBOX"
    )
    codex_network_access: bool = Field(True, alias="CODEX_NETWORK_ACCESS")
    #: When codex asks a person before it acts (app-server engine only): ``never`` (what
    #: ``codex exec`` does), ``on-request``, ``on-failure`` or ``untrusted``. The people
    #: who decide are the hub's APPROVERS; the sandbox stays CODEX_SANDBOX.
    codex_approval_policy: Literal["never", "on-request", "on-failure", "untrusted"] = Field(
        "never", alias="CODEX_APPROVAL_POLICY"
    )
    codex_extra_args: str = Field("", alias="CODEX_EXTRA_ARGS")

    # how runs execute
    exec_workdir: Path = Field(Path("."), alias="EXEC_WORKDIR")
    exec_timeout_s: float = Field(1800.0, alias="EXEC_TIMEOUT_S", gt=0)
    exec_concurrency: int = Field(4, alias="EXEC_CONCURRENCY", ge=1, le=256)
    exec_transport: Literal["local", "ssh"] = Field("local", alias="EXEC_TRANSPORT")
    exec_dry_run: bool = Field(False, alias="EXEC_DRY_RUN")
    #: `exec`: one `codex exec` per run; `app-server`: one long-lived `codex app-server`.
    exec_engine: Literal["exec", "app-server"] = Field("exec", alias="EXEC_ENGINE")
    #: What this executor announces to the hub (its hello): ``prod,k8s,gpu``.
    exec_labels: CsvList = Field(default_factory=list, alias="EXEC_LABELS")

    # workspaces (executor/workspace.py): a git worktree per conversation, or a scratch dir
    workspace_root: Path | None = Field(None, alias="WORKSPACE_ROOT")
    git_default_host: str = Field("github.com", alias="GIT_DEFAULT_HOST", min_length=1)
    workspace_ttl: float = Field(7 * 86_400.0, alias="WORKSPACE_TTL", gt=0)
    workspace_max_gb: float = Field(20.0, alias="WORKSPACE_MAX_GB", gt=0)
    workspace_allowed_repos: str = Field("", alias="WORKSPACE_ALLOWED_REPOS")
    workspace_allow_protocols: str = Field("", alias="WORKSPACE_ALLOW_PROTOCOLS")
    workspace_auto_pr: bool = Field(False, alias="WORKSPACE_AUTO_PR")
    workspace_fetch_timeout_s: float = Field(300.0, alias="WORKSPACE_FETCH_TIMEOUT_S", gt=0)
    workspace_git_author: str = Field(
        "codex-hub <codex-hub@localhost>", alias="WORKSPACE_GIT_AUTHOR"
    )
    workspace_commit_message: str = Field(
        "{title}\\n\\nMade by codex-hub run {run_id}.", alias="WORKSPACE_COMMIT_MESSAGE"
    )
    workspace_forge: Literal["auto", "github", "gitlab", "none"] = Field(
        "auto", alias="WORKSPACE_FORGE"
    )
    workspace_github_api_url: str = Field("", alias="WORKSPACE_GITHUB_API_URL")
    workspace_github_token: SecretStr = Field(SecretStr(""), alias="WORKSPACE_GITHUB_TOKEN")
    workspace_gitlab_api_url: str = Field("", alias="WORKSPACE_GITLAB_API_URL")
    workspace_gitlab_token: SecretStr = Field(SecretStr(""), alias="WORKSPACE_GITLAB_TOKEN")

    # SSH transport
    ssh_host: str = Field("", alias="SSH_HOST")
    ssh_port: int = Field(22, alias="SSH_PORT", ge=1, le=65535)
    ssh_user: str = Field("", alias="SSH_USER")
    ssh_key_path: Path | None = Field(None, alias="SSH_KEY_PATH")
    ssh_known_hosts: Path | None = Field(None, alias="SSH_KNOWN_HOSTS")
    ssh_insecure_no_host_key_check: bool = Field(False, alias="SSH_INSECURE_NO_HOST_KEY_CHECK")

    # prompt optimization (an upstream OpenAI-compatible chat model)
    optimize_prompt: bool = Field(False, alias="OPTIMIZE_PROMPT")
    openai_base_url: str = Field("https://api.openai.com/v1", alias="OPENAI_BASE_URL")
    openai_api_key: SecretStr = Field(SecretStr(""), alias="OPENAI_API_KEY")
    openwebui_api_key: SecretStr = Field(SecretStr(""), alias="OPENWEBUI_API_KEY")
    litellm_api_key: SecretStr = Field(SecretStr(""), alias="LITELLM_API_KEY")
    model: str = Field("", alias="MODEL")
    openwebui_model: str = Field("", alias="OPENWEBUI_MODEL")
    litellm_model: str = Field("", alias="LITELLM_MODEL")
    optimizer_timeout_s: float = Field(30.0, alias="OPTIMIZER_TIMEOUT_S", gt=0)
    available_clis: str = Field("", alias="AVAILABLE_CLIS")

    _split_labels = field_validator("exec_labels", mode="before")(split_csv)

    @field_validator("exec_labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        for label in value:
            if not re.fullmatch(LABEL_PATTERN, label):
                raise ValueError(
                    f"{label[:80]!r} is not a label: use lowercase letters, digits, '-' and "
                    "'_' (at most 64 characters), comma-separated, e.g. EXEC_LABELS=prod,k8s,gpu"
                )
        labels = list(dict.fromkeys(value))  # a label said twice counts once
        if len(labels) > MAX_LABELS:
            raise ValueError(f"{len(labels)} labels: an executor announces at most {MAX_LABELS}")
        return labels

    @model_validator(mode="after")
    def _approvals_need_the_app_server(self) -> ExecutorSettings:
        if self.codex_approval_policy != "never" and self.exec_engine != "app-server":
            raise ValueError(
                f"CODEX_APPROVAL_POLICY={self.codex_approval_policy} needs "
                "EXEC_ENGINE=app-server: `codex exec` cannot ask anyone (it declines what "
                "needs an approval); set EXEC_ENGINE=app-server or CODEX_APPROVAL_POLICY=never"
            )
        return self

    @model_validator(mode="after")
    def _resolve_fallbacks(self) -> ExecutorSettings:
        # An empty key or model takes OpenWebUI's, then LiteLLM's; the base URL never does.
        if not self.openai_api_key.get_secret_value():
            self.openai_api_key = (
                self.openwebui_api_key
                if self.openwebui_api_key.get_secret_value()
                else self.litellm_api_key
            )
        if not self.model:
            self.model = self.openwebui_model or self.litellm_model
        return self

    @property
    def fixed_workdir(self) -> bool:
        """Whether ``EXEC_WORKDIR`` was set (environment, .env or argument): then every
        run works in that one directory, as before workspaces; otherwise each
        conversation gets a workspace of its own under ``WORKSPACE_ROOT``."""
        return "exec_workdir" in self.model_fields_set

    @property
    def extra_args(self) -> list[str]:
        """`CODEX_EXTRA_ARGS` split like a shell would, never run through one."""
        return shlex.split(self.codex_extra_args)
