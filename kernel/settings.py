"""Settings shared by every process: the base class, secrets, and what a node needs.

Read once, from the environment (and `.env` when present), by pydantic-settings, then
passed down. Nothing below this module reads `os.environ`.

Secrets (every ``SecretStr`` field, and string or list fields whose name says
credential, of every class built on :class:`LogSettings`) get three things here, once,
for every such field any class declares now or later:

- ``NAME_FILE``: the value is read from that file instead (the Docker and Kubernetes
  convention), its trailing newline dropped; a missing, unreadable or empty file, or
  ``NAME`` and ``NAME_FILE`` both set, is a :class:`SecretFileError` at start-up.
- :func:`sealed_secret_environment`: the command line moves every secret variable out of
  ``os.environ`` while it runs, so nothing it starts (codex, its commands) inherits one;
  settings still read them, from the sealed copy.
- :meth:`LogSettings.credential_problems`: a value too short or too common to be a
  credential (``codex-hub``, ``change-me``) is refused at start-up, because masking it
  would rewrite ordinary words in every answer and log line.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import typing
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

#: Where settings come from, shared by every settings class of the project.
BASE_CONFIG = SettingsConfigDict(
    env_file=".env",
    env_file_encoding="utf-8",
    extra="ignore",
    case_sensitive=False,
    populate_by_name=True,
)


def split_csv(value: object) -> object:
    """Turn ``"a, b,,c"`` into ``["a", "b", "c"]``; lists pass through."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- secrets ------------------------------------------------------------------------

#: ``NAME`` + this names a file that holds the value of secret setting ``NAME``.
FILE_SUFFIX = "_FILE"
#: The shortest value accepted as a credential.
MIN_SECRET_LENGTH = 12
#: Fewer different characters than this is a pattern, not a credential.
_MIN_DISTINCT_CHARS = 6
#: Words of placeholders and of this project: a value holding one is guessable and
#: would mask ordinary text (paths, examples) wherever that word appears.
_COMMON_PARTS = (
    "codex-hub",
    "codex_hub",
    "changeme",
    "change-me",
    "change_me",
    "replaceme",
    "replace-me",
    "replace_me",
    "placeholder",
    "example",
    "password",
)
# Words and separators only, in one case: a phrase or a name, never a generated key.
_WORDS = re.compile(r"[a-z]+(?:[-_. ][a-z]+)*|[A-Z]+(?:[-_. ][A-Z]+)*")
_CREDENTIAL_WORDS = ("TOKEN", "API_KEY", "OPERATOR_KEY", "SECRET", "PASSWORD")


class SecretFileError(ValueError):
    """A ``*_FILE`` setting cannot be used: the message names it and says why."""


def _env_name(name: str, info: FieldInfo) -> str:
    return (info.alias or name).upper()


def is_secret_field(name: str, info: FieldInfo) -> bool:
    """True for a setting that holds a credential: a ``SecretStr``, or a string or list
    field whose environment name says so (``HUB_API_KEYS`` is a list of keys)."""
    annotation = info.annotation
    if annotation is SecretStr or SecretStr in typing.get_args(annotation):
        return True
    env = _env_name(name, info)
    if env.endswith(("_PATH", FILE_SUFFIX, "_HOSTS")):
        return False
    if not any(word in env for word in _CREDENTIAL_WORDS):
        return False
    return annotation is str or typing.get_origin(annotation) is list


def secret_fields(cls: type[BaseSettings]) -> dict[str, str]:
    """Field name -> environment name of every secret setting of ``cls``."""
    return {
        name: _env_name(name, info)
        for name, info in cls.model_fields.items()
        if is_secret_field(name, info)
    }


#: Environment names of the secrets of every settings class defined so far.
_SECRET_NAMES: set[str] = set()


def secret_env_names() -> frozenset[str]:
    """Every secret's environment name and its ``_FILE`` variant, for every class that
    derives from :class:`LogSettings` and has been imported."""
    return frozenset(_SECRET_NAMES | {name + FILE_SUFFIX for name in _SECRET_NAMES})


# Secret variables taken out of os.environ by seal_secret_environment: by upper-case
# name for the settings to read, and as they were named, to put back.
_sealed: dict[str, str] = {}
_moved: dict[str, str] = {}


def seal_secret_environment(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Move every known secret variable out of ``environ`` (``os.environ``); returns the
    names moved. Settings keep reading them; processes started afterwards never see
    them. Call again after importing more settings classes: it is additive."""
    environ = os.environ if environ is None else environ
    names = secret_env_names()
    moved = [key for key in list(environ) if key.upper() in names]
    for key in moved:
        _sealed[key.upper()] = _moved[key] = environ.pop(key)
    return moved


@contextlib.contextmanager
def sealed_secret_environment() -> Iterator[None]:
    """Seal the environment for the block (see :func:`seal_secret_environment`), then put
    back what was moved: a command run in-process (tests) leaves it as it found it."""
    before, before_moved = dict(_sealed), dict(_moved)
    seal_secret_environment()
    try:
        yield
    finally:
        for key, value in _moved.items():
            if key not in before_moved:
                os.environ.setdefault(key, value)
        _sealed.clear()
        _sealed.update(before)
        _moved.clear()
        _moved.update(before_moved)


def _given(env_file: Path | None) -> dict[str, str]:
    """Every variable given now: ``env_file``, then the environment (sealed included)."""
    from dotenv import dotenv_values  # pydantic-settings' own .env reader

    found: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        found.update({k.upper(): v for k, v in dotenv_values(env_file).items() if v})
    found.update(_sealed)
    found.update({k.upper(): v for k, v in os.environ.items()})
    return {k: v for k, v in found.items() if v}


def secret_file_settings(env_file: Path | None = None) -> dict[str, Path]:
    """``NAME_FILE`` settings given now (environment, sealed or ``env_file``) -> path."""
    names = {name for name in secret_env_names() if name.endswith(FILE_SUFFIX)}
    return {k: Path(v).expanduser() for k, v in _given(env_file).items() if k in names}


def configured_secrets(env_file: Path | None = None) -> set[str]:
    """Names of the secret settings given a value now, directly or as ``NAME_FILE``."""
    names = secret_env_names()
    return {k.removesuffix(FILE_SUFFIX) for k in _given(env_file) if k in names}


def read_secret_file(env: str, path: str) -> str:
    """The secret in ``path`` (setting ``env``), its trailing newline dropped."""
    where = f"{env}{FILE_SUFFIX}={path}"
    try:
        value = Path(path).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretFileError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise SecretFileError(f"{where}: is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SecretFileError(f"{where}: cannot be read ({reason})") from None
    value = value.removesuffix("\n").removesuffix("\r")
    if not value.strip():
        raise SecretFileError(f"{where}: the file is empty")
    return value


class _SealedEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, which also sees the sealed secrets."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        merged = dict(super()._load_env_vars())
        for key, value in _sealed.items():
            merged.setdefault(key if self.case_sensitive else key.lower(), value)
        return merged


class _SecretFileSource(PydanticBaseSettingsSource):
    """``NAME_FILE`` for every secret setting ``NAME``, named in the environment or .env."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        *variables: Mapping[str, str | None],
    ) -> None:
        super().__init__(settings_cls)
        self._variables = variables

    def _lookup(self, env: str) -> str:
        for variables in self._variables:
            for key in (env, env.lower()):
                value = variables.get(key)
                if value:
                    return value
        return ""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        env = _env_name(field_name, field)
        path = self._lookup(env + FILE_SUFFIX)
        if not path:
            return None, env, False
        if self._lookup(env):
            raise SecretFileError(f"{env} and {env}{FILE_SUFFIX} are both set: keep one")
        return read_secret_file(env, path), env, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, info in self.settings_cls.model_fields.items():
            if is_secret_field(name, info):
                value, _, _ = self.get_field_value(info, name)
                if value is not None:
                    found[info.alias or name] = value
        return found


def weak_secret_reason(value: str) -> str | None:
    """Why ``value`` cannot be a credential (never quoting it), or None when it can."""
    if len(value) < MIN_SECRET_LENGTH:
        return (
            f"{len(value)} characters is too short for a credential (at least {MIN_SECRET_LENGTH})"
        )
    if len(set(value)) < _MIN_DISTINCT_CHARS:
        return "too few different characters for a credential"
    if _WORDS.fullmatch(value):
        return "looks like words, not a credential"
    lowered = value.lower()
    for part in _COMMON_PARTS:
        if part in lowered:
            return f"holds the common word {part!r}, which a credential never does"
    return None


class LogSettings(BaseSettings):
    """Logging, shared by every process; the base of every settings class (see the
    module docstring for what it gives every secret field)."""

    model_config = BASE_CONFIG

    log_level: str = Field("INFO", alias="LOG_LEVEL")
    log_format: Literal["text", "json"] = Field("text", alias="LOG_FORMAT")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        _SECRET_NAMES.update(secret_fields(cls).values())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then ``*_FILE`` secrets, the environment (sealed secrets included)
        and .env."""
        env = _SealedEnvSource(settings_cls)
        dotenv_vars = getattr(dotenv_settings, "env_vars", {})
        files = _SecretFileSource(settings_cls, env.env_vars, dotenv_vars)
        return (init_settings, files, env, dotenv_settings, file_secret_settings)

    def credential_problems(self) -> list[str]:
        """One line per secret setting whose value cannot be a credential, naming the
        setting and the reason, never the value; empty settings are not checked."""
        problems = []
        for name, env in secret_fields(type(self)).items():
            value = getattr(self, name, None)
            values = value if isinstance(value, list | tuple) else [value]
            for item in values:
                if isinstance(item, SecretStr):
                    item = item.get_secret_value()
                if isinstance(item, str) and item:
                    reason = weak_secret_reason(item)
                    if reason:
                        problems.append(f"{env}: {reason}")
        return problems


_SECRET_NAMES.update(secret_fields(LogSettings).values())


def default_data_dir() -> Path:
    """Where the hub keeps its store unless ``HUB_DB`` says otherwise: the user's data
    directory (``$XDG_DATA_HOME/codex-hub``, else ``~/.local/share/codex-hub``), never the
    working directory, which is where codex works by default (``EXEC_WORKDIR=.``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "codex-hub"


class NodeSettings(LogSettings):
    """What every node (executor, bridge) needs to reach the hub."""

    model_config = BASE_CONFIG

    hub_url: str = Field("ws://127.0.0.1:8080/ws", alias="HUB_URL")
    hub_token: SecretStr = Field(SecretStr(""), alias="HUB_TOKEN")
    #: Where a hub on this machine keeps its store: with HUB_TOKEN empty, the node reads
    #: its own credential from the credentials file the hub wrote beside it.
    hub_db: Path = Field(
        default_factory=lambda: default_data_dir() / "codex-hub.db", alias="HUB_DB"
    )
    node_name: str = Field("", alias="NODE_NAME")

    @field_validator("hub_db")
    @classmethod
    def _expand_hub_db(cls, value: Path) -> Path:
        return value.expanduser()
