"""GPUs from NVML (name, utilisation, memory, temperature, power, which run uses them) and the selected run's
CPU and RAM from psutil."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from twinkle_tui.gpu import GpuSnapshot, ProcessUsage, format_bytes


def _bar(fraction: float, width: int = 10) -> Text:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    color = "green" if fraction < 0.7 else ("yellow" if fraction < 0.9 else "red")
    return Text("▮" * filled, style=color) + Text("▯" * (width - filled), style="grey37")


class GpuPanel(Static):
    """The machine's GPUs and the selected run's processes. Nothing in it depends on the panel's width, so its
    height is the same at every layout (a text chosen for a width learnt after the first layout left a stale
    height: a blank row, or a cut one, until the next resize)."""

    def show(self, gpus: GpuSnapshot, usage: ProcessUsage | None, runs_by_pid: dict[int, str]) -> None:
        text = Text()
        if gpus.error:
            text.append(gpus.error, style="dim")
        for g in gpus.gpus:
            text.append(f"GPU{g.index} ", style="bold")
            text.append(g.name[:22] + "\n")
            util = g.utilization or 0.0
            text.append("util ")
            text.append_text(_bar(util / 100))
            text.append(f" {util:3.0f}%\n")
            mem = g.memory_used / g.memory_total if g.memory_total else 0.0
            text.append("mem  ")
            text.append_text(_bar(mem))
            text.append(f" {format_bytes(g.memory_used)}/{format_bytes(g.memory_total)}\n")
            extras = []
            if g.temperature is not None:
                extras.append(f"{g.temperature:.0f}°C")
            if g.power is not None:
                extras.append(f"{g.power:.0f} W")
            runs = sorted({runs_by_pid[p] for p in g.pids if p in runs_by_pid})
            if runs:
                extras.append("runs: " + ", ".join(runs))
            elif g.pids:
                extras.append(f"{len(g.pids)} other process(es)")
            if extras:
                text.append("  ".join(extras) + "\n", style="dim")
        text.append("\n" if gpus.error else "")
        if usage is None:
            text.append("run: no live process", style="dim")
        else:
            text.append("run: ", style="bold")
            text.append(f"CPU {usage.cpu_percent:.0f}%\nRAM {format_bytes(usage.rss)}\n")
            text.append(f"{usage.processes} proc · {usage.threads} thread{'s' if usage.threads != 1 else ''}",
                        style="dim")
        self.update(text)
