"""Messages from workers to the app: "changed" with as little payload as possible (can_replace collapses bursts)."""

from __future__ import annotations

from textual.message import Message

from twinkle_tui.gpu import GpuSnapshot, ProcessUsage
from twinkle_tui.monitor import Report
from twinkle_tui.runs.store import RunSummary


class FilesChanged(Message):
    """Something changed under $TWINKLE_HOME; the app holds the set of run ids that changed."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, FilesChanged)


class RunsRefreshed(Message):
    """The store read new data; widgets pull what they show. `summaries` is a new run list (immutable rows built
    by the worker), or None when only run data changed."""

    def __init__(self, summaries: tuple[RunSummary, ...] | None = None) -> None:
        super().__init__()
        self.summaries = summaries

    def can_replace(self, message: Message) -> bool:
        # The newer message (`message`) supersedes this one unless this one carries a run list the newer lacks.
        return isinstance(message, RunsRefreshed) and (message.summaries is not None or self.summaries is None)


class MonitorReports(Message):
    """New findings of the monitor (each report is one run's)."""

    def __init__(self, reports: list[Report]) -> None:
        super().__init__()
        self.reports = reports


class ResourcesSampled(Message):
    """A new GPU/CPU sample for the GPU panel."""

    def __init__(self, gpus: GpuSnapshot, usage: ProcessUsage | None) -> None:
        super().__init__()
        self.gpus = gpus
        self.usage = usage

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ResourcesSampled)
