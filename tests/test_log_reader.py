"""The log reader on output as launchers, loggers and libraries write it: the real-shaped corpus under
tests/corpus (each fixture with its source thread) and the cases the issue names one by one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from twinkle_tui.monitor.crash_kinds import KINDS, SIGNAL_KINDS, diagnose
from twinkle_tui.runs.log_lines import read_lines
from twinkle_tui.runs.log_reader import read_failure, strip_prefix

from corpus.replay import Fixture, fixtures

FAILURES = [f for f in fixtures("failures") if f.rule == "crash"]


def reading_of(f: Fixture):  # the reading the supervisor and the monitor get for this run
    sig = f.signal
    return read_failure(f.log.splitlines(), -sig.value if sig else f.code, sig.name if sig else None)


def test_the_corpus_is_big_and_varied_enough() -> None:
    failures, healthy = fixtures("failures"), fixtures("healthy")
    kinds = {f.expect for f in failures}
    assert len(failures) >= 80 and len(healthy) >= 25 and len(kinds) >= 20
    assert all(f.source.startswith("https://github.com/") and f.log.strip() for f in failures + healthy)


@pytest.mark.parametrize("fixture", FAILURES, ids=lambda f: f.name)
def test_every_real_failure_gets_its_kind_and_a_root_cause_line(fixture: Fixture) -> None:
    reading = reading_of(fixture)
    assert diagnose(reading).kind == fixture.kind
    line = reading.error_line()
    assert line and not line.startswith(("╭", "│", "╰", "+-", "CUDA kernel errors", "To enable traceback"))
    assert "ChildFailedError" not in line and "CalledProcessError" not in line  # never the launcher's summary


def test_every_kind_has_advice_a_user_can_act_on() -> None:
    advice = [k.advice for k in KINDS] + [fix for _, _, fix in SIGNAL_KINDS.values()]
    assert all(len(a) > 40 for a in advice)


def test_prefixes_of_launchers_and_loggers_are_stripped_and_say_who() -> None:
    cases = {
        "[rank3]: Traceback (most recent call last):": ("rank 3", "Traceback (most recent call last):"),
        "[default0]:RuntimeError: boom": ("rank 0", "RuntimeError: boom"),
        "(RayWorker pid=123) ValueError: bad": ("RayWorker pid=123", "ValueError: bad"),
        "worker-1  | KeyError: 'x'": ("worker-1", "KeyError: 'x'"),
        "[1,0]<stderr>:OSError: [Errno 5]": ("rank 0", "OSError: [Errno 5]"),
        "2024-05-01 12:00:00,123 - ERROR - OSError: disk": ("", "OSError: disk"),
        "E0325 20:57:27.620000 2606 torch/api.py:869] failed (exitcode: -9)": ("", "failed (exitcode: -9)"),
        "[2023-04-14 13:11:27,879] [INFO] [launch.py:428:sigkill_handler] Killing subprocess 1":
            ("", "Killing subprocess 1"),
        "\x1b[31mRuntimeError: red\x1b[0m": ("", "RuntimeError: red"),
        "  40%|████      | 4/10 [00:01<00:02]\r  50%|█████     | 5/10 [00:02<00:02]": ("", "  50%|█████     | 5/10 [00:02<00:02]"),
    }
    for raw, (source, text) in cases.items():
        line = strip_prefix(raw)
        assert (line.source, line.text) == (source, text), raw


def test_a_traceback_glued_after_a_progress_bar_is_read() -> None:
    log = ["  3%|▎         | 31/1000 [02:58<1:31:20,  5.66s/it]Traceback (most recent call last):",
           '  File "train.py", line 9, in <module>', "    step()", "KeyError: 'labels'"]
    assert read_failure(log, 1).error_line() == "KeyError: 'labels'"
    # a logger's ERROR line (or an exception line) glued to a bar is a line of its own; a bar is not the error
    log = ["Epoch 0:  41%|████      | 7/17 [00:21<00:30, loss=0.81]ERROR: Unexpected bus error in worker.",
           "Traceback (most recent call last):", '  File "fit.py", line 3, in <module>', "    fit()",
           "RuntimeError: DataLoader worker (pid 81) is killed by signal: Bus error."]
    reading = read_failure(log, 1)
    assert reading.error_line() == "RuntimeError: DataLoader worker (pid 81) is killed by signal: Bus error."
    assert "ERROR: Unexpected bus error in worker." in [line.text for line in read_lines(log)]


def test_the_root_cause_is_the_first_workers_error_not_the_launchers() -> None:
    f = next(f for f in FAILURES if f.name == "oom-two-ranks-torchrun")
    reading = reading_of(f)
    assert reading.describe_sources() == "rank 0 (and 1 more)"  # one copy of the error, from the lowest rank
    assert "GPU 0" in (reading.error_line() or "")
    excerpt = reading.excerpt()
    assert excerpt.count("CUDA out of memory") == 1 and "ChildFailedError" not in excerpt
    assert "launcher: failed (exitcode: 1) local_rank: 0" in excerpt  # the launcher's view, as context


def test_a_consequence_of_another_ranks_death_is_not_the_root_cause() -> None:
    log = ["[rank1]: Traceback (most recent call last):", '[rank1]:   File "t.py", line 3, in <module>',
           "[rank1]: RuntimeError: [2] is setting up NCCL communicator: Connection reset by peer",
           "[rank0]: Traceback (most recent call last):", '[rank0]:   File "t.py", line 3, in <module>',
           "[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 4.00 GiB."]
    reading = read_failure(log, 1)
    assert reading.source == "rank 0" and "out of memory" in (reading.error_line() or "")


def test_the_lines_after_the_exception_line_explain_it_and_hints_are_not_the_error() -> None:
    by_name = {f.name: f for f in FAILURES}
    state = reading_of(by_name["ckpt-mismatch-vocab-size"]).error_line() or ""
    assert state.startswith("RuntimeError: Error(s) in loading state_dict") and "size mismatch for shared" in state
    cuda = reading_of(by_name["cuda-illegal-access-hints"])
    assert cuda.error_line() == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert diagnose(cuda).kind == "CUDA error"  # the TORCH_USE_CUDA_DSA hint says "device-side assertions"
    wrapped = reading_of(by_name["import-torch-six"]).error_line() or ""
    assert wrapped.endswith("No module named 'torch._six'")


def test_a_rich_traceback_is_read_like_a_plain_one() -> None:
    f = next(f for f in FAILURES if f.name == "config-ds-batch-rich-wrapped")
    reading = reading_of(f)
    assert reading.error_line() == ("AssertionError: Check batch related parameters. train_batch_size is not equal "
                                    "to micro_batch_per_gpu * gradient_acc_step * world_size 64 != 4 * 8 * 1")
    assert reading.exception is not None and "config.py" in reading.exception.frames[-1]


def test_no_traceback_falls_back_to_the_signal_and_what_it_means() -> None:
    reading = read_failure(["step 10 loss 1.0", "Killed"], -9, "SIGKILL")
    assert reading.error_line() == "killed by SIGKILL"
    diagnosis = diagnose(reading)
    assert diagnosis.kind == "killed by SIGKILL" and "OOM killer" in diagnosis.meaning
    assert "dmesg" in diagnosis.advice


def test_a_traceback_in_the_log_of_a_sigkilled_run_is_not_its_cause() -> None:
    log = ["Traceback (most recent call last):", '  File "t.py", line 1, in <module>', "ValueError: handled",
           "step 900 loss 0.3"]
    reading = read_failure(log, -9, "SIGKILL")
    assert reading.error_line() == "killed by SIGKILL" and diagnose(reading).kind == "killed by SIGKILL"


def test_ctrl_c_is_an_interruption() -> None:
    for f in (f for f in FAILURES if f.kind == "interrupted"):
        assert reading_of(f).interrupted


def test_the_reader_and_the_exit_recorder_import_only_the_standard_library() -> None:
    code = ("import sys, twinkle_tui.process.exits, twinkle_tui.runs.log_reader; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('numpy', 'torch', 'orjson', 'textual')]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
