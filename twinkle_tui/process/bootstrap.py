"""The first code a run's process executes: it runs the script as `python script.py` would, and records its own
exit if the supervisor is gone.

    python -P -u -m twinkle_tui.process.bootstrap --script RUN_DIR/train.py --as /home/me/proj/train.py -- args...
    python -P -u -m twinkle_tui.process.bootstrap --module twinkle_trainer -- config.toml --lr 1e-4

`-P` keeps the working directory off sys.path while this module and the runtime import: a user's own `trainer.py`
or `twinkle_tui.py` there must not replace ours. Nothing here imports the name `trainer`, so a script whose folder
holds a `trainer.py` gets that file from `import trainer`, as under plain python.

The run directory keeps the versions of a script (train.py, train_v{N}.py) that fixes edit, and the copy there is
what runs; but the script sees what `python /home/me/proj/train.py args` would show it: its folder is sys.path[0]
(so sibling modules import), the working directory is the user's, and sys.argv is [original path, *args]. Its
`__file__` and its tracebacks name the user's file while the copy is that file's bytes, and the copy once a fix
changed it (so spawned workers import the code that runs).

Standard library only: this runs inside every training process.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

from twinkle_trainer.protocol import HOME_ENV, RUN_ID_ENV, RunMeta, RunPaths, process_start_time, update_meta

LAUNCH_ENV = "TWINKLE_LAUNCH"  # the same name as tree.LAUNCH_ENV (this module stays standard-library only)

SUPERVISOR_ENV = "TWINKLE_SUPERVISOR_PID"


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def run_script(copy: Path, original: Path, args: list[str]) -> None:
    """Run the run directory's copy of a script as `python original args` would run the original. While the copy
    is the original's bytes, the script is the original (its __file__, its tracebacks). Once a fix or an edit made
    them differ, it is the copy: every process of the run (spawned workers re-import __main__ by __file__) must run
    the same code, the code that is running."""
    source = copy.read_bytes()
    try:
        same = original.read_bytes() == source
    except OSError:
        same = False
    path = original if same else copy
    code = compile(source, str(path), "exec", dont_inherit=True)
    main = types.ModuleType("__main__")
    main.__dict__.update({"__file__": str(path), "__builtins__": __builtins__, "__loader__": None,
                          "__spec__": None, "__package__": None, "__cached__": None})
    sys.modules["__main__"] = main
    sys.argv = [str(original), *args]
    folder = str(original.resolve().parent)
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path[0] = folder  # python -m put the working directory there; python script.py puts the script's folder
    else:
        sys.path.insert(0, folder)
    exec(code, main.__dict__)


def run_module(module: str, args: list[str]) -> None:
    import runpy

    sys.argv = [module, *args]
    sys.path.insert(0, os.getcwd())  # as `python -m module` has it (we run with -P, so nothing else put it there)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


class Orphan:
    """Knows whether the supervisor that started us is still our parent (a dead one hands us to init)."""

    def __init__(self) -> None:
        self.supervisor = int(os.environ.get(SUPERVISOR_ENV) or 0)

    @property
    def orphaned(self) -> bool:
        return bool(self.supervisor) and os.getppid() != self.supervisor


def record_own_pid(paths: RunPaths, launch: int) -> None:
    """Write our pid, so a supervisor that dies before it records us does not leave the run unfindable."""
    pid = os.getpid()

    def change(meta: RunMeta) -> None:
        if meta.launches != launch or meta.pid == pid:
            raise _Unchanged
        meta.pid, meta.pid_start_time, meta.pgid = pid, process_start_time(pid), os.getpgid(0)

    try:
        update_meta(paths, change, repair=True)
    except _Unchanged:
        pass
    except Exception as exc:  # never keep a script from running over bookkeeping
        print(f"[twinkle] warning: could not record the run's pid: {exc}", file=sys.stderr)


class _Unchanged(Exception):
    pass


def main(argv: list[str]) -> int:
    if "--" in argv:
        cut = argv.index("--")
        opts, args = argv[:cut], argv[cut + 1 :]
    else:
        opts, args = argv, []
    values = dict(zip(opts[::2], opts[1::2], strict=False))
    run_id, home = os.environ.get(RUN_ID_ENV), os.environ.get(HOME_ENV)
    launch = int(os.environ.get(LAUNCH_ENV) or 0)
    paths = RunPaths(Path(home) / run_id) if run_id and home else None
    if paths is not None and launch:
        record_own_pid(paths, launch)
    orphan = Orphan()
    code = 0
    try:
        if "--module" in values:
            run_module(values["--module"], args)
        else:
            copy = Path(values["--script"])
            run_script(copy, Path(values.get("--as") or copy), args)
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException as exc:
        # The script's own excepthook (TrainingRuntime records the failure there) sees the traceback without
        # this module's frames, as it would under plain python.
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        code = 130 if isinstance(exc, KeyboardInterrupt) else 1
    if paths is not None and launch and orphan.orphaned:
        from twinkle_tui.process.exits import record_exit

        sys.stdout.flush()
        record_exit(paths, code, launch, note="the supervisor was gone; the run recorded its own exit")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
