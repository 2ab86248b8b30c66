"""GPU and process resource probes: NVML (nvidia-ml-py) for GPUs, psutil for a run's CPU and memory.

Without an NVIDIA driver nvmlInit() raises NVMLError_LibraryNotFound: that is reported as "no GPU detected",
never as a crash.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    utilization: float | None  # percent
    memory_used: int  # bytes
    memory_total: int
    temperature: float | None  # degrees C
    power: float | None  # watts
    pids: tuple[int, ...] = ()
    process_memory: tuple[tuple[int, int], ...] = ()  # (pid, bytes of GPU memory) where NVML reports it


@dataclass(frozen=True)
class GpuSnapshot:
    gpus: tuple[GpuInfo, ...] = ()
    error: str | None = None  # why there are no GPUs to show


@dataclass(frozen=True)
class ProcessUsage:
    """CPU and memory of a run's process tree."""

    cpu_percent: float
    rss: int
    threads: int
    processes: int
    gpu_memory: int = 0  # bytes, summed over the processes of the tree that NVML lists


class GpuProbe:
    """Reads NVML once per call; initialisation is attempted once and its failure remembered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nvml = None
        self._init_error: str | None = None
        self._initialised = False

    def _init(self) -> None:
        self._initialised = True
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded / ImportError
            name = type(exc).__name__
            self._init_error = "no GPU detected" if "NotFound" in name or "Driver" in name or isinstance(exc, ImportError) else f"no GPU detected ({exc})"
            log.info("NVML unavailable: %s: %s", name, exc)

    def snapshot(self) -> GpuSnapshot:
        with self._lock:
            if not self._initialised:
                self._init()
            if self._nvml is None:
                return GpuSnapshot(error=self._init_error or "no GPU detected")
            nv = self._nvml
            try:
                gpus = []
                for i in range(nv.nvmlDeviceGetCount()):
                    h = nv.nvmlDeviceGetHandleByIndex(i)
                    name = nv.nvmlDeviceGetName(h)
                    name = name.decode() if isinstance(name, bytes) else str(name)
                    mem = nv.nvmlDeviceGetMemoryInfo(h)
                    gpus.append(GpuInfo(
                        index=i, name=name,
                        utilization=_try(lambda h=h: float(nv.nvmlDeviceGetUtilizationRates(h).gpu)),
                        memory_used=int(mem.used), memory_total=int(mem.total),
                        temperature=_try(lambda h=h: float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))),
                        power=_try(lambda h=h: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
                        **_gpu_processes(nv, h),
                    ))
                return GpuSnapshot(tuple(gpus), None if gpus else "no GPU detected")
            except Exception as exc:
                return GpuSnapshot(error=f"GPU query failed: {exc}")


def _try(read: Callable[[], float]) -> float | None:
    try:
        return read()
    except Exception:
        return None


def _gpu_processes(nv: Any, handle: Any) -> dict[str, tuple[Any, ...]]:
    pids: set[int] = set()
    memory: dict[int, int] = {}
    for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        try:
            for p in getattr(nv, getter)(handle):
                pids.add(p.pid)
                used = getattr(p, "usedGpuMemory", None)
                if isinstance(used, int) and used >= 0:
                    memory[p.pid] = memory.get(p.pid, 0) + used
        except Exception:
            continue
    return {"pids": tuple(sorted(pids)), "process_memory": tuple(sorted(memory.items()))}


class UsageSampler:
    """CPU, memory and GPU memory of a run's process tree.

    psutil measures CPU between two calls on the same Process object, so the objects are kept from one sample to
    the next (a fresh object always reports 0%): multi-process runs and sampler engines show their real load.
    """

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def sample(self, pid: int | None, gpus: GpuSnapshot | None = None) -> ProcessUsage | None:
        if not pid:
            self._procs.clear()
            return None
        try:
            root = self._cached(pid)
            tree = [root, *root.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self._procs.clear()
            return None
        live: dict[int, psutil.Process] = {}
        cpu = 0.0
        rss = threads = 0
        for proc in tree:
            try:
                proc = self._cached(proc.pid, proc)
                with proc.oneshot():
                    cpu += proc.cpu_percent(None)
                    rss += proc.memory_info().rss
                    threads += proc.num_threads()
                live[proc.pid] = proc
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        self._procs = live
        gpu_memory = 0
        for g in (gpus.gpus if gpus else ()):
            gpu_memory += sum(used for p, used in g.process_memory if p in live)
        return ProcessUsage(cpu, rss, threads, len(live), gpu_memory)

    def _cached(self, pid: int, fresh: psutil.Process | None = None) -> psutil.Process:
        known = self._procs.get(pid)
        candidate = fresh or psutil.Process(pid)
        if known is not None and known.create_time() == candidate.create_time():
            return known
        self._procs[pid] = candidate
        return candidate


def format_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit in ("B", "KiB") else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"

