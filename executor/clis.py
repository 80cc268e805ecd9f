"""Which command-line tools codex can count on, as told to the prompt optimizer.

`available_clis` is pure: the environment is passed in (read once, at the edge), so the
same settings and environment always give the same list. The rules are the settings
contract: codex and git always; aws, gh and kubectl when their credentials or config are
in the environment; then whatever ``AVAILABLE_CLIS`` lists. `CLI_PURPOSES` says what each
known CLI is for, which ``codex-hub doctor`` prints next to a missing one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from executor.settings import ExecutorSettings

__all__ = ["ALWAYS", "CLI_PURPOSES", "CONDITIONAL", "available_clis"]

#: CLIs every executor is expected to have.
ALWAYS: tuple[str, ...] = ("codex", "git")

#: CLI -> environment variables of which any one, set and non-empty, says it is usable.
CONDITIONAL: dict[str, tuple[str, ...]] = {
    "aws": (
        "AWS_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ),
    "gh": ("GITHUB_TOKEN", "GH_TOKEN"),
    "kubectl": ("KUBECONFIG",),
}

#: What each known CLI is needed for (shown by ``codex-hub doctor``).
CLI_PURPOSES: dict[str, str] = {
    "codex": "runs every request",
    "git": "repository work: clone, diff, commit, push",
    "gh": "GitHub issues, pull requests and releases; needs GITHUB_TOKEN or GH_TOKEN",
    "kubectl": "Kubernetes clusters; needs KUBECONFIG",
    "aws": "AWS accounts; needs AWS_PROFILE or AWS_ACCESS_KEY_ID and a region",
}


def _dedup(names: Iterable[str]) -> list[str]:
    """`names` without blanks and repeats, first occurrence kept, order kept."""
    return list(dict.fromkeys(name for name in names if name))


def available_clis(settings: ExecutorSettings, environ: Mapping[str, str]) -> list[str]:
    """The CLIs the optimizer may tell the model about, in a stable order.

    ``codex`` and ``git`` come first, then ``aws``, ``gh`` and ``kubectl`` for each whose
    environment (see `CONDITIONAL`) has a non-empty variable, then the names listed in
    ``AVAILABLE_CLIS`` (comma-separated). Repeats are dropped, first place kept.
    """
    detected = [
        cli
        for cli, variables in CONDITIONAL.items()
        if any(environ.get(var, "").strip() for var in variables)
    ]
    extra = [name.strip() for name in settings.available_clis.split(",")]
    return _dedup([*ALWAYS, *detected, *extra])
