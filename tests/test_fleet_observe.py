"""One helper run per SSH host for observation: the helper's `batch` verb answers `probe` and `proc list` together
(the real helper script, run as observation runs it: JSON on stdin, one final JSON line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from aimactl.helper import helper_file


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
