"""A workspace per conversation: a git worktree on its own branch, or a scratch directory.

Under ``WORKSPACE_ROOT`` (on the machine codex runs on: this one, or the SSH host;
every git command goes through the run's transport)::

    mirrors/<host>/<owner>/<name>.git   one bare mirror per repository, fetched per run
    trees/<key>/                        a conversation's worktree (branch codex/<slug>)
    scratch/<key>/                      a conversation's empty directory (no repository)
    meta/<key>.conf                     what a conversation's workspace is (git config)
    patches/<key>-<time>.patch          unpushed changes saved before a clean-up
    tmp/                                throw-away git indexes for snapshots

``<key>`` is a hash of the conversation (the hub's session key), never user text. A
run's diff is taken between snapshots of the worktree (its tree as ``git add -A``
would make it, written through a throw-away index, so the real index and HEAD are
untouched): where the run started, where it ended, and the conversation's base.

Errors: :class:`WorkspaceError` (``code``: ``repo_refused``, ``git_failed``,
``push_refused``, ``pr_failed``); its message never holds a credential.
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from executor.settings import ExecutorSettings
from executor.transport import ProcessResult, Transport
from executor.workspace_names import (
    BRANCH_PREFIX,
    DEFAULT_PROTOCOLS,
    FORBIDDEN_PROTOCOLS,
    RepoError,
    RepoRef,
    allowed,
    branch_for,
    key_of,
    numstat_summary,
    parse_repo,
    redact_credentials,
    summary_line,
)

log = logging.getLogger(__name__)

#: How long a local git command (not a fetch or push) may take.
GIT_TIMEOUT_S = 120.0
#: The most of a diff carried to the hub; the rest is cut, and said so.
MAX_DIFF_CHARS = 512 * 1024
#: How long a forge's API may take to open a pull request.
FORGE_TIMEOUT_S = 30.0


class WorkspaceError(Exception):
    """A workspace could not be made or published; ``code`` names the kind."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(redact_credentials(message))
        self.code = code


@dataclass
class Workspace:
    """Where a run works, and what it needs to tell what it changed."""

    key: str
    workdir: str
    repo: RepoRef | None = None
    branch: str | None = None
    base_branch: str | None = None
    base: str | None = None  # the commit the conversation's branch started from
    start_tree: str | None = None  # the worktree as this run found it
    title: str = ""
    pr_url: str | None = None


@dataclass
class Changes:
    """What a run changed (against its start) and its conversation (against the base)."""

    run_diff: str = ""
    diff: str = ""
    summary: str = "no changes"
    run_summary: str = "no changes"
    truncated: bool = False
    files: list[str] = field(default_factory=list)


@dataclass
class Published:
    """A pushed branch and, when a forge was reached, its pull request."""

    branch: str
    commit: str
    pr_url: str | None = None
    note: str = ""


def _cut(text: str) -> tuple[str, bool]:
    if len(text) <= MAX_DIFF_CHARS:
        return text, False
    return text[:MAX_DIFF_CHARS] + "\n[diff cut at 512 KiB]\n", True


class Workspaces:
    """Makes, reuses, diffs, publishes and cleans up workspaces on one transport."""

    def __init__(
        self,
        settings: ExecutorSettings,
        transport: Transport,
        *,
        root: str | None = None,
        clock: Callable[[], float] = time.time,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.root = root or self.default_root(settings)
        self.clock = clock
        self._http = http
        self._mirror_locks: dict[str, asyncio.Lock] = {}
        self._key_locks: dict[str, asyncio.Lock] = {}
        #: Conversations with a run in progress: clean-up never touches them.
        self.busy: dict[str, int] = {}
        extra = [p.strip().lower() for p in settings.workspace_allow_protocols.split(",")]
        self.protocols = tuple(
            dict.fromkeys(
                [*DEFAULT_PROTOCOLS, *(p for p in extra if p and p not in FORBIDDEN_PROTOCOLS)]
            )
        )
        self.patterns = [p for p in settings.workspace_allowed_repos.replace(",", " ").split()]

    @staticmethod
    def default_root(settings: ExecutorSettings) -> str:
        """``WORKSPACE_ROOT``, else beside the node's data (over SSH: in the remote home)."""
        if settings.workspace_root is not None:
            return str(settings.workspace_root.expanduser())
        if settings.exec_transport == "ssh":
            return ".codex-hub/workspaces"
        return str(settings.hub_db.parent / "workspaces")

    # --- git ----------------------------------------------------------------------------

    def _git_env(self) -> dict[str, str]:
        return {
            # Never ask a person for a password: there is nobody at this terminal.
            "GIT_TERMINAL_PROMPT": "0",
            "GCM_INTERACTIVE": "never",
            # The transports git may use, whatever a URL or a submodule asks for.
            "GIT_ALLOW_PROTOCOL": ":".join(self.protocols),
            "LC_ALL": "C",
            # A worktree that is gone must not be taken for a repository above the
            # root (a WORKSPACE_ROOT inside a checkout): git never looks above it.
            **({"GIT_CEILING_DIRECTORIES": self.root} if posixpath.isabs(self.root) else {}),
        }

    async def _run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float = GIT_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
    ) -> tuple[ProcessResult, list[str]]:
        lines: list[str] = []
        result = await self.transport.run(
            list(argv),
            env_overrides={**self._git_env(), **(env or {})},
            cwd=None,
            on_stdout_line=lines.append,
            timeout_s=timeout_s,
        )
        return result, lines

    async def _git(
        self,
        *args: str,
        timeout_s: float = GIT_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
        code: str = "git_failed",
        what: str = "",
    ) -> list[str]:
        result, lines = await self._run(["git", *args], timeout_s=timeout_s, env=env)
        if result.timed_out:
            raise WorkspaceError(
                code, f"{what or 'git ' + args[0]} took longer than {timeout_s:g} s"
            )
        if result.exit_code != 0:
            reason = result.stderr_tail.strip()[-1500:] or f"exit code {result.exit_code}"
            raise WorkspaceError(code, f"{what or 'git ' + ' '.join(args[:3])} failed: {reason}")
        return lines

    async def _ok(self, *args: str) -> bool:
        result, _ = await self._run(["git", *args])
        return result.exit_code == 0

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _meta(self, key: str) -> str:
        return self._path("meta", f"{key}.conf")

    async def _meta_read(self, key: str) -> dict[str, str]:
        result, lines = await self._run(["git", "config", "--file", self._meta(key), "ws.json"])
        if result.exit_code != 0 or not lines:
            return {}
        try:
            data = json.loads(lines[0])
        except ValueError:
            return {}
        return {f"ws.{k}": str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    async def _meta_set(self, key: str, **values: str) -> None:
        # One JSON value in one git config file: a single git call per change (the
        # warm start is a chain of them; see docs/benchmarks.md).
        meta = {k.removeprefix("ws."): v for k, v in (await self._meta_read(key)).items()}
        meta.update(values)
        text = json.dumps(meta, separators=(",", ":"))
        await self._git("config", "--file", self._meta(key), "ws.json", text)

    def _mirror_path(self, ref: RepoRef) -> str:
        host = ref.host.replace(":", "_")
        return self._path("mirrors", host, f"{ref.path}.git")

    # --- making a workspace -------------------------------------------------------------

    def resolve(self, text: str) -> RepoRef:
        """User text as a repository this executor may use; WorkspaceError if not."""
        try:
            ref = parse_repo(
                text, default_host=self.settings.git_default_host, protocols=self.protocols
            )
        except RepoError as exc:
            raise WorkspaceError("repo_refused", str(exc)) from None
        if not allowed(ref, self.patterns, self.settings.git_default_host):
            raise WorkspaceError(
                "repo_refused", f"{ref.display} is not in WORKSPACE_ALLOWED_REPOS on this executor"
            )
        return ref

    async def prepare(self, conversation: str, repo: RepoRef | None, prompt: str) -> Workspace:
        """The conversation's workspace, made or reused, marked busy until :meth:`release`."""
        key = key_of(conversation)
        self.busy[key] = self.busy.get(key, 0) + 1
        try:
            async with self._key_locks.setdefault(key, asyncio.Lock()):
                return await self._prepare(key, repo, prompt)
        except BaseException:
            self.release(key)
            raise

    def release(self, key: str) -> None:
        """The run in ``key``'s workspace has ended."""
        left = self.busy.get(key, 0) - 1
        if left > 0:
            self.busy[key] = left
        else:
            self.busy.pop(key, None)

    async def _prepare(self, key: str, repo: RepoRef | None, prompt: str) -> Workspace:
        now = str(int(self.clock()))
        await self._mkdirs()
        meta = await self._meta_read(key)
        if repo is None and meta.get("ws.kind") == "repo":
            # A follow-up that names no repository continues in the conversation's own.
            repo = self.resolve(meta["ws.url"] + (f"@{meta['ws.basebranch']}"))
        if repo is None:
            workdir = self._path("scratch", key)
            await self._run(["mkdir", "-p", workdir])
            await self._meta_set(key, kind="scratch", lastused=now)
            return Workspace(key, workdir)
        mirror = self._mirror_path(repo)
        await self._fetch(repo, mirror)
        workdir = self._path("trees", key)
        if meta.get("ws.kind") == "repo" and meta.get("ws.url") == repo.url:
            if await self._ok("-C", workdir, "rev-parse", "--is-inside-work-tree"):
                ws = Workspace(
                    key,
                    workdir,
                    repo,
                    meta.get("ws.branch"),
                    meta.get("ws.basebranch"),
                    meta.get("ws.base"),
                    title=meta.get("ws.title", ""),
                    pr_url=meta.get("ws.pr") or None,
                )
                ws.start_tree = await self.snapshot(ws)
                await self._meta_set(key, lastused=now)
                return ws
        elif meta.get("ws.kind") == "repo":
            raise WorkspaceError(
                "repo_refused",
                f"this conversation works on {meta.get('ws.display')}; start a new one "
                f"for {repo.display}",
            )
        base_branch = repo.branch or await self._default_branch(mirror)
        start = f"refs/remotes/origin/{base_branch}"
        if not await self._ok(f"--git-dir={mirror}", "rev-parse", "--verify", "--quiet", start):
            raise WorkspaceError("repo_refused", f"{repo.display} has no branch {base_branch!r}")
        branch = branch_for(key, prompt)
        # Under the mirror's lock: worktrees of one mirror are added one at a time.
        async with self._mirror_locks.setdefault(mirror, asyncio.Lock()):
            # Whatever is left at the path is not a usable worktree (checked above).
            await self.transport.remove_tree(workdir)
            await self._git(f"--git-dir={mirror}", "worktree", "prune")
            await self._git(
                f"--git-dir={mirror}",
                "worktree",
                "add",
                "--quiet",
                "--no-track",
                "-B",
                branch,
                workdir,
                start,
                what="making the worktree",
            )
        base = (await self._git("-C", workdir, "rev-parse", "HEAD"))[0]
        title = " ".join(prompt.split())[:72] or f"Changes by codex-hub on {branch}"
        await self._meta_set(
            key,
            kind="repo",
            url=repo.url,
            display=repo.display,
            mirror=mirror,
            branch=branch,
            basebranch=base_branch,
            base=base,
            title=title,
            lastused=now,
        )
        ws = Workspace(key, workdir, repo, branch, base_branch, base, title=title)
        ws.start_tree = await self._tree_of(workdir, "HEAD")
        return ws

    async def _mkdirs(self) -> None:
        dirs = [self._path(d) for d in ("mirrors", "trees", "scratch", "meta", "patches", "tmp")]
        result, _ = await self._run(["mkdir", "-p", *dirs])
        if result.exit_code != 0:
            raise WorkspaceError(
                "git_failed",
                f"cannot make WORKSPACE_ROOT {self.root}: {result.stderr_tail.strip()}",
            )

    async def _fetch(self, repo: RepoRef, mirror: str) -> None:
        """Make the mirror if there is none, then fetch it; one fetch per mirror at a time."""
        async with self._mirror_locks.setdefault(mirror, asyncio.Lock()):
            if not await self._ok(f"--git-dir={mirror}", "rev-parse", "--is-bare-repository"):
                await self.transport.remove_tree(mirror)
                await self._git("init", "--quiet", "--bare", mirror)
                await self._git(f"--git-dir={mirror}", "remote", "add", "origin", repo.url)
            now = str(int(self.clock()))
            await self._git(f"--git-dir={mirror}", "config", "codexhub.lastused", now)
            timeout = self.settings.workspace_fetch_timeout_s
            await self._git(
                f"--git-dir={mirror}",
                "fetch",
                "--quiet",
                "--prune",
                "origin",
                timeout_s=timeout,
                what=f"fetching {repo.display}",
            )
            if not await self._ok(
                f"--git-dir={mirror}", "symbolic-ref", "--quiet", "refs/remotes/origin/HEAD"
            ):
                await self._git(
                    f"--git-dir={mirror}",
                    "remote",
                    "set-head",
                    "origin",
                    "--auto",
                    timeout_s=timeout,
                )

    async def _default_branch(self, mirror: str) -> str:
        ref = (await self._git(f"--git-dir={mirror}", "symbolic-ref", "refs/remotes/origin/HEAD"))[
            0
        ]
        return ref.removeprefix("refs/remotes/origin/")

    # --- what changed -------------------------------------------------------------------

    async def _tree_of(self, workdir: str, rev: str) -> str:
        return (await self._git("-C", workdir, "rev-parse", f"{rev}^{{tree}}"))[0]

    async def snapshot(self, ws: Workspace) -> str:
        """The worktree's files as a tree object (``git add -A`` into a throw-away index)."""
        index = self._path("tmp", f"{ws.key}-{int(self.clock() * 1000)}.index")
        env = {"GIT_INDEX_FILE": index}
        try:
            await self._git("-C", ws.workdir, "read-tree", "HEAD", env=env)
            await self._git("-C", ws.workdir, "add", "-A", env=env)
            return (await self._git("-C", ws.workdir, "write-tree", env=env))[0]
        finally:
            await self.transport.remove_tree(index)

    async def changes(self, ws: Workspace) -> Changes:
        """What the run changed since it started, and the conversation since its base."""
        if ws.repo is None or ws.base is None or ws.start_tree is None:
            return Changes()
        end = await self.snapshot(ws)
        diff, cut1 = _cut(await self._diff(ws.workdir, ws.base, end))
        run_diff, cut2 = _cut(await self._diff(ws.workdir, ws.start_tree, end))
        stat = await self._git("-C", ws.workdir, "diff", "--numstat", ws.base, end)
        run_stat = await self._git("-C", ws.workdir, "diff", "--numstat", ws.start_tree, end)
        return Changes(
            run_diff=run_diff,
            diff=diff,
            summary=summary_line(*numstat_summary(stat)),
            run_summary=summary_line(*numstat_summary(run_stat)),
            truncated=cut1 or cut2,
            files=[line.split("\t", 2)[2] for line in stat if line.count("\t") >= 2],
        )

    async def _diff(self, workdir: str, a: str, b: str) -> str:
        lines = await self._git("-C", workdir, "diff", "--no-color", "--no-ext-diff", a, b)
        return "\n".join(lines) + "\n" if lines else ""

    # --- commit, push, pull request -----------------------------------------------------

    async def publish(self, ws: Workspace, run_id: str, body: str = "") -> Published:
        """Commit the conversation's changes, push its branch, open (or find) its PR."""
        if ws.repo is None or not ws.branch:
            raise WorkspaceError("push_refused", "this run has no repository to push")
        if not ws.branch.startswith(BRANCH_PREFIX) or ws.branch == ws.base_branch:
            raise WorkspaceError(
                "push_refused", f"refusing to push {ws.branch}: only codex/ branches are pushed"
            )
        await self._git("-C", ws.workdir, "add", "-A")
        staged, _ = await self._run(["git", "-C", ws.workdir, "diff", "--cached", "--quiet"])
        name, _, email = self.settings.workspace_git_author.partition("<")
        name, email = (
            name.strip() or "codex-hub",
            email.rstrip(">").strip() or "codex-hub@localhost",
        )
        if staged.exit_code == 1:
            message = self.settings.workspace_commit_message.replace("\\n", "\n").format(
                title=ws.title or ws.branch, run_id=run_id, branch=ws.branch
            )
            await self._git(
                "-C",
                ws.workdir,
                "-c",
                f"user.name={name}",
                "-c",
                f"user.email={email}",
                "commit",
                "--quiet",
                "--no-verify",
                "-m",
                message,
            )
        commit = (await self._git("-C", ws.workdir, "rev-parse", "HEAD"))[0]
        if commit == ws.base:
            raise WorkspaceError(
                "push_refused", "nothing to push: the conversation changed nothing"
            )
        # An explicit refspec without '+': git refuses anything but a fast-forward.
        await self._git(
            "-C",
            ws.workdir,
            "push",
            "--porcelain",
            "origin",
            f"refs/heads/{ws.branch}:refs/heads/{ws.branch}",
            timeout_s=self.settings.workspace_fetch_timeout_s,
            code="push_refused",
            what=f"pushing {ws.branch} to {ws.repo.display}",
        )
        await self._meta_set(ws.key, pushed=commit)
        published = Published(ws.branch, commit, ws.pr_url)
        if published.pr_url is None:
            published.pr_url, published.note = await self._open_pr(ws, body)
            if published.pr_url:
                ws.pr_url = published.pr_url
                await self._meta_set(ws.key, pr=published.pr_url)
        return published

    def _forge(self, ref: RepoRef) -> str:
        forge = self.settings.workspace_forge
        if forge != "auto":
            return forge
        host = ref.host.lower()
        if host == "github.com" or self.settings.workspace_github_api_url:
            return "github"
        if "gitlab" in host or self.settings.workspace_gitlab_api_url:
            return "gitlab"
        return "none"

    async def _open_pr(self, ws: Workspace, body: str) -> tuple[str | None, str]:
        assert ws.repo is not None and ws.branch and ws.base_branch
        forge = self._forge(ws.repo)
        if forge == "none":
            return None, "no pull request: set WORKSPACE_FORGE for this host"
        title = ws.title or ws.branch
        if forge == "github":
            token = self.settings.workspace_github_token.get_secret_value()
            base_url = self.settings.workspace_github_api_url or "https://api.github.com"
            url = f"{base_url.rstrip('/')}/repos/{ws.repo.path}/pulls"
            headers = {"Accept": "application/vnd.github+json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            payload: dict[str, Any] = {
                "title": title,
                "head": ws.branch,
                "base": ws.base_branch,
                "body": body,
            }
            link = "html_url"
        else:
            token = self.settings.workspace_gitlab_token.get_secret_value()
            base_url = self.settings.workspace_gitlab_api_url or f"https://{ws.repo.host}/api/v4"
            url = f"{base_url.rstrip('/')}/projects/{quote(ws.repo.path, safe='')}/merge_requests"
            headers = {"PRIVATE-TOKEN": token} if token else {}
            payload = {
                "title": title,
                "source_branch": ws.branch,
                "target_branch": ws.base_branch,
                "description": body,
            }
            link = "web_url"
        client = self._http or httpx.AsyncClient(timeout=FORGE_TIMEOUT_S)
        try:
            response = await client.post(url, json=payload, headers=headers)
        except httpx.HTTPError as exc:
            raise WorkspaceError(
                "pr_failed", f"the {forge} API could not be reached: {exc}"
            ) from None
        finally:
            if self._http is None:
                await client.aclose()
        if response.status_code >= 300:
            detail = response.text[:500]
            raise WorkspaceError(
                "pr_failed",
                f"the {forge} API refused the pull request ({response.status_code}): {detail}",
            )
        data = response.json()
        return (str(data.get(link)) if isinstance(data, dict) and data.get(link) else None), ""

    # --- clean-up -----------------------------------------------------------------------

    async def sweep(self) -> list[str]:
        """Remove workspaces idle past ``WORKSPACE_TTL`` (then the oldest while the root is
        over ``WORKSPACE_MAX_GB``) and mirrors no workspace uses that are idle too; never
        one with a run in progress. Unpushed changes are saved as a patch first.
        Returns the keys removed."""
        result, names = await self._run(["ls", "-1", self._path("meta")])
        if result.exit_code != 0:
            return []
        now = self.clock()
        ttl = self.settings.workspace_ttl
        entries: list[tuple[float, str, dict[str, str]]] = []
        for name in names:
            if not name.endswith(".conf"):
                continue
            key = name.removesuffix(".conf")
            meta = await self._meta_read(key)
            entries.append((float(meta.get("ws.lastused", "0") or 0), key, meta))
        entries.sort()
        removed: list[str] = []
        limit_kb = self.settings.workspace_max_gb * 1024 * 1024
        size_kb = await self._size_kb(self.root)
        for last, key, meta in entries:
            if key in self.busy:
                continue
            expired = now - last > ttl
            if not expired and size_kb <= limit_kb:
                continue
            async with self._key_locks.setdefault(key, asyncio.Lock()):
                if key in self.busy:
                    continue
                freed = await self._remove(key, meta)
            removed.append(key)
            size_kb -= freed
        await self._sweep_mirrors(entries, removed, now)
        return removed

    async def _size_kb(self, path: str) -> float:
        result, lines = await self._run(["du", "-sk", path])
        if result.exit_code != 0 or not lines:
            return 0.0
        return float(lines[-1].split()[0])

    async def _remove(self, key: str, meta: dict[str, str]) -> float:
        if meta.get("ws.kind") == "repo":
            workdir = self._path("trees", key)
            freed = await self._size_kb(workdir)
            await self._save_patch(key, workdir, meta)
            mirror = meta.get("ws.mirror", "")
            await self.transport.remove_tree(workdir)
            if mirror:
                await self._run(["git", f"--git-dir={mirror}", "worktree", "prune"])
                branch = meta.get("ws.branch", "")
                if branch.startswith(BRANCH_PREFIX):
                    await self._run(["git", f"--git-dir={mirror}", "branch", "-D", branch])
        else:
            workdir = self._path("scratch", key)
            freed = await self._size_kb(workdir)
            await self.transport.remove_tree(workdir)
        await self.transport.remove_tree(self._meta(key))
        log.info("workspace %s removed (idle)", key)
        return freed

    async def _save_patch(self, key: str, workdir: str, meta: dict[str, str]) -> None:
        since = meta.get("ws.pushed") or meta.get("ws.base")
        if not since or not await self._ok("-C", workdir, "rev-parse", "--is-inside-work-tree"):
            return
        ws = Workspace(key, workdir)
        tree = await self.snapshot(ws)
        stat = await self._git("-C", workdir, "diff", "--numstat", since, tree)
        if not stat:
            return
        patch = self._path("patches", f"{key}-{int(self.clock())}.patch")
        await self._git("-C", workdir, "diff", "--binary", f"--output={patch}", since, tree)
        log.info("workspace %s had unpushed changes: saved as %s", key, patch)

    async def _sweep_mirrors(
        self, entries: list[tuple[float, str, dict[str, str]]], removed: list[str], now: float
    ) -> None:
        used = {m.get("ws.mirror") for _, k, m in entries if k not in removed}
        result, hosts = await self._run(["ls", "-1", self._path("mirrors")])
        if result.exit_code != 0:
            return
        for host in hosts:
            found, paths = await self._run(
                [
                    "find",
                    self._path("mirrors", host),
                    "-maxdepth",
                    "3",
                    "-name",
                    "*.git",
                    "-type",
                    "d",
                ]
            )
            for mirror in paths if found.exit_code == 0 else []:
                if mirror in used:
                    continue
                # Under the mirror's lock: a run that is fetching it marks it used first.
                async with self._mirror_locks.setdefault(mirror, asyncio.Lock()):
                    _, last = await self._run(
                        ["git", f"--git-dir={mirror}", "config", "codexhub.lastused"]
                    )
                    if now - float(last[0] if last else 0) > self.settings.workspace_ttl:
                        await self.transport.remove_tree(mirror)
                        log.info("mirror %s removed (unused)", mirror)
