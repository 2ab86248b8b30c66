"""GPU and process resource probes: NVML (nvidia-ml-py) for GPUs, psutil for a run's CPU and memory.

Without an NVIDIA driver nvmlInit() raises NVMLError_LibraryNotFound: that is reported as "no GPU detected",
never as a crash.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

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
                        utilization=_try(lambda: float(nv.nvmlDeviceGetUtilizationRates(h).gpu)),
                        memory_used=int(mem.used), memory_total=int(mem.total),
                        temperature=_try(lambda: float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))),
                        power=_try(lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
                        pids=tuple(sorted(_gpu_pids(nv, h))),
                    ))
                return GpuSnapshot(tuple(gpus), None if gpus else "no GPU detected")
            except Exception as exc:
                return GpuSnapshot(error=f"GPU query failed: {exc}")


def _try(read):  # type: ignore[no-untyped-def]
    try:
        return read()
    except Exception:
        return None


def _gpu_pids(nv, handle) -> set[int]:  # type: ignore[no-untyped-def]
    pids: set[int] = set()
    for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        try:
            pids.update(p.pid for p in getattr(nv, getter)(handle))
        except Exception:
            continue
    return pids


_proc_cache: dict[int, psutil.Process] = {}


def process_usage(pid: int | None) -> ProcessUsage | None:
    """CPU (percent of one core, since the last call for this pid) and RSS of pid and its children."""
    if not pid:
        return None
    try:
        root = _proc_cache.get(pid)
        if root is None or not root.is_running():
            root = _proc_cache[pid] = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        cpu = rss = threads = 0
        for p in procs:
            try:
                with p.oneshot():
                    cpu += p.cpu_percent(None)
                    rss += p.memory_info().rss
                    threads += p.num_threads()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return ProcessUsage(cpu, rss, threads, len(procs))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        _proc_cache.pop(pid, None)
        return None


def format_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit in ("B", "KiB") else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"

