"""Repository references, names and checks for workspaces: pure functions, no I/O.

Everything here takes user text (a prompt, a ``repo`` field, an ``X-Repo`` header) and
turns it into something safe to hand to git: a :class:`RepoRef` whose URL uses an
allowed transport, a branch name of ``codex/<slug>``, a directory name that is a hash.
:mod:`executor.workspace` does the git work with them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

#: Transports accepted unless ``WORKSPACE_ALLOW_PROTOCOLS`` adds more. Never ``file``
#: (a prompt could make git read the executor's own files) nor ``ext`` (runs commands).
DEFAULT_PROTOCOLS: tuple[str, ...] = ("https", "ssh")
#: Never allowed, whatever the setting says.
FORBIDDEN_PROTOCOLS: frozenset[str] = frozenset({"file", "ext", "fd"})
BRANCH_PREFIX = "codex/"

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
_SHORT_RE = re.compile(rf"^(?P<owner>{_NAME})/(?P<name>{_NAME})$")
_SCP_RE = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*):(?P<path>[^/:].*)$"
)
_PATH_RE = re.compile(r"^[A-Za-z0-9._~/-]+$")
_BRANCH_RE = re.compile(r"^[A-Za-z0-9._/-]+$")
#: A git URL anywhere in a prompt (any scheme: a refused one must be seen to be refused).
_URL_IN_TEXT = re.compile(r"(?:\b[a-z][a-z0-9+.-]*://|\bext::)[^\s<>\"'`]+", re.IGNORECASE)
_SCP_IN_TEXT = re.compile(r"\b[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._~/-]+\.git\b")
_CREDENTIALS_RE = re.compile(r"([a-z][a-z0-9+.-]*://)([^/@\s:]*):[^/@\s]*@", re.IGNORECASE)


class RepoError(ValueError):
    """User text names a repository that may not be used; the message says why."""


@dataclass(frozen=True)
class RepoRef:
    """A repository a run works on: where to fetch it, and the branch to start from."""

    url: str
    host: str
    path: str  # "owner/name", without ".git"
    branch: str | None = None

    @property
    def display(self) -> str:
        """How replies name it: ``owner/name`` on its host (no credentials, ever)."""
        return f"{self.host}/{self.path}"


def check_branch(branch: str) -> str:
    """``branch`` when it is a plain branch name git accepts; RepoError otherwise."""
    if (
        not branch
        or len(branch) > 200
        or not _BRANCH_RE.match(branch)
        or branch.startswith(("-", "/", "."))
        or branch.endswith(("/", ".", ".lock"))
        or ".." in branch
        or "//" in branch
        or "/." in branch
    ):
        raise RepoError(f"{branch!r} is not a branch name this executor accepts")
    return branch


def _split_branch(text: str) -> tuple[str, str | None]:
    """``repo@branch`` -> (repo, branch): the first ``@`` in the repository's path (not
    a URL's ``user@`` nor an scp-like name's), so a branch may hold slashes."""
    if "://" in text:
        start = text.find("/", text.find("://") + 3)
    else:
        colon, slash = text.find(":"), text.find("/")
        start = colon if colon != -1 and (slash == -1 or colon < slash) else 0
    at = text.find("@", max(start, 0)) if start != -1 else -1
    if at != -1:
        return text[:at], check_branch(text[at + 1 :])
    return text, None


def _clean_path(path: str) -> str:
    path = path.strip("/").removesuffix(".git").rstrip("/")
    if (
        not path
        or not _PATH_RE.match(path)
        or any(part in ("", ".", "..") or part.startswith("-") for part in path.split("/"))
    ):
        raise RepoError(f"{path!r} is not a repository path this executor accepts")
    return path


def parse_repo(
    text: str,
    *,
    default_host: str = "github.com",
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS,
) -> RepoRef:
    """A repository reference (``owner/repo``, ``owner/repo@branch``, an https/ssh URL
    or ``user@host:path``) checked and resolved; RepoError says what is wrong.

    ``owner/repo`` means ``https://<default_host>/owner/repo.git``. Credentials in a URL
    are refused: the executor pushes with its host's own git credentials.
    """
    text = text.strip()
    if not text or len(text) > 500 or any(c.isspace() or ord(c) < 32 for c in text):
        raise RepoError("a repository is named as owner/repo or a git URL, in one word")
    if "::" in text.split("/", 1)[0]:
        raise RepoError("git's remote-helper syntax (transport::address) is not accepted")
    base, branch = _split_branch(text)
    if "://" in base:
        parts = urlsplit(base)
        scheme = parts.scheme.lower()
        if scheme in FORBIDDEN_PROTOCOLS or scheme not in protocols:
            allowed = ", ".join(f"{p}://" for p in protocols)
            raise RepoError(f"{scheme}:// repositories are not accepted here (allowed: {allowed})")
        if parts.password is not None or (parts.username and scheme != "ssh"):
            raise RepoError("a repository URL may not carry credentials: the executor uses its own")
        host = parts.hostname or ""
        if not host or host.startswith("-") or parts.query or parts.fragment:
            raise RepoError(f"{text!r} is not a repository URL this executor accepts")
        netloc = f"{host}:{parts.port}" if parts.port else host
        path = _clean_path(parts.path)
        user = f"{parts.username}@" if parts.username else ""
        return RepoRef(f"{scheme}://{user}{netloc}/{path}.git", netloc, path, branch)
    if m := _SHORT_RE.match(base.removesuffix(".git")):
        host = default_host.strip().strip("/")
        path = _clean_path(f"{m['owner']}/{m['name']}")
        if "https" not in protocols:
            raise RepoError("https:// repositories are not accepted here")
        return RepoRef(f"https://{host}/{path}.git", host, path, branch)
    if m := _SCP_RE.match(base):
        if "ssh" not in protocols:
            raise RepoError("ssh repositories are not accepted here")
        host = m["host"]
        if host.startswith("-"):
            raise RepoError(f"{text!r} is not a repository this executor accepts")
        path = _clean_path(m["path"])
        user = f"{m['user']}@" if m["user"] else ""
        return RepoRef(f"{user}{host}:{path}.git", host, path, branch)
    raise RepoError(f"{text!r} is not owner/repo, owner/repo@branch or a git URL")


def repo_in_prompt(prompt: str, default_host: str = "github.com") -> str | None:
    """The repository a prompt names, as written: ``owner/repo[@branch]`` as its first
    word, or the first git URL in it (any scheme, so a forbidden one is refused rather
    than ignored). None when it names none."""
    words = prompt.split(None, 1)
    if words:
        first = words[0].rstrip(":,")
        base, _, _ = first.partition("@")
        if _SHORT_RE.match(base.removesuffix(".git")):
            return first
    for pattern in (_URL_IN_TEXT, _SCP_IN_TEXT):
        for match in pattern.finditer(prompt):
            found = match.group(0).rstrip(".,;:)]}")
            scheme = found.split(":", 1)[0].lower()
            if scheme in ("http", "https") and not _looks_like_repo(found, default_host):
                continue  # a web page named in passing, not a repository
            return found
    return None


def _looks_like_repo(url: str, default_host: str) -> bool:
    parts = urlsplit(url)
    path = parts.path.strip("/")
    if path.endswith(".git"):
        return True
    # A page of the default forge that is a repository's home: https://github.com/o/r
    return parts.netloc.lower() == default_host.lower() and path.count("/") == 1


def allowed(ref: RepoRef, patterns: list[str], default_host: str) -> bool:
    """Whether ``ref`` matches one of ``WORKSPACE_ALLOWED_REPOS`` (empty: any).

    A pattern is ``host/owner/name`` or, for the default host, ``owner/name``; ``*``
    matches within one part (``acme/*``, ``gitlab.example.com/team/*``).
    """
    if not patterns:
        return True
    names = [ref.display.lower()]
    if ref.host.lower() == default_host.lower():
        names.append(ref.path.lower())
    for pattern in patterns:
        pat = pattern.strip().lower().removesuffix(".git")
        for name in names:
            if pat.count("/") == name.count("/") and all(
                fnmatch.fnmatchcase(n, p)
                for n, p in zip(name.split("/"), pat.split("/"), strict=True)
            ):
                return True
    return False


def key_of(conversation: str) -> str:
    """A conversation's directory name: a hash, whatever the user wrote."""
    return hashlib.sha256(conversation.encode()).hexdigest()[:16]


def branch_for(conversation: str, prompt: str) -> str:
    """``codex/<slug>``: a few words of the first prompt and a hash of the conversation."""
    words = re.findall(r"[a-z0-9]+", prompt.lower())[:4]
    slug = "-".join(words)[:40].strip("-")
    suffix = key_of(conversation)[:6]
    return f"{BRANCH_PREFIX}{slug}-{suffix}" if slug else f"{BRANCH_PREFIX}{suffix}"


def redact_credentials(text: str) -> str:
    """``text`` with the password part of any URL's credentials masked."""
    return _CREDENTIALS_RE.sub(r"\1\2:***@", text)


def numstat_summary(lines: list[str]) -> tuple[int, int, int]:
    """(files, insertions, deletions) from ``git diff --numstat`` lines."""
    files = added = removed = 0
    for line in lines:
        parts = line.split("\t", 2)
        if len(parts) != 3:
            continue
        files += 1
        added += int(parts[0]) if parts[0].isdigit() else 0
        removed += int(parts[1]) if parts[1].isdigit() else 0
    return files, added, removed


def summary_line(files: int, added: int, removed: int) -> str:
    """ "3 files changed, +40 -12" (or "no changes")."""
    if not files:
        return "no changes"
    return f"{files} file{'s' if files != 1 else ''} changed, +{added} -{removed}"


def split_pr_command(prompt: str) -> tuple[bool, str]:
    """(asked for a PR, the rest): ``!pr`` at the start of a chat message asks for one."""
    stripped = prompt.lstrip()
    if stripped[:3].lower() == "!pr" and (len(stripped) == 3 or stripped[3].isspace()):
        return True, stripped[3:].strip()
    return False, prompt
