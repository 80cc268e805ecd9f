"""kernel.logs: one line per event, run_id on a run's path, and no secret ever written."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from hub.settings import HubSettings
from kernel import logs
from kernel.settings import NodeSettings

log = logging.getLogger("hub.test_logs")


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    """Each test gets stdlib logging back as it found it, and no registered secrets."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    factory = logging.getLogRecordFactory()
    chatty = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.setLogRecordFactory(factory)
    for name, value in chatty.items():
        logging.getLogger(name).setLevel(value)
    logs.forget_secrets()


def capture(fmt: str = "json", level: str = "DEBUG") -> io.StringIO:
    out = io.StringIO()
    logs.configure_logging(level, fmt, stream=out)  # type: ignore[arg-type]
    return out


def json_lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_is_one_object_per_line() -> None:
    """A JSON line carries ts, level, logger, msg and the extra fields, and nothing spills."""
    out = capture("json")
    log.info("run %s queued\nsecond line", "r-1", extra={"origin": "slack", "attempt": 2})
    (line,) = json_lines(out)
    assert line["level"] == "INFO"
    assert line["logger"] == "hub.test_logs"
    assert line["msg"] == "run r-1 queued\nsecond line"
    assert line["origin"] == "slack" and line["attempt"] == 2
    assert line["ts"].endswith("Z") and "T" in line["ts"]
    assert "exc" not in line


def test_fields_never_replace_the_envelope() -> None:
    """A bound field named like an envelope key is kept under another name."""
    out = capture("json")
    with logs.bound(level="custom", run_id="r-1"):
        log.warning("careful")
    (line,) = json_lines(out)
    assert line["level"] == "WARNING"
    assert line["field_level"] == "custom"


def test_text_is_one_readable_line() -> None:
    """Text mode puts the event on one line: time, level, logger, message, then fields."""
    out = capture("text")
    with logs.bind_run("r-7"):
        log.info("codex said:\nhello", extra={"origin": "telegram chat"})
    (line,) = out.getvalue().splitlines()
    assert " INFO  hub.test_logs: codex said:\\nhello " in line
    assert line.endswith('run_id=r-7 origin="telegram chat"')


def test_text_traceback_follows_indented() -> None:
    """An exception's traceback follows its event on indented lines."""
    out = capture("text")
    try:
        raise ValueError("bad input")
    except ValueError:
        log.exception("run failed")
    first, *rest = out.getvalue().splitlines()
    assert first.endswith("hub.test_logs: run failed")
    assert rest and all(line.startswith("    ") for line in rest)
    assert rest[-1].strip() == "ValueError: bad input"


async def test_run_id_follows_each_run_across_awaits() -> None:
    """Two interleaved runs each log their own run_id, before and after awaiting."""
    out = capture("json")
    first_logged = asyncio.Event()
    second_logged = asyncio.Event()

    async def run(run_id: str, mine: asyncio.Event, other: asyncio.Event) -> None:
        with logs.bind_run(run_id):
            log.info("start")
            mine.set()
            await other.wait()  # the other run logs while this one is suspended
            log.info("end")

    await asyncio.gather(
        run("r-a", first_logged, second_logged), run("r-b", second_logged, first_logged)
    )
    log.info("after")
    lines = [(line["msg"], line.get("run_id")) for line in json_lines(out)]
    assert lines[:2] == [("start", "r-a"), ("start", "r-b")]  # both suspended mid-run
    assert sorted(lines[2:4]) == [("end", "r-a"), ("end", "r-b")]
    assert lines[4:] == [("after", None)]


async def test_tasks_started_inside_a_run_keep_its_id() -> None:
    """A task created on a run's path keeps the run_id after the block has ended."""
    out = capture("json")
    go = asyncio.Event()

    async def worker() -> None:
        await go.wait()
        log.info("worker")

    with logs.bind_run("r-9"), logs.bound(executor="e-1"):
        task = asyncio.create_task(worker())
    go.set()
    await task
    (line,) = json_lines(out)
    assert line["run_id"] == "r-9" and line["executor"] == "e-1"
    assert logs.current_fields() == {}


async def test_bind_lasts_for_the_task() -> None:
    """bind() without a block binds for the rest of the task, not beyond it."""
    out = capture("json")

    async def run() -> None:
        logs.bind(run_id="r-5")
        await asyncio.sleep(0)
        log.info("inside")

    await asyncio.create_task(run())
    log.info("outside")
    inside, outside = json_lines(out)
    assert inside["run_id"] == "r-5" and "run_id" not in outside


def test_registered_secret_is_masked_everywhere() -> None:
    """A registered value is *** in the message, its arguments, fields and the traceback."""
    secret = "hunter2-very-secret"
    logs.register_secret(secret)
    out = capture("json")
    with logs.bound(header=f"token={secret}"):
        log.info("token is %s", secret, extra={"echo": secret})
        try:
            try:
                raise KeyError(secret)
            except KeyError as inner:
                raise RuntimeError(f"login failed with {secret}") from inner
        except RuntimeError:
            log.exception("login failed for %r", secret)
    text = out.getvalue()
    assert secret not in text
    plain, failed = json_lines(out)
    assert plain["msg"] == "token is ***"
    assert plain["echo"] == "***" and plain["header"] == "token=***"
    assert failed["msg"] == "login failed for '***'"
    assert "RuntimeError: login failed with ***" in failed["exc"]
    assert "KeyError: '***'" in failed["exc"]


def test_secret_is_masked_in_text_tracebacks() -> None:
    """Text mode masks the traceback too."""
    logs.register_secret("s3cr3t-text")
    out = capture("text")
    try:
        raise OSError("could not use s3cr3t-text")
    except OSError:
        log.error("boom", exc_info=True)
    assert "s3cr3t-text" not in out.getvalue()
    assert "OSError: could not use ***" in out.getvalue()


def test_secret_str_and_settings_register(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings' SecretStr values and API keys (operators' too) are registered from the
    settings objects."""
    for name in ("HUB_TOKEN", "HUB_API_KEYS", "HUB_OPERATOR_KEYS", "HUB_HOST"):
        monkeypatch.delenv(name, raising=False)
    # Built from an env file, the way processes build them (and without typing friction).
    env = tmp_path / "test.env"
    env.write_text(
        "HUB_TOKEN=node-secret-1\nHUB_API_KEYS=key-one,key-two\nHUB_OPERATOR_KEYS=op-key-1\n"
    )
    hub = HubSettings(_env_file=env)  # type: ignore[call-arg]
    node = NodeSettings(_env_file=None, HUB_TOKEN=SecretStr("node-secret-2"))  # type: ignore[call-arg]
    logs.register_settings_secrets(hub, node)
    assert (
        logs.redact("node-secret-1 key-one key-two op-key-1 node-secret-2 codex")
        == "*** *** *** *** *** codex"
    )
    # The model name is no credential and stays readable.
    assert logs.redact(hub.model_name) == "codex"


def test_longest_secret_wins() -> None:
    """A secret that contains another is masked whole, not left half visible."""
    logs.register_secret("abcd")
    logs.register_secret("abcd-efgh-ijkl")
    assert logs.redact("x abcd-efgh-ijkl y abcd") == "x *** y ***"


def test_short_secrets_are_masked_where_they_stand_alone() -> None:
    """A short secret is masked as a word, not inside other words."""
    logs.register_secret("t")
    assert logs.redact("listening on http, token=t") == "listening on http, token=***"


def test_long_secrets_are_masked_inside_other_text() -> None:
    """A long secret is masked even when glued to other characters (URLs, paths)."""
    logs.register_secret("ABCdefGHI")
    assert logs.redact("/v1/keyABCdefGHIend") == "/v1/key***end"


def test_empty_values_are_not_secrets() -> None:
    """Registering an empty or missing value changes nothing."""
    for value in ("", "   ", None):
        logs.register_secret(value)
    assert logs.redact("nothing to hide") == "nothing to hide"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bot token xoxb-1234-5678-AbCdEf", "bot token xoxb-***"),
        ("app token xapp-1-A0B1C2-123-abcdef", "app token xapp-***"),
        ("user token xoxp-99-88-77", "user token xoxp-***"),
        ("key sk-proj-AbCdEfGhIjKlMnOpQrStUv", "key sk-***"),
        (
            "POST https://api.telegram.org/bot123456:AAH-x_yZ/getUpdates",
            "POST https://api.telegram.org/bot***/getUpdates",
        ),
        (
            "TELEGRAM_BOT_TOKEN=123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
            "TELEGRAM_BOT_TOKEN=***",
        ),
        ("Authorization: Bearer abc.def-ghi_jkl", "Authorization: Bearer ***"),
        # Words that merely look alike stay readable.
        ("task-runner and disk-usage", "task-runner and disk-usage"),
        ("missing Bearer token", "missing Bearer token"),
        ("robot 42: done", "robot 42: done"),
    ],
)
def test_token_patterns(text: str, expected: str) -> None:
    """Credential-shaped tokens are masked without registration; look-alikes are not."""
    assert logs.redact(text) == expected


GHP = "ghp_" + "a1B2c3D4e5" * 3 + "F6g7H8"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"token: {GHP}", "token: ghp_***"),
        ("gho_" + "Q" * 36 + " ghs_" + "r9" * 18, "gho_*** ghs_***"),
        ("GH_TOKEN=github_pat_11ABCDEFG0123456789_abcdefXYZ", "GH_TOKEN=github_pat_***"),
        ("glpat-AbCdEfGhIjKlMnOpQrSt and more", "glpat-*** and more"),
        ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "aws_access_key_id = AKIA***"),
        (f"aws_secret_access_key = {AWS_SECRET}", "aws_secret_access_key = ***"),
        (f'AWS_SECRET_ACCESS_KEY="{AWS_SECRET}"', 'AWS_SECRET_ACCESS_KEY="***"'),
        (f'{{"aws_secret_access_key": "{AWS_SECRET}"}}', '{"aws_secret_access_key": "***"}'),
        ("xoxs-123-456-abc", "xoxs-***"),
        ("sk-proj-AbCdEfGhIjKlMnOpQrStUv", "sk-***"),
        ("123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawQ", "***"),
        (
            f"key:\n{PEM}\ndone",
            "key:\n-----BEGIN OPENSSH PRIVATE KEY-----***-----END OPENSSH PRIVATE KEY-----\ndone",
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
            "-----BEGIN PRIVATE KEY-----***-----END PRIVATE KEY-----",
        ),
        # Ordinary words and look-alikes stay as they are.
        (
            "cd /srv/codex-hub && ghp_ is GitHub's prefix",
            "cd /srv/codex-hub && ghp_ is GitHub's prefix",
        ),
        ("pip install scikit-learn sk-learn", "pip install scikit-learn sk-learn"),
        ("AKIA is how AWS key ids start", "AKIA is how AWS key ids start"),
        ("-----BEGIN PUBLIC KEY-----", "-----BEGIN PUBLIC KEY-----"),
        ("the Bearer token header", "the Bearer token header"),
        ("at 12:30:45 bot 7 said", "at 12:30:45 bot 7 said"),
    ],
)
def test_credential_formats_are_masked_in_answers_too(text: str, expected: str) -> None:
    """Well-known credential formats are masked even in someone's text (shapes=False),
    where looser shapes are left alone; ordinary words never change."""
    assert logs.redact(text, shapes=False) == expected
    assert logs.redact_json({"answer": text}, shapes=False) == {"answer": expected}


def test_registered_strong_secret_does_not_touch_the_projects_name() -> None:
    """A path holding the project's name survives masking (a credential like
    HUB_TOKEN=codex-hub is refused at start-up instead, see test_settings_secrets)."""
    logs.register_secret("9f2c4e6a8b0d1f3e5a7c")
    assert logs.redact("cd /srv/codex-hub", shapes=False) == "cd /srv/codex-hub"
    assert logs.redact("token 9f2c4e6a8b0d1f3e5a7c!", shapes=False) == "token ***!"


def test_token_patterns_in_log_lines() -> None:
    """A Telegram URL logged by a library (httpx at WARNING) reaches the output masked."""
    out = capture("json", level="INFO")
    logging.getLogger("httpx").warning(
        "HTTP Request: %s %s", "POST", "https://api.telegram.org/bot42:SECRETpart/getMe"
    )
    (line,) = json_lines(out)
    assert line["msg"] == "HTTP Request: POST https://api.telegram.org/bot***/getMe"


def test_chatty_libraries_are_quiet_unless_debugging() -> None:
    """httpx's per-request INFO lines are dropped at INFO and kept at DEBUG."""
    out = capture("json", level="INFO")
    logging.getLogger("httpx").info("HTTP Request: GET /")
    assert out.getvalue() == ""
    out = capture("json", level="DEBUG")
    logging.getLogger("httpx").info("HTTP Request: GET /")
    assert len(json_lines(out)) == 1


def test_disabled_levels_cost_nothing() -> None:
    """Below the level no record is made: arguments are never rendered, fields never read."""
    out = capture("json", level="WARNING")

    class Loud:
        def __str__(self) -> str:
            raise AssertionError("rendered although the level is disabled")

    with logs.bind_run("r-1"):
        log.debug("value %s", Loud())
        log.info("value %s", Loud())
    assert out.getvalue() == ""


def test_a_bad_format_does_not_raise_at_the_caller() -> None:
    """A %-format that does not match its arguments still logs, and never raises."""
    out = capture("json")
    log.info("%d items", "many")
    (line,) = json_lines(out)
    assert "%d items" in line["msg"] and "many" in line["msg"]


def test_configure_twice_keeps_one_handler() -> None:
    """Configuring again replaces its own handler and leaves others' handlers alone."""
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    first = capture("json")
    second = capture("text")
    log.info("once")
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1
    assert foreign in root.handlers
    root.removeHandler(foreign)


@pytest.mark.parametrize(("level", "fmt"), [("LOUD", "text"), ("INFO", "xml")])
def test_bad_settings_are_refused(level: str, fmt: str) -> None:
    """An unknown LOG_LEVEL or LOG_FORMAT is a clear error naming the setting."""
    with pytest.raises(ValueError, match=r"LOG_LEVEL|LOG_FORMAT"):
        logs.configure_logging(level, fmt)  # type: ignore[arg-type]


def test_levels_by_name_in_any_case() -> None:
    """LOG_LEVEL accepts names in any case."""
    out = capture("json", level="warning")
    log.info("dropped")
    log.warning("kept")
    assert [line["msg"] for line in json_lines(out)] == ["kept"]


def test_other_handlers_see_masked_records(caplog: pytest.LogCaptureFixture) -> None:
    """Masking happens when the record is made, so every handler (here pytest's) is clean."""
    logs.register_secret("caplog-secret")
    capture("json")
    with caplog.at_level(logging.INFO):
        log.warning("using %s", "caplog-secret")
    assert "caplog-secret" not in caplog.text
    assert caplog.records[-1].getMessage() == "using ***"


# --- the fast path: one search proves a value clean; it must never miss what the walk masks

_SECRETS = ("s3cr3t-value-long", 'q"uo\\te\nsecret', "é-unicode-secret", "tok")
_NEEDLES = (
    *_SECRETS,
    "xoxb-123-abc",
    "xapp-1-A",
    "sk-" + "a" * 20,
    "bot123:ABCdef",
    "12345:" + "x" * 30,
    "Bearer abcdefgh12",
    "\nsk-" + "b" * 16,
    "tab\tBearer\tabcdefgh12",
    "task-forces",
    "ghp_" + "A1b2" * 9,
    "github_pat_" + "x9" * 12,
    "glpat-" + "Zz_9" * 5,
    "AKIA" + "ABCDEFGHIJ234567",
    'aws_secret_access_key": "' + "wJalrXUtnFEMI/K7MDENG+bPxRfiCY" + "EXAMPLEKEY",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl",
    "7000000002:" + "A" * 35,
)


def _reference(value: object, shapes: bool) -> object:
    """What redact_json did before its fast path: mask every string, keys too."""
    if isinstance(value, str):
        return logs.redact(value, shapes=shapes)
    if isinstance(value, dict):
        return {_reference(k, shapes): _reference(v, shapes) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_reference(v, shapes) for v in value]
    return value


def test_redact_json_fast_path_masks_what_the_walk_masks() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    for secret in _SECRETS:
        logs.register_secret(secret)
    text = st.one_of(
        st.text(max_size=20),
        st.builds(
            lambda a, needle, b: a + needle + b,
            st.text(max_size=5),
            st.sampled_from(_NEEDLES),
            st.text(max_size=5),
        ),
    )
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), text)
    values = st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)
        ),
        max_leaves=12,
    )

    @settings(max_examples=400, deadline=None)
    @given(value=st.one_of(st.lists(values), st.dictionaries(text, values)), shapes=st.booleans())
    def check(value: object, shapes: bool) -> None:
        expected = _reference(value, shapes)
        got = logs.redact_json(value, shapes=shapes)
        assert got == expected or (got != got and expected != expected)  # NaN != NaN
        if got is value:  # untouched: nothing in it had anything to mask
            assert expected == value or repr(expected) == repr(value)

    check()


def test_redact_json_returns_a_clean_value_itself_and_masks_a_dirty_one() -> None:
    logs.register_secret("s3cr3t-value-long")
    clean = {"event": {"kind": "command", "text": "ls -la"}, "items": [1, 2.5, None]}
    assert logs.redact_json(clean) is clean
    dirty = {"event": {"text": "key s3cr3t-value-long"}, "t": ("a",)}
    assert logs.redact_json(dirty) == {"event": {"text": "key ***"}, "t": ["a"]}
    # Not plain JSON for orjson (an int key): walked, still masked.
    assert logs.redact_json({1: "s3cr3t-value-long"}) == {1: "***"}
