"""One helper run per SSH host for observation: the helper's `batch` verb answers `probe` and `proc list` together
(the real helper script, run as observation runs it: JSON on stdin, one final JSON line)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from aimactl.helper import MISSING, bootstrap_argv, helper_file


def helper(verb: str, payload: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, helper_file(), verb], input=json.dumps(payload), capture_output=True,
                          text=True, timeout=60)
    return json.loads(done.stdout.splitlines()[-1])


def test_batch_answers_each_verb_as_alone(tmp_path: Path) -> None:
    calls = [{"verb": "probe", "params": {"data_dir": str(tmp_path)}},
             {"verb": "proc", "params": {"action": "list", "dir": str(tmp_path / "proc")}}]
    answer = helper("batch", {"calls": calls})
    assert answer["ok"] is True
    probe, listed = answer["result"]["results"]
    alone = helper("probe", {"data_dir": str(tmp_path)})["result"]
    assert probe["ok"] is True and probe["result"]["cpu_count"] == alone["cpu_count"]
    assert probe["result"]["disk"]["exists"] is True
    assert listed == {"ok": True, "result": helper("proc", calls[1]["params"])["result"]}


def test_batch_reports_a_failing_verb_in_its_place(tmp_path: Path) -> None:
    calls = [{"verb": "proc", "params": {"action": "no-such-action", "dir": str(tmp_path)}},
             {"verb": "probe", "params": {"data_dir": str(tmp_path)}}]
    failed, probe = helper("batch", {"calls": calls})["result"]["results"]
    assert failed["ok"] is False and failed["error"]["code"] == "invalid-input"
    assert probe["ok"] is True


def test_batch_runs_only_read_only_verbs(tmp_path: Path) -> None:
    for call in ({"verb": "fetch", "params": {}}, {"verb": "batch", "params": {}}, {"verb": "probe"}, "probe"):
        answer = helper("batch", {"calls": [call]})
        assert answer["ok"] is False and answer["error"]["code"] == "invalid-input", call


def test_batch_answers_the_home_and_stat_reads_what_sftp_read(tmp_path: Path) -> None:
    index = tmp_path / "models" / "index.json"
    index.parent.mkdir()
    index.write_text('{"tiny": {"size": 3}}')
    calls = [{"verb": "stat", "params": {"path": str(index), "read": True}},
             {"verb": "stat", "params": {"path": str(tmp_path / "no-docker.sock")}},
             {"verb": "stat", "params": {"path": str(tmp_path)}}]
    answer = helper("batch", {"calls": calls})["result"]
    assert answer["home"] == os.path.expanduser("~")
    read, missing, directory = answer["results"]
    assert read == {"ok": True, "result": {"path": str(index), "exists": True, "type": "file",
                                           "text": '{"tiny": {"size": 3}}'}}
    assert missing["result"] == {"path": str(tmp_path / "no-docker.sock"), "exists": False, "type": None,
                                 "text": None}
    assert directory["result"]["type"] == "dir" and directory["result"]["text"] is None


def test_paths_with_tilde_are_the_users_home_and_only_those(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "d").mkdir(parents=True)
    env = {**os.environ, "HOME": str(home)}

    def stat(path: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, helper_file(), "stat"], input=json.dumps({"path": path}),
                              capture_output=True, text=True, timeout=60, env=env)
        return json.loads(done.stdout.splitlines()[-1])

    assert stat("~/d")["result"] == {"path": str(home / "d"), "exists": True, "type": "dir", "text": None}
    assert stat("~")["result"]["path"] == str(home)
    for literal in ("~root/d", "~d", "d/~"):  # not the home: relative paths stay refused
        assert stat(literal)["error"]["code"] == "invalid-input", literal


def test_the_bootstrap_runs_the_helper_at_a_tilde_path_or_says_it_is_missing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "h").mkdir(parents=True)
    shutil.copy(helper_file(), home / "h" / "aimahelper.py")
    env = {**os.environ, "HOME": str(home)}

    def boot(path: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(bootstrap_argv(sys.executable, path, *args), input='{"calls": []}',
                              capture_output=True, text=True, timeout=60, env=env)

    ran = boot("~/h/aimahelper.py", "batch")
    assert ran.returncode == 0 and json.loads(ran.stdout) == {"ok": True, "result": {"results": [],
                                                                                     "home": str(home)}}
    missing = boot("~/h/other.py", "batch")
    assert missing.returncode == 1 and json.loads(missing.stdout) == {
        "ok": False, "error": {"code": MISSING, "message": f"no helper at {home}/h/other.py", "home": str(home)}}
    literal = boot("~/h/$(echo aimahelper).py", "batch")  # PATH is data: never code (over SSH: test_hostile_values)
    assert json.loads(literal.stdout)["error"]["message"] == f"no helper at {home}/h/$(echo aimahelper).py"


def test_serve_answers_batch_after_batch_afresh_and_refuses_the_rest(tmp_path: Path) -> None:
    """`serve` (what the keeper keeps running on a host): one answer line per request line, each read afresh, a
    refused request does not end it, and it ends with its stdin."""
    served = subprocess.Popen([sys.executable, helper_file(), "serve"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert served.stdin is not None and served.stdout is not None

    def ask(line: str) -> dict[str, Any]:
        served.stdin.write(line + "\n")  # type: ignore[union-attr]
        served.stdin.flush()  # type: ignore[union-attr]
        return json.loads(served.stdout.readline())  # type: ignore[union-attr]

    marker = tmp_path / "marker"
    batch = json.dumps({"verb": "batch", "params": {"calls": [{"verb": "stat", "params": {"path": str(marker)}}]}})
    try:
        first = ask(batch)
        assert first["ok"] and first["result"]["results"][0]["result"]["exists"] is False
        marker.write_text("now here")
        assert ask(batch)["result"]["results"][0]["result"]["exists"] is True  # nothing cached between requests
        for refused in ('{"verb": "fetch", "params": {}}', "not json", '{"verb": "batch", "params": []}'):
            answer = ask(refused)
            assert answer["ok"] is False and answer["error"]["code"] == "invalid-input", refused
        assert ask(batch)["ok"] is True  # still serving
    finally:
        served.stdin.close()
    assert served.wait(timeout=10) == 0
