"""Reading settings for a command, and the checks made before anything starts: shared by
the command line (:mod:`codex_hub.cli`) and ``codex-hub doctor``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kernel.settings import SecretFileError, seal_secret_environment, secret_file_settings


class UsageError(Exception):
    """Bad command-line input or settings; printed without a traceback."""


class CredentialError(UsageError):
    """A secret setting cannot be used (a weak value, a bad ``*_FILE``): never skipped,
    even for a bridge that `codex-hub up` would otherwise leave out."""


def load(cls: type[Any], env_file: Path | None, **overrides: Any) -> Any:
    """Read a settings class from the environment and ``env_file`` (or ./.env)."""
    if env_file is not None and not env_file.is_file():
        raise UsageError(f"--env-file {env_file}: no such file")
    kwargs: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if env_file is not None:
        kwargs["_env_file"] = env_file
    try:
        settings = cls(**kwargs)
    except SecretFileError as exc:
        raise CredentialError(str(exc)) from None
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ())) or cls.__name__
            lines.append(f"  {where}: {err.get('msg')}")
        raise UsageError("invalid settings:\n" + "\n".join(lines)) from None
    # The class may be one imported just now: its secrets leave os.environ too.
    seal_secret_environment()
    problems = settings.credential_problems() if hasattr(settings, "credential_problems") else []
    if problems:
        raise CredentialError(
            "refused as credentials (masking them would rewrite ordinary text; use random "
            "values, e.g. `openssl rand -hex 32`):\n" + "\n".join(f"  {p}" for p in problems)
        )
    return settings


def loaded_env_file(env_file: Path | None) -> Path | None:
    """The settings file a command reads: ``--env-file``, else ./.env when present."""
    if env_file is not None:
        return env_file
    default = Path(".env")
    return default if default.is_file() else None


def secrets_in_workdir(
    workdir: Path, *, env_file: Path | None, db: Path | None = None
) -> list[str]:
    """What holds secrets inside ``workdir`` (the .env read, the hub's data directory,
    ``*_FILE`` files), where codex's commands can read them; one line each."""
    root = workdir.expanduser().resolve()

    def inside(path: Path) -> bool:
        return path.expanduser().resolve().is_relative_to(root)

    found = []
    if env_file is not None and inside(env_file.parent):
        found.append(f"the settings file {env_file} (its directory is inside EXEC_WORKDIR)")
    if db is not None and inside(db.parent):
        found.append(f"the hub's data directory {db.parent} (HUB_DB={db})")
    for name, path in sorted(secret_file_settings(env_file).items()):
        if inside(path):
            found.append(f"{name}={path}")
    return found


def refuse_secrets_in_workdir(workdir: Path, *, env_file: Path | None, db: Path | None) -> None:
    """Raise UsageError when codex would work where the secrets are (see above)."""
    found = secrets_in_workdir(workdir, env_file=env_file, db=db)
    if found:
        raise UsageError(
            f"EXEC_WORKDIR={workdir} is where codex works, and its commands can read every "
            "file there; it holds " + "; ".join(found) + ". Set EXEC_WORKDIR to the "
            "directory codex should work in, and keep settings (--env-file), HUB_DB and "
            "*_FILE secrets outside it."
        )
