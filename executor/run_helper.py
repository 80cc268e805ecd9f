"""The run helper: a POSIX sh script through which both transports start codex.

It is what makes "no process of a run outlives it" hold even when the executor itself
dies. Locally codex is started as ``/bin/sh -c HELPER codex-hub run ...`` with a pipe on
the helper's stdin (`executor.transport_local`); over SSH the same words go through
sshd, the channel being that pipe (`executor.transport_ssh`). Pure text and words here;
the transports start the processes, and follow them the same way (`executor.run_io`).

``run TAG GRACE_MS DIR N NAME=VALUE... ARGV...``:

- changes to DIR (when not empty), exports the N overrides and ``CODEX_HUB_PROCESS_TAG
  =TAG`` (every process of the run inherits it, so leftovers are found after they were
  re-parented), and starts ARGV with stdin from /dev/null under ``setsid``: codex leads
  a process group and session of its own. Its first stdout line is ``codex-hub-pid PID``
  (or ``codex-hub-error REASON`` when ARGV or DIR is unusable); codex's lines follow.
- waits for codex, writes ``codex-hub-exit STATUS`` (its exit status: the transport
  answers the caller there, without waiting for the reap), then *reaps*: SIGTERM to
  codex's group and to the group of every process still carrying the tag (codex's
  sandboxed commands start sessions of their own), a second round after GRACE_MS for
  late ones, SIGKILL after another GRACE_MS, and exits with codex's status only once
  nothing of the run is left.
- a *watchdog* reads the helper's stdin: EOF there (the transport closed the pipe to
  stop the run, or the executor died, SIGKILL included, and the kernel closed it) reaps
  at once (codex's own pid first, in case it has not reached ``setsid`` yet). While the
  watchdog reaps it ignores SIGTERM and the helper waits for it, so one run is never
  reaped by two rounds of SIGTERM at once (a second SIGTERM would cut a shell's EXIT
  trap short).

``serve TAG GRACE_MS DIR N NAME=VALUE... ARGV...`` is ``run`` for a long-lived program
that reads its stdin (codex's app-server): ARGV gets the helper's stdin, the pipe,
and the helper keeps no copy of it and has no watchdog. EOF there (the transport
closed the pipe, or the executor died and the kernel closed it) ends the app-server,
which exits on it; the helper then reaps as in ``run``.

``kill TAG PGID GRACE_MS`` reaps from outside (the SSH transport, which cannot signal).

The helper writes nothing but the marker lines, and the exit line with SIGPIPE ignored
(after codex started, so codex does not inherit that), so a closed stdout cannot kill
it half-way through a reap; the watchdog is gone by then, so a transport that closes
the pipe after the exit line does not start a second reap. It needs Linux ``/proc``, a
POSIX ``/bin/sh``, util-linux ``setsid`` and GNU ``grep``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger(__name__)

#: Every process of a run inherits this variable, with a value unique to the run.
TAG_VAR = "CODEX_HUB_PROCESS_TAG"
#: The first stdout line of a run: codex's pid (= its process group), or why it failed.
PID_MARK = "codex-hub-pid "
ERROR_MARK = "codex-hub-error "
#: In ``run`` mode, the last line: codex's exit status, written before the reap.
EXIT_MARK = "codex-hub-exit "
_EXIT_LINE = re.compile(re.escape(EXIT_MARK) + r"([0-9]{1,3})\Z")
#: Reap rounds a helper may need past its grace periods: SIGKILL's own wait, scans.
REAP_SLACK_S = 3.0

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Its arguments arrive as separate words; it expands them only in double quotes.
_HELPER = r"""
read -r s < /proc/$$/stat; s=${s##*) }; s=${s#* }; s=${s#* }; me=${s%% *}
groups() {
  g=
  for f in $2 $(grep -lsxzF "@TAG_VAR@=$1" /proc/[0-9]*/environ); do
    case $f in /proc/*)
      read -r s < "${f%/environ}/stat" || continue
      s=${s##*) }; s=${s#* }; s=${s#* }; f=${s%% *} ;;
    esac
    [ "$f" -gt 1 ] && [ "$f" != "$me" ] && g="$g $f"
  done
  echo $g
}
alive() {
  pat=
  for g in "$@"; do pat="$pat${pat:+|}$g"; done
  [ -n "$pat" ] && cat /proc/[0-9]*/stat 2>/dev/null | grep -qE "\) [^Z] [0-9]+ ($pat) "
}
signal() {
  sig=$1; shift
  for g in "$@"; do kill -s "$sig" -- "-$g"; done
}
wait_gone() {
  n=$(($1 / 20)); shift
  while alive "$@"; do
    [ "$n" -le 0 ] && return 1
    n=$((n - 1)); sleep 0.02
  done
}
reap() {
  if ! grep -qsxzF "@TAG_VAR@=$1" /proc/[0-9]*/environ \
    && ! { [ "$2" -gt 1 ] && kill -s 0 -- "-$2"; }; then
    return 0  # the usual case after a normal exit: nothing left
  fi
  gs=$(groups "$1" "$2")
  signal TERM $gs; wait_gone "$3" $gs
  gs="$gs $(groups "$1" "$2")"
  signal TERM $gs; wait_gone "$3" $gs
  signal KILL $gs; wait_gone 1000 $gs
}
case $1 in
run)
  tag=$2 grace=$3 dir=$4 n=$5; shift 5
  if [ -n "$dir" ] && ! cd -- "$dir" 2>/dev/null; then
    echo "codex-hub-error no such directory: $dir"; exit 127
  fi
  exec 3<&0
  (
    exec 3<&-
    export @TAG_VAR@="$tag"
    while [ "$n" -gt 0 ]; do export "$1"; shift; n=$((n - 1)); done
    case $1 in
      */*) [ -f "$1" ] && [ -x "$1" ] ;;
      *) command -v "$1" >/dev/null ;;
    esac || { echo "codex-hub-error no such executable: $1"; exit 127; }
    command -v setsid >/dev/null || { echo "codex-hub-error setsid is missing"; exit 127; }
    read -r s < /proc/self/stat
    echo "codex-hub-pid ${s%% *}"
    exec setsid -- "$@"
  ) </dev/null &
  pid=$!
  ( while read -r _; do :; done; trap '' TERM
    kill -s TERM "$pid"  # codex itself, even before its setsid made it a group
    reap "$tag" "$pid" "$grace" ) <&3 >/dev/null 2>&1 &
  dog=$!
  exec 3<&-
  wait "$pid"; status=$?
  { kill "$dog"; wait "$dog"; } 2>/dev/null
  # codex has answered: say so before reaping, so nobody waits for the reap. A closed
  # stdout makes this write fail, never kills the helper half-way through a reap.
  trap '' PIPE
  echo "codex-hub-exit $status" 2>/dev/null
  reap "$tag" "$pid" "$grace" >/dev/null 2>&1
  exit "$status" ;;
serve)
  tag=$2 grace=$3 dir=$4 n=$5; shift 5
  if [ -n "$dir" ] && ! cd -- "$dir" 2>/dev/null; then
    echo "codex-hub-error no such directory: $dir"; exit 127
  fi
  exec 3<&0
  (
    exec 3<&-
    export @TAG_VAR@="$tag"
    while [ "$n" -gt 0 ]; do export "$1"; shift; n=$((n - 1)); done
    case $1 in
      */*) [ -f "$1" ] && [ -x "$1" ] ;;
      *) command -v "$1" >/dev/null ;;
    esac || { echo "codex-hub-error no such executable: $1"; exit 127; }
    command -v setsid >/dev/null || { echo "codex-hub-error setsid is missing"; exit 127; }
    read -r s < /proc/self/stat
    echo "codex-hub-pid ${s%% *}"
    exec setsid -- "$@"
  ) <&3 &
  pid=$!
  exec 3<&- </dev/null
  wait "$pid"; status=$?
  reap "$tag" "$pid" "$grace" >/dev/null 2>&1
  exit "$status" ;;
kill)
  reap "$2" "$3" "$4" >/dev/null 2>&1 ;;
esac
"""
HELPER = _HELPER.replace("@TAG_VAR@", TAG_VAR)


def reap_bound_s(grace_s: float) -> float:
    """The longest a helper takes to reap a run whose processes resist SIGTERM."""
    return 2 * grace_s + REAP_SLACK_S


def run_words(
    argv: Sequence[str],
    env_overrides: Mapping[str, str],
    cwd: str | None,
    *,
    tag: str,
    grace_s: float,
) -> list[str]:
    """The helper's words in ``run`` mode: ``/bin/sh -c HELPER codex-hub run ...``.

    Raises ValueError for an empty argv, or for an environment name a shell could not
    export (it would otherwise be read as something else).
    """
    if not argv:
        raise ValueError("empty argv")
    for name in env_overrides:
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"invalid environment variable name {name!r}")
    return [
        "/bin/sh",
        "-c",
        HELPER,
        "codex-hub",
        "run",
        tag,
        str(round(grace_s * 1000)),
        cwd or "",
        str(len(env_overrides)),
        *(f"{name}={value}" for name, value in env_overrides.items()),
        *argv,
    ]


def serve_words(
    argv: Sequence[str],
    env_overrides: Mapping[str, str],
    cwd: str | None,
    *,
    tag: str,
    grace_s: float,
) -> list[str]:
    """The helper's words in ``serve`` mode (ARGV reads the helper's stdin)."""
    words = run_words(argv, env_overrides, cwd, tag=tag, grace_s=grace_s)
    words[4] = "serve"
    return words


def kill_words(tag: str, pgid: int | None, *, grace_s: float) -> list[str]:
    """The helper's words in ``kill`` mode: end every process of run `tag` (group `pgid`)."""
    words = ["/bin/sh", "-c", HELPER, "codex-hub", "kill", tag, str(pgid or 0)]
    return [*words, str(round(grace_s * 1000))]


class Launch:
    """What the helper's marker lines said: codex's pid, or why it could not start, and
    codex's exit status (``run`` mode) once it exited; `on_exit` hears that status."""

    def __init__(
        self, on_line: Callable[[str], None], on_exit: Callable[[int], None] | None = None
    ) -> None:
        self.pid: int | None = None
        self.error: str | None = None
        self.exit_status: int | None = None
        self._on_line = on_line
        self._on_exit = on_exit

    def feed(self, line: str) -> None:
        """Pass codex's lines on; before the marker, take the marker, drop shell noise;
        take the exit line, and drop what comes after it (not codex's: it has exited)."""
        if self.exit_status is not None:
            log.debug("ignoring output after codex exited: %.200r", line)
        elif self.pid is not None:
            if (end := _EXIT_LINE.search(line)) is not None:
                if end.start():  # codex's last line had no newline
                    self._on_line(line[: end.start()])
                self.exit_status = int(end.group(1))
                if self._on_exit is not None:
                    self._on_exit(self.exit_status)
                return
            self._on_line(line)
        elif self.error is None:
            if line.startswith(PID_MARK) and line[len(PID_MARK) :].isdigit():
                self.pid = int(line[len(PID_MARK) :])
            elif line.startswith(ERROR_MARK):
                self.error = line[len(ERROR_MARK) :]
            else:
                # A remote login shell's start-up files may print; that is not codex's.
                log.debug("ignoring output before codex started: %.200r", line)
