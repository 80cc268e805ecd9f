"""A git forge for tests: bare repositories served over HTTP by git's own http-backend.

`git http-backend` is git's smart-HTTP CGI program; a small aiohttp handler runs it per
request on 127.0.0.1, so fetch and push go through the real protocol. Executors refuse
http:// by default, so tests allow it with ``WORKSPACE_ALLOW_PROTOCOLS=http``.

Fixtures: `git_server` (a running server; ``make_repo`` creates a bare repository with
a first commit) and `fake_forge` (GitHub's and GitLab's pull-request APIs, recording).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git (for a test's own checks) and return its stdout; raises on failure."""
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


class GitHttpServer:
    """Serves the bare repositories under ``root`` at ``http://127.0.0.1:<port>/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, name: str) -> str:
        """The clone URL of repository ``name`` (``owner/repo``)."""
        return f"http://127.0.0.1:{self.port}/{name}.git"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def make_repo(self, name: str, files: dict[str, str], branch: str = "main") -> Path:
        """A bare repository ``name`` whose ``branch`` holds one commit of ``files``."""
        bare = self.root / f"{name}.git"
        git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(bare))
        git("-C", str(bare), "config", "http.receivepack", "true")
        seed = self.root / "seed" / name
        git("init", "--quiet", f"--initial-branch={branch}", str(seed))
        for path, text in files.items():
            target = seed / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        git("-C", str(seed), "add", "-A")
        git("-C", str(seed), "commit", "--quiet", "-m", "first")
        git("-C", str(seed), "push", "--quiet", str(bare), f"{branch}:{branch}")
        return bare

    def refuse_pushes(self, name: str, reason: str) -> None:
        """Make ``name`` refuse every push with ``reason`` (a pre-receive hook)."""
        hook = self.root / f"{name}.git" / "hooks" / "pre-receive"
        hook.write_text(f"#!/bin/sh\necho '{reason}' >&2\nexit 1\n")
        hook.chmod(0o755)

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        env = {
            **os.environ,
            **GIT_ENV,
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": request.path,
            "REQUEST_METHOD": request.method,
            "QUERY_STRING": request.query_string,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_USER": "tester",
            "GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": request.headers.get("Content-Encoding", ""),
        }
        proc = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

        async def feed() -> None:
            # http-backend may be done before it read the whole request (a negotiation
            # that ends early): a pipe it closed is not this server's error.
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
                proc.stdin.write(body)
                await proc.stdin.drain()
                proc.stdin.close()

        _, out, _ = await asyncio.gather(feed(), proc.stdout.read(), proc.stderr.read())
        await proc.wait()
        head, _, payload = out.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.partition(b"\n\n")
        status = 200
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers[name.strip()] = value.strip()
        return web.Response(status=status, body=payload, headers=headers)


@dataclass
class ForgeCall:
    """One pull-request call the fake forge received."""

    forge: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeForge:
    """GitHub's ``POST /repos/{o}/{r}/pulls`` and GitLab's ``POST
    /projects/{id}/merge_requests``, recording each call and answering with a link."""

    calls: list[ForgeCall] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def github_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/github"

    @property
    def gitlab_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/gitlab"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/github/repos/{owner}/{repo}/pulls", self._github)
        app.router.add_post("/gitlab/projects/{project}/merge_requests", self._gitlab)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _github(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(ForgeCall("github", request.path, dict(request.headers), body))
        number = len(self.calls)
        owner, repo = request.match_info["owner"], request.match_info["repo"]
        url = f"https://github.example/{owner}/{repo}/pull/{number}"
        return web.json_response({"number": number, "html_url": url}, status=201)

    async def _gitlab(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(ForgeCall("gitlab", request.raw_path, dict(request.headers), body))
        number = len(self.calls)
        url = f"https://gitlab.example/mr/{number}"
        return web.json_response({"iid": number, "web_url": url}, status=201)


@pytest.fixture
async def git_server(tmp_path: Path) -> AsyncIterator[GitHttpServer]:
    """A git HTTP server on 127.0.0.1 serving bare repositories from a fresh directory."""
    root = tmp_path / "forge"
    root.mkdir()
    server = GitHttpServer(root)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def fake_forge() -> AsyncIterator[FakeForge]:
    """Fake GitHub and GitLab pull-request APIs on 127.0.0.1."""
    forge = FakeForge()
    await forge.start()
    try:
        yield forge
    finally:
        await forge.close()
