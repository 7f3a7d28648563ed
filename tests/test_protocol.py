"""The wire protocol (conveyor/protocol.py) is the one place job-hash fields, statuses, return
codes and the scripts' KEYS are named: the Lua scripts, calls.py and the callers that turn codes
into exceptions follow it. No Redis needed."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from importlib import resources
from types import SimpleNamespace
from typing import Any

import pytest

from conveyor import batch, calls, errors, protocol, scripts
from conveyor.protocol import FIELDS, KEYS, LIMIT_FIELDS, OPTIONAL_KEYS, RUN_FIELDS, STATUSES, THROTTLES, Code
from conveyor.serializers import get_serializer
from conveyor.worker import flow

LUA = resources.files("conveyor.scripts")
SCRIPT_NAMES = sorted(p.name[:-4] for p in LUA.iterdir() if p.name.endswith(".lua") and p.name != "_lib.lua")
# A quoted string in Lua: '...' or "..." without escapes (the scripts use none).
QUOTED = re.compile(r"""'([^'\\\n]*)'|"([^"\\\n]*)\"""")


def lua_code(name: str) -> list[tuple[int, str]]:
    """(line number, the line without its comment) of a .lua file."""
    text = LUA.joinpath(name).read_text()
    return [(n, line.split("--", 1)[0]) for n, line in enumerate(text.splitlines(), 1)]


@pytest.mark.parametrize("name", [*SCRIPT_NAMES, "_lib"])
def test_scripts_name_no_status_or_field_by_its_string(name: str) -> None:
    """'finished' or "status" in a script would bypass the prelude's S_FINISHED and F_STATUS."""
    wire = set(STATUSES) | set(FIELDS) | set(LIMIT_FIELDS) | set(THROTTLES)
    found = [f"{name}.lua:{n}: {m.group(0)}" for n, code in lua_code(f"{name}.lua")
             for m in QUOTED.finditer(code) if (m.group(1) or m.group(2)) in wire]
    assert not found, "use the prelude's S_/F_ constants:\n" + "\n".join(found)


def test_the_scan_would_see_a_literal() -> None:
    code = "redis.call('HSET', key, \"status\", 'finished')  -- 'queued' in a comment is fine"
    seen = [m.group(1) or m.group(2) for m in QUOTED.finditer(code.split("--", 1)[0])]
    assert {"status", "finished"} <= set(seen) and "queued" not in seen


def header_keys(name: str) -> dict[int, str]:
    """KEYS[n] -> its description, from the script's leading comment block."""
    text = LUA.joinpath(f"{name}.lua").read_text()
    header = []
    for line in text.splitlines():
        if line.startswith("#!"):
            continue
        if not line.startswith("--"):
            break
        header.append(line[2:])
    found = re.findall(r"KEYS\[(\d+)\]\s+(.*?)(?=\s+(?:KEYS|ARGV)\[|$)", "\n".join(header), re.MULTILINE)
    return {int(n): desc for n, desc in found}


def test_every_script_declares_its_keys() -> None:
    assert sorted(KEYS) == SCRIPT_NAMES
    assert sorted(s.name for s in scripts.ALL) == SCRIPT_NAMES


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_script_header_names_its_declared_keys(name: str) -> None:
    described = header_keys(name)
    declared = KEYS[name] + OPTIONAL_KEYS.get(name, ())
    assert sorted(described) == list(range(1, len(declared) + 1)), f"{name}.lua names KEYS {sorted(described)}"
    for i, key in enumerate(declared, 1):
        assert re.search(rf"\b{key}\b", described[i]), f"{name}.lua KEYS[{i}] is {described[i]!r}, declared {key!r}"


class Names:
    """Stands for QueueKeys: every key is its own name, so the KEYS a call sends can be read back."""

    job_prefix = "job:"
    claimed_prefix = "claimed:"
    corrupt_prefix = "corrupt:"
    schedule_channel = "channel"

    def __getattr__(self, name: str) -> str:
        return name

    def claimed(self, worker: str) -> str:
        return "claimed"


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[str, ...]]] = []

    def evalsha(self, sha: str, numkeys: int, *rest: Any) -> None:
        [script] = [s for s in scripts.ALL if s.sha == sha]
        self.sent.append((script.name, tuple(rest[:numkeys])))


K: Any = Names()
SAMPLE_CALLS = {
    "claim": lambda p: calls.claim(p, K, "w", 2, 1, 1000, "x:", 0, True, 60),
    "start": lambda p: calls.start(p, K, 1000, [("j", "e")]),
    "complete": lambda p: calls.complete(p, K, "w", 60, [("j", "e", b"r")]),
    "fail": lambda p: calls.fail(p, K, "w", protocol.Status.FAILED, 60, [("j", "e", "T", "m", "tb")]),
    "retry": lambda p: calls.retry(p, K, "w", [("j", "e", "T", "m", "tb", 0)]),
    "release": lambda p: calls.release(p, K, "w", [("j", "e")]),
    "disown": lambda p: calls.disown(p, K, "w", "x:", 0, 2),
    "renew": lambda p: calls.renew(p, K, 1000, [("j", "e")]),
    "reap": lambda p: calls.reap(p, K, 3, 60),
    "release_worker": lambda p: calls.release_worker(p, K, "w", "gone", 3, 60),
    "cancel": lambda p: calls.cancel(p, K, "j", 60),
    "promote": lambda p: calls.promote(p, K, 10, 60),
    "requeue": lambda p: calls.requeue(p, K, ["j"]),
    "purge": lambda p: calls.purge(p, K, True),
    "limits": lambda p: calls.limits(p, K, [("rate", "5")]),
    "lock_renew": lambda p: calls.lock_renew(p, "lock", "t", 1000),
    "lock_release": lambda p: calls.lock_release(p, "lock", "t"),
    "depend": lambda p: calls.depend(p, K, [("j", "q:d")]),
    "resolve": lambda p: calls.resolve(p, K, 60, 1000, ["d"], [("d", "q:j", "1")]),
    "watch": lambda p: calls.watch(p, K, ["j"]),
    "progress": lambda p: calls.progress(p, K, [("j", "e", '{"value": 1}', "")]),
}


@pytest.mark.parametrize("name", sorted(SAMPLE_CALLS))
def test_calls_send_the_declared_keys_in_order(name: str) -> None:
    pipe = Recorder()
    SAMPLE_CALLS[name](pipe)
    assert pipe.sent == [(name, KEYS[name])]


def test_a_stopped_job_ends_in_the_canceled_registry() -> None:
    pipe = Recorder()
    calls.fail(pipe, K, "w", protocol.Status.CANCELED, 60, [])
    assert pipe.sent == [("fail", ("leases", "prefetched", "claimed", "canceled", "rate", *protocol.DEPENDENTS_KEYS))]


def test_enqueue_sends_the_declared_keys() -> None:
    queue = batch.Encoding(K, get_serializer("json"))
    encoded = batch.encode_batch(queue, [batch.EnqueueData("os:getpid")], "error")
    assert tuple(encoded.keys) == KEYS["enqueue"]


def test_every_code_maps_to_its_exception() -> None:
    assert set(errors.EXCEPTIONS) == set(Code)
    assert errors.EXCEPTIONS == {
        Code.OK: None, Code.STALE: None, Code.DUPLICATE: None,
        Code.MISSING: errors.NoSuchJob, Code.WRONG_STATE: errors.InvalidTransition, Code.EXISTS: errors.JobExists,
    }
    missing = errors.for_code(Code.MISSING, "no job 'a' in queue 'q'")
    assert type(missing) is errors.NoSuchJob and str(missing) == "no job 'a' in queue 'q'"
    wrong = errors.for_code(-2, "job 'a' is not failed")
    assert type(wrong) is errors.InvalidTransition and str(wrong) == "job 'a' is not failed"
    exists = errors.for_code(Code.EXISTS, ["a"], "q")
    assert isinstance(exists, errors.JobExists) and exists.job_ids == ["a"]
    assert str(exists) == "job ID 'a' already exists in queue 'q'; pass if_exists='ignore' to get the existing job instead"
    for code in (Code.OK, Code.STALE, Code.DUPLICATE):
        with pytest.raises(ValueError):
            errors.for_code(code, "not an error")


def test_codes_keep_their_values() -> None:
    assert {c.name: int(c) for c in Code} == {
        "OK": 1, "STALE": 0, "MISSING": -1, "WRONG_STATE": -2, "EXISTS": -3, "DUPLICATE": 2}


def test_prelude_defines_each_constant_once() -> None:
    lines = protocol.lua_prelude().splitlines()
    names = [re.fullmatch(r"local (\w+) = (.+)", line).group(1) for line in lines]  # type: ignore[union-attr]
    assert len(names) == len(set(names)) == len(Code) + len(STATUSES) + len(FIELDS) + len(LIMIT_FIELDS) + len(THROTTLES)
    assert "local S_FINISHED = 'finished'" in lines and "local F_STATUS = 'status'" in lines and "local OK = 1" in lines
    assert scripts.PRELUDE == protocol.lua_prelude()
    # _lib.lua and the scripts use the constants; none defines one again.
    for name in [*SCRIPT_NAMES, "_lib"]:
        for n, code in lua_code(f"{name}.lua"):
            assert not re.match(rf"\s*local\s+({'|'.join(names)})\b", code), f"{name}.lua:{n} redefines a constant"


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_script_stays_under_luas_local_limit(name: str) -> None:
    """Lua allows 200 locals per function: the main chunk holds the prelude, _lib.lua and the script's own."""
    source = scripts.Script(name).source
    top = [line for line in source.splitlines() if line.startswith("local ")]
    count = sum(len(re.match(r"local (function )?([\w, ]+)", line).group(2).split(",")) for line in top)  # type: ignore[union-attr]
    assert count < 150, f"{name}: {count} locals in the main chunk"


def test_each_script_gets_every_helper_it_uses() -> None:
    lib = LUA.joinpath("_lib.lua").read_text()
    helpers = set(re.findall(r"^local (?:function )?(\w+)", lib, re.M))
    assert scripts.helpers_for(" ".join(helpers), lib) == lib, "cutting _lib.lua into definitions loses nothing"
    for name in SCRIPT_NAMES:
        source = scripts.Script(name).source
        defined = set(re.findall(r"^local (?:function )?(\w+)", source, re.M))
        code = re.sub(r"--[^\n]*", "", source)
        used = {word for word in re.findall(r"\w+", code) if word in helpers}
        assert used <= defined, f"{name}.lua uses {sorted(used - defined)} without its definition"
    assert "malformed_reason" not in scripts.enqueue.source, "enqueue.lua does not pay for unused helpers"


def test_wire_names_are_job_fields() -> None:
    assert len(set(FIELDS)) == len(FIELDS) and len(set(STATUSES)) == len(STATUSES)
    assert set(protocol.ENQUEUE_FIELDS[1:]) <= set(FIELDS) and protocol.ENQUEUE_FIELDS[0] == "id"
    assert set(protocol.EnqueueOptions._fields) <= set(FIELDS)
    assert set(RUN_FIELDS) <= set(FIELDS)
    assert [s.value for s in protocol.JobStatus] == list(STATUSES)


def test_parse_claim_unpacks_run_fields_in_order() -> None:
    """parse_claim unpacks claim.lua's reply by position (no per-job dict): its names must follow RUN_FIELDS."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(flow.parse_claim)))
    targets = [node.targets[0] for node in ast.walk(tree)
               if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple)
               and len(node.targets[0].elts) == 4 + len(RUN_FIELDS)]
    assert len(targets) == 1
    names = [elt.id for elt in targets[0].elts]  # type: ignore[attr-defined]
    assert names[:4] == ["job_id", "exec_id", "state", "suspect"] and tuple(names[4:]) == RUN_FIELDS


def test_lua_field_rules_match_doctors() -> None:
    """_lib.lua's FIELD_RULES and doctor.py's _RULES judge a job alike (malformed or sound)."""
    from conveyor import doctor

    text = LUA.joinpath("_lib.lua").read_text()
    table = text[text.index("local FIELD_RULES = {"):text.index("\n}\n", text.index("local FIELD_RULES"))]
    rules = re.findall(r"\{F_(\w+), '(\w+)', (nil|-?\d+), (true|false), (true|false)\}", table)
    lua = [(getattr(protocol.Field, f), kind, None if low == "nil" else float(low), inc == "true", empty == "true")
           for f, kind, low, inc, empty in rules]
    assert lua == [(f, kind, None if low is None else float(low), inc, empty)
                   for f, kind, low, inc, empty in doctor._RULES]


def test_a_job_with_every_option_encodes_each_under_its_field() -> None:
    from conveyor import Retry

    unique_only: Any = SimpleNamespace(unique=lambda key: f"unique:{key}")
    queue = batch.Encoding(unique_only, get_serializer("json"))
    item = batch.EnqueueData("os:getpid", (1,), {}, "the-id", 2.5, 11, 22, Retry(max=3), 4, "u", 33)
    [row] = [batch._row(queue, item, 0, iter(()))]
    assert dict(zip(protocol.ENQUEUE_FIELDS, row, strict=True)) == {
        "id": "the-id", "func": "os:getpid", "payload": b'{"a":[1],"k":{}}', "ser": "json", "timeout": "2.5",
        "result_ttl": 11, "failure_ttl": 22, "retry": Retry(max=3).to_json(), "max_deliveries": 4,
        "unique_lock": "unique:u", "unique_ttl": 33,
    }
    plain = batch._row(queue, batch.EnqueueData("os:getpid"), 0, iter(["gen"]))
    assert dict(zip(protocol.ENQUEUE_FIELDS[3:], plain[3:], strict=True)) == queue.defaults._asdict()
