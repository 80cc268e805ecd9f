"""The pure side of workspaces: repository references, checks, names, summaries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from executor.workspace_names import (
    RepoError,
    RepoRef,
    allowed,
    branch_for,
    numstat_summary,
    parse_repo,
    redact_credentials,
    repo_in_prompt,
    split_pr_command,
    summary_line,
)


@pytest.mark.parametrize(
    ("text", "url", "branch"),
    [
        ("acme/widgets", "https://github.com/acme/widgets.git", None),
        ("acme/widgets@release/1.2", "https://github.com/acme/widgets.git", "release/1.2"),
        (
            "https://gitlab.example.com/team/sub/proj.git",
            "https://gitlab.example.com/team/sub/proj.git",
            None,
        ),
        ("ssh://git@example.com:2222/a/b.git@dev", "ssh://git@example.com:2222/a/b.git", "dev"),
        ("git@github.com:acme/widgets.git", "git@github.com:acme/widgets.git", None),
    ],
)
def test_a_repository_reference_resolves_to_a_url_and_branch(
    text: str, url: str, branch: str | None
) -> None:
    """owner/repo means the default host over https; URLs and scp-like names are kept."""
    ref = parse_repo(text)
    assert (ref.url, ref.branch) == (url, branch)


def test_owner_repo_uses_git_default_host() -> None:
    """GIT_DEFAULT_HOST decides where owner/repo lives."""
    assert parse_repo("a/b", default_host="git.example").url == "https://git.example/a/b.git"


@pytest.mark.parametrize(
    "text",
    [
        "file:///etc/passwd",
        "ext::sh -c id",
        "ext::sh",
        "fd::3",
        "http://example.com/a/b.git",
        "git://example.com/a/b.git",
        "https://u:p@example.com/a/b.git",
        "https://-oProxyCommand=x/a/b.git",
        "acme/../etc",
        "acme/widgets@--upload-pack=x",
        "acme/widgets@a..b",
        "-x/y",
    ],
)
def test_unsafe_repository_references_are_refused(text: str) -> None:
    """Local files, command transports, plain http, credentials and option-like or
    climbing names are refused."""
    with pytest.raises(RepoError):
        parse_repo(text)


def test_a_setting_may_allow_http_but_never_file() -> None:
    """Allowing http makes http:// usable; file stays refused whatever is allowed."""
    protocols = ("https", "ssh", "http", "file")
    assert parse_repo("http://127.0.0.1:9/a/b.git", protocols=protocols).host == "127.0.0.1:9"
    with pytest.raises(RepoError):
        parse_repo("file:///srv/a.git", protocols=protocols)


@pytest.mark.parametrize(
    ("prompt", "found"),
    [
        ("acme/widgets fix the tests", "acme/widgets"),
        ("acme/widgets@dev: fix it", "acme/widgets@dev"),
        ("please fix https://github.com/acme/widgets now", "https://github.com/acme/widgets"),
        ("clone git@github.com:acme/w.git.", "git@github.com:acme/w.git"),
        ("read file:///etc/x.git", "file:///etc/x.git"),
        ("fix src/main.py please", None),
        ("see https://docs.python.org/3/library/asyncio.html", None),
    ],
)
def test_a_prompt_names_a_repository_by_its_first_word_or_a_git_url(
    prompt: str, found: str | None
) -> None:
    """owner/repo counts as the first word only; URLs count when they are repositories."""
    assert repo_in_prompt(prompt) == found


def test_allowed_repos_patterns_match_host_owner_and_name() -> None:
    """Patterns match per path part; owner/name patterns mean the default host."""
    ref = RepoRef("https://github.com/acme/w.git", "github.com", "acme/w")
    assert allowed(ref, [], "github.com")
    assert allowed(ref, ["acme/*"], "github.com")
    assert allowed(ref, ["github.com/acme/w"], "github.com")
    assert not allowed(ref, ["other/*"], "github.com")
    assert not allowed(ref, ["acme/*"], "gitlab.com")


@given(st.text(max_size=200), st.text(max_size=200))
def test_branch_names_are_always_safe(conversation: str, prompt: str) -> None:
    """Whatever the user wrote, the branch is codex/ and lowercase letters, digits, dashes."""
    branch = branch_for(conversation, prompt)
    assert branch.startswith("codex/")
    rest = branch.removeprefix("codex/")
    assert rest and all(c.isascii() and (c.isalnum() or c == "-") for c in rest)
    assert not rest.startswith("-") and len(branch) < 60


def test_summaries_count_files_and_lines() -> None:
    """numstat lines become "N files changed, +A -D"; binary files count as files."""
    stat = numstat_summary(["3\t1\ta.py", "-\t-\tlogo.png", "37\t11\tb.py"])
    assert summary_line(*stat) == "3 files changed, +40 -12"
    assert summary_line(0, 0, 0) == "no changes"


def test_pr_command_is_read_from_the_start_of_a_message() -> None:
    """ "!pr" starts a message asking for a PR; "!pretty" does not."""
    assert split_pr_command("!pr fix it") == (True, "fix it")
    assert split_pr_command("  !PR") == (True, "")
    assert split_pr_command("!pretty") == (False, "!pretty")


def test_credentials_in_git_messages_are_masked() -> None:
    """A password in a URL that git repeats is masked."""
    assert redact_credentials("fatal: https://me:tok@h/x") == "fatal: https://me:***@h/x"
