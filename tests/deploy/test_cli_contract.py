"""The command check the deployment tests rely on accepts real commands and rejects others."""

from __future__ import annotations

import argparse

import pytest

from tests.deploy import _contract as c


def _stand_in_parser() -> argparse.ArgumentParser:
    # Shaped like DESIGN.md's CLI, so the argparse branch is exercised before cli.py exists.
    parser = argparse.ArgumentParser(prog="codex-hub")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "serve", "executor", "doctor"):
        sub.add_parser(name)
    sub.add_parser("bridge").add_argument("platform", choices=["slack", "telegram"])
    exec_ = sub.add_parser("exec")
    exec_.add_argument("prompt")
    return parser


@pytest.mark.parametrize("parser", [_stand_in_parser(), None], ids=["argparse", "design-table"])
def test_check_command(parser: argparse.ArgumentParser | None) -> None:
    """Real commands pass; unknown subcommands, platforms and programs are named."""
    assert c.check_command(["codex-hub", "serve"], parser) is None
    assert c.check_command(["codex-hub", "bridge", "telegram"], parser) is None
    assert c.check_command(["codex-hub", "bridge", "irc"], parser) is not None
    assert c.check_command(["codex-hub", "server"], parser) is not None
    assert c.check_command(["python", "-m", "hub"], parser) is not None


def test_real_cli_accepts_the_deployed_roles() -> None:
    """The real CLI accepts every role the deployment files start."""
    for role in (["serve"], ["executor"], ["bridge", "slack"], ["bridge", "telegram"], ["up"]):
        assert c.check_command(["codex-hub", *role]) is None, role
