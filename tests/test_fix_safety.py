"""Hostile input to the fix pipeline and to scripts the agent writes: nothing runs that nobody read, nothing is
overwritten, and a script's encoding survives a fix and its undo byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from twinkle_trainer.protocol import RunPaths, read_meta
from twinkle_tui.commands import CommandError, Session, execute, prepare
from twinkle_tui.process.controller import ProcessController
from twinkle_tui.process.scripts import fix_risks

from fake_llm import FakeLLM, text

BROKEN = "import sys\nfrom twinkle_trainer.runtime import TrainingRuntime\nrt = TrainingRuntime().start(total_steps=5)\n" \
         "for s in range(1, 6):\n    rt.log_metrics(step=s, loss=1.0 / s)\nprint(totl_steps)\n"
FIXED = BROKEN.replace("print(totl_steps)", "print(s)")


def fix(script: str) -> dict:
    return text(json.dumps({"decision": "FIX", "summary": "the name totl_steps is misspelled",
                            "diagnosis": "a typo in the last line", "script": script}))


def headless(fake: FakeLLM, script: Path, run_id: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "twinkle_tui", "--run", str(script), "--run-id", run_id, "--monitor",
                           "--monitor-interval", "0.5", "--llm-base-url", fake.url, "--llm-model", fake.model, *extra],
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)


def test_auto_fix_applies_a_small_repair_but_not_one_that_also_deletes_files(home: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(BROKEN)
    sneaky = FIXED + "import shutil\nshutil.rmtree('/tmp/not-yours', ignore_errors=True)\n"
    with FakeLLM([fix(sneaky)]).running() as fake:
        proc = headless(fake, tmp_path / "broken.py", "sneaky", "--auto-fix")
    assert proc.returncode == 1
    assert "not applied without a yes: it deletes files (rmtree, shutil.rmtree)" in proc.stdout, proc.stdout[-2000:]
    assert "Apply the monitor's fix to sneaky needs a yes" in proc.stdout  # no terminal here to answer it
    assert RunPaths.of("sneaky").script.read_text() == BROKEN and read_meta(RunPaths.of("sneaky")).launches == 1


def test_a_huge_fix_is_not_applied_and_its_diff_is_cut_and_points_at_the_file(home: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(BROKEN)
    huge = FIXED + "".join(f"x{i} = {i}\n" for i in range(60_000))  # about 0.6 MB of new lines
    with FakeLLM([fix(huge)]).running() as fake:
        proc = headless(fake, tmp_path / "broken.py", "huge", "--auto-fix")
    assert proc.returncode == 1
    assert "far more than the script it replaces" in proc.stdout
    proposal = RunPaths.of("huge").root / "fix_proposal.py"
    assert f"more lines of the diff; the whole script: {proposal}" in proc.stdout
    assert len(proc.stdout) < 20_000 and proposal.read_text() == huge
    assert RunPaths.of("huge").script.read_text() == BROKEN


def test_fix_risks_name_what_a_change_adds() -> None:
    old = "import torch\nx = 1\nprint(x)\n"
    assert not fix_risks(old, old.replace("x = 1", "x = 2"))
    assert "starts processes (subprocess, subprocess.run)" in str(fix_risks(old, old + "import subprocess\n"
                                                                                     "subprocess.run(['ls'])\n"))
    assert "uses the network (urllib.request, urllib.request.urlopen" in str(
        fix_risks(old, old + "import urllib.request\nurllib.request.urlopen('http://x')\n"))
    assert not fix_risks(old + "import os\nos.remove('a')\n", old + "import os\nos.remove('b')\n")  # not new


def test_a_latin1_script_keeps_its_encoding_through_a_fix_and_an_undo(home: Path, tmp_path: Path) -> None:
    original = b"# -*- coding: latin-1 -*-\nprint('caf\xe9')\nprint(totl_steps)\n"
    (tmp_path / "latin.py").write_bytes(original)
    ctl = ProcessController(home, grace=10)
    assert ctl.launch_script(tmp_path / "latin.py", run_id="latin").supervisor.wait(timeout=60) == 1
    session = Session.open(home, grace=10)
    from twinkle_tui.monitor import take_snapshot

    view = session.store.view("latin")
    view.refresh()
    assert "print('café')" in (take_snapshot(view).script or "")  # what the LLM is sent: decoded as Python would
    fixed = "# -*- coding: latin-1 -*-\nprint('café')\nprint('done')\n"
    execute(session, "apply_fix", {"run_id": "latin", "content": fixed, "reason": "typo"})
    assert session.services.launched[-1].supervisor.wait(timeout=60) == 0
    paths = RunPaths.of("latin")
    assert paths.script.read_bytes() == fixed.encode("latin-1")  # written in the encoding its coding line declares
    assert "café" in paths.log.read_text(encoding="utf-8", errors="replace")
    execute(session, "undo_fix", {"run_id": "latin"})
    assert paths.script.read_bytes() == original  # byte for byte


def test_a_fix_its_coding_line_cannot_hold_is_refused(home: Path, tmp_path: Path) -> None:
    (tmp_path / "ascii.py").write_text("# -*- coding: ascii -*-\nraise SystemExit(1)\n")
    ProcessController(home).launch_script(tmp_path / "ascii.py", run_id="ascii").supervisor.wait(timeout=60)
    with pytest.raises(CommandError, match="declares the encoding ascii, which cannot hold its text"):
        prepare(Session.open(home), "apply_fix", {"run_id": "ascii", "content": "# -*- coding: ascii -*-\nprint('é')\n"})


def test_a_script_the_agent_writes_is_shown_whole_written_after_yes_and_never_over_another(home: Path) -> None:
    session = Session.open(home)
    folder = home / ".scripts"
    folder.mkdir()
    (folder / "train_me.py").write_text("# the user's earlier script\n")
    script = "import shutil\nprint('hello')\n"
    _, confirm = prepare(session, "start_training", {"script": script, "path": "train_me.py"})
    assert confirm is not None and confirm.code == script  # the whole code is in the confirmation
    assert str(folder / "train_me-2.py") in confirm.detail
    assert sorted(p.name for p in folder.iterdir()) == ["train_me.py"]  # nothing written before the yes
    reply = execute(session, "start_training", {"script": script, "path": "train_me.py"})
    assert (folder / "train_me.py").read_text() == "# the user's earlier script\n"
    assert (folder / "train_me-2.py").read_text() == script
    assert session.services.launched[-1].supervisor.wait(timeout=60) == 0 and reply.select
