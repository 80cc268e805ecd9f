"""Workspaces with real git: a local git HTTP server stands in for the forge.

The engine here is a stand-in for codex that edits files in the run's working directory
("write PATH TEXT" in the prompt), so each test shows what git holds afterwards; the
real codex is exercised in tests/test_e2e_workspace.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from executor.engine import RunOutcome, RunRequest
from executor.pipeline import Job, Pipeline, Result
from executor.settings import ExecutorSettings
from executor.transport_local import LocalTransport
from executor.transport_ssh import SshTransport
from executor.workspace import Workspaces
from testkit.fakes.git_server import FakeForge, GitHttpServer, git


class EditingEngine:
    """Does what "write PATH TEXT" prompts say in the run's workdir, then answers."""

    def __init__(self) -> None:
        self.requests: list[RunRequest] = []
        self.gate: asyncio.Event | None = None
        self.inside = 0
        self.both_inside = asyncio.Event()

    async def run(self, request: RunRequest, emit: Any) -> RunOutcome:
        self.requests.append(request)
        assert request.workdir is not None
        self.inside += 1
        if self.inside >= 2:
            self.both_inside.set()
        if self.gate is not None:
            await self.gate.wait()
        for line in request.prompt.splitlines():
            words = line.split(" ", 2)
            if words[0] == "unlink" and len(words) == 2:
                (Path(request.workdir) / words[1]).unlink()
            if words[0] == "write" and len(words) == 3:
                target = Path(request.workdir) / words[1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(words[2] + "\n")
        self.inside -= 1
        return RunOutcome("succeeded", "done", "thread-1", None)

    async def aclose(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(tmp_path: Path) -> Callable[..., ExecutorSettings]:
    def make(**overrides: Any) -> ExecutorSettings:
        values: dict[str, Any] = {
            "HUB_DB": tmp_path / "data" / "hub.db",
            "WORKSPACE_ROOT": tmp_path / "ws",
            "WORKSPACE_ALLOW_PROTOCOLS": "http",
            "CODEX_BIN": "codex",
        }
        values.update(overrides)
        return ExecutorSettings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


class Harness:
    """A pipeline with workspaces on the local transport, and what its runs emitted."""

    def __init__(self, settings: ExecutorSettings, clock: Clock, **kw: Any) -> None:
        self.engine = EditingEngine()
        self.transport = LocalTransport()
        self.workspaces = Workspaces(settings, self.transport, clock=clock, **kw)
        self.pipeline = Pipeline(settings, self.engine, None, self.workspaces)  # type: ignore[arg-type]
        self.events: dict[str, list[dict[str, Any]]] = {}

    async def run(self, run_id: str, prompt: str, **job: Any) -> Result:
        events = self.events.setdefault(run_id, [])
        return await self.pipeline.run(
            Job(run_id=run_id, prompt=prompt, **job), events.append, lambda *_: None
        )

    def workspace_event(self, run_id: str) -> dict[str, Any]:
        return [e for e in self.events[run_id] if e["kind"] == "workspace"][-1]


@pytest.fixture
async def harness(settings: Callable[..., ExecutorSettings]) -> Any:
    made: list[Harness] = []

    def make(clock: Clock | None = None, **overrides: Any) -> Harness:
        h = Harness(settings(**overrides), clock or Clock())
        made.append(h)
        return h

    yield make
    for h in made:
        await h.transport.close()


@pytest.fixture
def repo(git_server: GitHttpServer) -> str:
    git_server.make_repo("acme/widgets", {"README.md": "widgets\n", "src/app.py": "x = 1\n"})
    return git_server.url("acme/widgets")


async def test_two_concurrent_runs_on_one_repository_get_separate_worktrees_and_branches(
    harness: Any, repo: str
) -> None:
    """Two conversations running at once on one repository work in two worktrees on two
    codex/ branches, each seeing only its own change."""
    h = harness()
    h.engine.gate = asyncio.Event()
    runs = [
        asyncio.create_task(h.run("r1", "write a.txt from one", session_key="s1", repo=repo)),
        asyncio.create_task(h.run("r2", "write b.txt from two", session_key="s2", repo=repo)),
    ]
    await asyncio.wait_for(h.engine.both_inside.wait(), 30)
    h.engine.gate.set()
    results = await asyncio.gather(*runs)
    assert [r.status for r in results] == ["succeeded", "succeeded"]
    workdirs = {r.run_id: Path(r.workdir or "") for r in h.engine.requests}
    one, two = workdirs["r1"], workdirs["r2"]
    assert one != two
    e1, e2 = h.workspace_event("r1"), h.workspace_event("r2")
    assert e1["branch"] != e2["branch"]
    assert e1["branch"].startswith("codex/") and e2["branch"].startswith("codex/")
    assert git("-C", str(one), "branch", "--show-current").strip() == e1["branch"]
    assert git("-C", str(two), "branch", "--show-current").strip() == e2["branch"]
    assert e1["files"] == ["a.txt"] and e2["files"] == ["b.txt"]
    assert "1 file changed, +1 -0" in results[0].answer
    assert f"branch {e1['branch']} (from main)" in results[0].answer


async def test_a_follow_up_continues_the_conversations_worktree_and_branch(
    harness: Any, repo: str
) -> None:
    """A second run of the conversation works in the same worktree and branch; its run
    diff holds only its own change, the conversation's diff both."""
    h = harness()
    await h.run("r1", "write a.txt first", session_key="s", repo=repo)
    second = await h.run("r2", "write b.txt second", session_key="s")
    assert second.status == "succeeded"
    first_req, second_req = h.engine.requests
    assert first_req.workdir == second_req.workdir
    e1, e2 = h.workspace_event("r1"), h.workspace_event("r2")
    assert e1["branch"] == e2["branch"]
    assert "b.txt" in e2["run_diff"] and "a.txt" not in e2["run_diff"]
    assert "a.txt" in e2["diff"] and "b.txt" in e2["diff"]
    assert e2["changes"] == "2 files changed, +2 -0"


async def test_the_recorded_diff_equals_git_diff(harness: Any, repo: str) -> None:
    """The conversation's recorded diff is exactly git's diff of the worktree against
    the branch's base."""
    h = harness()
    await h.run("r1", "write src/app.py x = 2\nwrite README.md changed", session_key="s", repo=repo)
    event = h.workspace_event("r1")
    workdir = h.engine.requests[0].workdir
    assert event["diff"] == git("-C", str(workdir), "diff", event["base"])
    assert event["changes"] == "2 files changed, +2 -2"


async def test_pr_pushes_the_branch_and_opens_a_pull_request_on_github(
    harness: Any, repo: str, git_server: GitHttpServer, fake_forge: FakeForge
) -> None:
    """ "!pr" commits the change, pushes the codex/ branch to the forge and opens a pull
    request with head, base, title and body; the link is in the reply."""
    h = harness(WORKSPACE_FORGE="github", WORKSPACE_GITHUB_API_URL=fake_forge.github_url)
    result = await h.run("r1", "!pr write fix.txt fixed", session_key="s", repo=repo)
    assert result.status == "succeeded", result
    event = h.workspace_event("r1")
    branch = event["branch"]
    bare = git_server.root / "acme/widgets.git"
    assert git("--git-dir", str(bare), "show", f"{branch}:fix.txt") == "fixed\n"
    message = git("--git-dir", str(bare), "log", "-1", "--format=%an|%B", branch)
    assert message.startswith("codex-hub|write fix.txt fixed") and "run r1" in message
    (call,) = fake_forge.calls
    assert call.path == "/github/repos/acme/widgets/pulls"
    assert call.body["head"] == branch and call.body["base"] == "main"
    assert call.body["title"] == "write fix.txt fixed"
    assert "run r1" in call.body["body"]
    assert "Pull request: https://github.example/acme/widgets/pull/1" in result.answer
    assert event["pr_url"] == "https://github.example/acme/widgets/pull/1"
    assert git("--git-dir", str(bare), "rev-parse", "main") == git(
        "--git-dir", str(bare), "rev-parse", f"{event['base']}"
    ), "the default branch is never pushed to"


async def test_open_pr_opens_a_gitlab_merge_request(
    harness: Any, repo: str, fake_forge: FakeForge
) -> None:
    """A run asked to open a PR against a GitLab host opens a merge request there."""
    h = harness(WORKSPACE_FORGE="gitlab", WORKSPACE_GITLAB_API_URL=fake_forge.gitlab_url)
    result = await h.run("r1", "write f.txt x", session_key="s", repo=repo, open_pr=True)
    (call,) = fake_forge.calls
    assert call.path == "/gitlab/projects/acme%2Fwidgets/merge_requests"
    assert call.body["source_branch"] == h.workspace_event("r1")["branch"]
    assert call.body["target_branch"] == "main"
    assert "https://gitlab.example/mr/1" in result.answer


async def test_a_refused_push_is_reported_with_gits_reason(
    harness: Any, repo: str, git_server: GitHttpServer, fake_forge: FakeForge
) -> None:
    """A push the forge refuses is reported in the reply and the event, with its
    reason, and no pull request is opened."""
    git_server.refuse_pushes("acme/widgets", "branch protection says no")
    h = harness(WORKSPACE_FORGE="github", WORKSPACE_GITHUB_API_URL=fake_forge.github_url)
    result = await h.run("r1", "!pr write f.txt x", session_key="s", repo=repo)
    event = h.workspace_event("r1")
    assert event["push_error"]["code"] == "push_refused"
    assert "branch protection says no" in event["push_error"]["message"]
    assert "Not pushed:" in result.answer and "branch protection says no" in result.answer
    assert fake_forge.calls == []


async def test_cleanup_saves_unpushed_changes_as_a_patch_and_spares_busy_workspaces(
    harness: Any, repo: str, tmp_path: Path
) -> None:
    """Past WORKSPACE_TTL an idle worktree is removed after its unpushed changes are
    saved as a patch, its mirror goes too; a workspace with a run in progress stays."""
    clock = Clock()
    h = harness(clock, WORKSPACE_TTL=3600)
    await h.run("r1", "write a.txt kept in a patch", session_key="idle", repo=repo)
    idle_dir = Path(h.engine.requests[0].workdir or "")
    await h.run("r2", "write b.txt busy", session_key="busy")  # a scratch directory
    busy = await h.workspaces.prepare("busy", None, "")
    clock.now += 7200
    removed = await h.workspaces.sweep()
    h.workspaces.release(busy.key)
    assert removed == [idle_dir.name]
    assert not idle_dir.exists()  # noqa: ASYNC240
    assert Path(busy.workdir, "b.txt").exists()  # noqa: ASYNC240
    (patch,) = (tmp_path / "ws" / "patches").iterdir()
    assert "+kept in a patch" in patch.read_text()
    assert list((tmp_path / "ws" / "mirrors").rglob("*.git")) == []


async def test_a_run_naming_no_repository_gets_a_scratch_directory_per_conversation(
    harness: Any,
) -> None:
    """Runs naming no repository work in an empty directory of their conversation's own,
    never a shared one."""
    h = harness()
    await h.run("r1", "write a.txt one", session_key="s1")
    await h.run("r2", "write b.txt two", session_key="s2")
    await h.run("r3", "write c.txt three", session_key="s1")
    one, two, three = (r.workdir for r in h.engine.requests)
    assert one == three != two
    assert sorted(p.name for p in Path(one or "").iterdir()) == ["a.txt", "c.txt"]  # noqa: ASYNC240


@pytest.mark.parametrize(
    "named",
    [
        "file:///etc/repo.git",
        "ext::sh -c touch% /tmp/pwned",
        "https://user:secret@example.com/a/b.git",
    ],
)
async def test_a_forbidden_repository_is_refused_before_git_runs(
    harness: Any, named: str, tmp_path: Path
) -> None:
    """file://, ext:: and URLs with credentials are refused with repo_refused; git never
    runs and the secret is not repeated."""
    h = harness()
    result = await h.run("r1", "do it", session_key="s", repo=named)
    assert result.status == "failed" and result.error is not None
    assert result.error["code"] == "repo_refused"
    assert "secret" not in result.error["message"]
    assert h.engine.requests == []
    assert not (tmp_path / "ws" / "mirrors").exists()


async def test_a_file_url_in_the_prompt_is_refused(harness: Any) -> None:
    """A file:// repository named in the prompt is refused, not fetched."""
    h = harness()
    result = await h.run("r1", "clone file:///srv/secret.git and read it", session_key="s")
    assert result.error is not None and result.error["code"] == "repo_refused"
    assert h.engine.requests == []


async def test_allowed_repos_refuses_any_other_repository(harness: Any, repo: str) -> None:
    """With WORKSPACE_ALLOWED_REPOS set, a repository matching no pattern is refused."""
    h = harness(WORKSPACE_ALLOWED_REPOS="other/*")
    result = await h.run("r1", "write a.txt x", session_key="s", repo=repo)
    assert result.error is not None and "WORKSPACE_ALLOWED_REPOS" in result.error["message"]


async def test_a_branch_named_with_the_repository_is_where_the_worktree_starts(
    harness: Any, git_server: GitHttpServer
) -> None:
    """owner/repo@branch starts the conversation's branch from that branch."""
    bare = git_server.make_repo("acme/multi", {"a.txt": "main\n"})
    git("--git-dir", str(bare), "branch", "dev", "main")
    h = harness()
    await h.run(
        "r1", "write dev.txt x", session_key="s", repo=git_server.url("acme/multi") + "@dev"
    )
    assert h.workspace_event("r1")["base_branch"] == "dev"


async def test_workspaces_live_on_the_ssh_host_and_git_runs_there(
    settings: Callable[..., ExecutorSettings],
    ssh_settings: dict[str, Any],
    repo: str,
    tmp_path: Path,
) -> None:
    """Over EXEC_TRANSPORT=ssh the mirror and the worktree are made on the SSH host by
    git there, and the diff comes back the same."""
    ssh = {k.upper(): v for k, v in ssh_settings.items()}
    s = settings(**ssh)
    transport = SshTransport.from_settings(s)
    try:
        engine = EditingEngine()
        workspaces = Workspaces(s, transport)
        pipeline = Pipeline(s, engine, None, workspaces)  # type: ignore[arg-type]
        events: list[dict[str, Any]] = []
        result = await pipeline.run(
            Job(run_id="r1", prompt="write a.txt over ssh", session_key="s", repo=repo),
            events.append,
            lambda *_: None,
        )
    finally:
        await transport.close()
    assert result.status == "succeeded", result
    (event,) = [e for e in events if e["kind"] == "workspace"]
    assert event["files"] == ["a.txt"]
    assert (tmp_path / "ws" / "mirrors" / git_host(repo) / "acme" / "widgets.git").is_dir()


def git_host(url: str) -> str:
    return url.split("/")[2].replace(":", "_")


async def test_past_workspace_max_gb_idle_workspaces_go_before_their_ttl(
    harness: Any, repo: str, tmp_path: Path
) -> None:
    """Over WORKSPACE_MAX_GB idle workspaces are removed though their TTL has not
    passed, their changes kept as a patch; one with a run in progress stays."""
    h = harness(WORKSPACE_MAX_GB=0.000001)
    await h.run("r1", "write a.txt idle change", session_key="idle", repo=repo)
    await h.run("r2", "write b.txt busy change", session_key="busy", repo=repo)
    busy = await h.workspaces.prepare("busy", None, "")
    removed = await h.workspaces.sweep()
    h.workspaces.release(busy.key)
    idle_dir = h.engine.requests[0].workdir
    assert removed == [Path(idle_dir or "").name]
    assert Path(busy.workdir, "b.txt").exists()  # noqa: ASYNC240
    (patch,) = (tmp_path / "ws" / "patches").iterdir()
    assert "+idle change" in patch.read_text()


async def test_a_pull_request_asked_without_a_repository_is_answered_so(harness: Any) -> None:
    """Asking for a PR in a conversation without a repository runs, and says no PR was
    opened; "!pr" alone there fails with push_refused."""
    h = harness()
    result = await h.run("r1", "!pr write a.txt x", session_key="s")
    assert result.status == "succeeded"
    assert result.answer.endswith("No pull request: this conversation names no repository.")
    alone = await h.run("r2", "!pr", session_key="s")
    assert alone.error is not None and alone.error["code"] == "push_refused"


async def test_a_root_inside_a_checkout_never_uses_the_checkout(
    harness: Any, repo: str, tmp_path: Path
) -> None:
    """With WORKSPACE_ROOT inside another git checkout, a conversation whose worktree
    lost its .git gets a fresh worktree, and the checkout around the root is untouched."""
    outer = tmp_path / "outer"
    git("init", "--quiet", str(outer))
    h = harness(WORKSPACE_ROOT=outer / "ws")
    await h.run("r1", "write a.txt one", session_key="s", repo=repo)
    first = Path(h.engine.requests[0].workdir or "")
    (first / ".git").unlink()
    result = await h.run("r2", "write b.txt two", session_key="s")
    assert result.status == "succeeded", result
    assert h.workspace_event("r2")["files"] == ["b.txt"]
    assert git("-C", str(outer), "status", "--porcelain", "--ignored") in (
        "",
        "!! ws/\n",
        "?? ws/\n",
    )


async def test_a_diff_that_cannot_be_taken_leaves_the_runs_answer_standing(
    harness: Any, repo: str
) -> None:
    """When git cannot read the worktree after the run, the run still succeeds with its
    answer, and says its changes could not be recorded."""
    h = harness()
    result = await h.run("r1", "unlink .git", session_key="s", repo=repo)
    assert result.status == "succeeded"
    assert result.answer.startswith("done\n\n(what the run changed could not be recorded:")
    (event,) = [e for e in h.events["r1"] if e["kind"] == "workspace"]
    assert event["error"]["code"] == "git_failed"
