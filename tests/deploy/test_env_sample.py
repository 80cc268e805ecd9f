""".env.sample lists every setting once, with safe defaults and empty secrets."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from tests.deploy import _contract as c


def test_settings_are_found() -> None:
    """The settings scan sees the classes it must (guards against an empty, passing scan)."""
    names = {cls.__name__ for cls in c.settings_classes()}
    assert {"LogSettings", "HubSettings", "NodeSettings", "ExecutorSettings"} <= names
    assert len(c.setting_aliases()) > 30


def test_every_setting_is_listed() -> None:
    """Every setting's env name appears in .env.sample (set, or commented out on purpose)."""
    listed = {name for name, _, _ in c.env_sample()}
    missing = sorted(set(c.setting_aliases()) - listed)
    assert not missing, f"add to .env.sample: {missing}"


def test_every_listed_name_is_a_setting() -> None:
    """Nothing in .env.sample is a typo or a setting that no longer exists."""
    aliases = c.setting_aliases()
    unknown = sorted(
        n for n, _, _ in c.env_sample() if n not in aliases and n not in c.NON_SETTINGS
    )
    assert not unknown, f"not settings: {unknown}"


def test_no_name_twice() -> None:
    """Each name appears once, so there is one place to change it."""
    names = [name for name, _, _ in c.env_sample()]
    assert len(names) == len(set(names))


def test_every_setting_has_a_comment() -> None:
    """Each setting's line is preceded by a one-line comment."""
    lines = c.ENV_SAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        match = c._ASSIGNMENT.match(line.strip())
        if match and match.group(2) in c.setting_aliases():
            before = lines[i - 1].strip()
            assert before.startswith("#") and not c._ASSIGNMENT.match(before), line


def test_secrets_are_empty() -> None:
    """Credentials are listed without a value."""
    secret_names = set()
    for cls in c.settings_classes():
        for name, info in cls.model_fields.items():
            if info.annotation is SecretStr:
                secret_names |= c.field_env_names(cls, name, info)
    assert {"HUB_TOKEN", "OPENAI_API_KEY"} <= secret_names
    secret_names |= {"HUB_API_KEYS", "HUB_OPERATOR_KEYS"}  # plain lists, but keys all the same
    for name, value, active in c.env_sample():
        if name in secret_names:
            assert active and value == "", name


def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's environment (CODEX_BIN from make, a real HUB_TOKEN) must not leak in.
    for name in c.setting_aliases():
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.mark.parametrize("cls", c.settings_classes(), ids=lambda cls: cls.__name__)
def test_values_are_the_defaults(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading .env.sample gives each class exactly its defaults: the file documents them."""
    _isolated(monkeypatch)
    try:
        defaults = cls(_env_file=None)
    except ValidationError:
        pytest.skip(f"{cls.__name__} has required settings; nothing to compare")
    from_sample = cls(_env_file=c.ENV_SAMPLE)
    assert from_sample.model_dump() == defaults.model_dump()
