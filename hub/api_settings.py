"""``GET /api/settings``: the hub's effective settings, read-only, for operators only.

Every setting of :class:`~hub.settings.HubSettings` is listed by its environment name,
in the order the class declares them, with the value the running hub uses (an empty
``HUB_TOKEN`` or ``HUB_API_KEYS`` filled from the credentials file included). A secret
is shown only as ``"set"`` or ``"not set"``, never its value, nor its length: a secret is
what :func:`kernel.settings.is_secret_field` says, and, failing closed, any setting
whose name speaks of keys (``HUB_OPERATOR_KEYS`` is a plain list of keys).

A key that is not an operator's (``HUB_OPERATOR_KEYS``) is answered 403
``operator_only``: how the hub is set up (its limits, its networks) is the operators'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from hub.appkeys import SETTINGS
from hub.auth import is_operator
from hub.errors import ApiError, json_response
from kernel.settings import is_secret_field

routes = web.RouteTableDef()

#: What a secret setting shows instead of its value.
SET, NOT_SET = "set", "not set"
#: Words of an environment name that make a setting secret here even when
#: :func:`~kernel.settings.is_secret_field` does not say so (fail closed).
_KEY_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")


class OperatorOnly(ApiError):
    status = 403
    type = "invalid_request_error"
    code = "operator_only"


def _is_secret(name: str, settings_cls: type[BaseSettings]) -> bool:
    info = settings_cls.model_fields[name]
    env = (info.alias or name).upper()
    return is_secret_field(name, info) or any(word in env for word in _KEY_WORDS)


def _plain(value: Any) -> Any:
    """A setting's value as JSON: paths and networks as text, lists item by item."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _is_given(value: Any) -> bool:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, list | tuple | set | frozenset):
        return any(_is_given(item) for item in value)
    return value is not None and value != ""


def settings_view(settings: BaseSettings) -> list[dict[str, Any]]:
    """One entry per setting: ``env`` (its environment name), ``value`` (``"set"`` /
    ``"not set"`` for a secret), ``secret``, and ``default`` (not given: the default)."""
    cls = type(settings)
    given = settings.model_fields_set
    out = []
    for name, info in cls.model_fields.items():
        value = getattr(settings, name)
        secret = _is_secret(name, cls)
        out.append(
            {
                "env": (info.alias or name).upper(),
                "value": (SET if _is_given(value) else NOT_SET) if secret else _plain(value),
                "secret": secret,
                "default": name not in given,
            }
        )
    return out


@routes.get("/api/settings")
async def get_settings(request: web.Request) -> web.Response:
    """The hub's effective settings, secrets as set / not set; operators only."""
    if not is_operator(request):
        raise OperatorOnly(
            "the hub's settings are shown to operators only: use a key of HUB_OPERATOR_KEYS"
        )
    return json_response({"settings": settings_view(request.app[SETTINGS])})
