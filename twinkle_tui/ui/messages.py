"""Payload-free "changed" messages: a burst of file changes collapses into one repaint (can_replace)."""

from __future__ import annotations

from textual.message import Message

from twinkle_tui.gpu import GpuSnapshot, ProcessUsage


class FilesChanged(Message):
    """Something changed under $TWINKLE_HOME; the app holds the set of run ids that changed."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, FilesChanged)


class RunsRefreshed(Message):
    """The run store has read new data; widgets pull what they show."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunsRefreshed)


class ResourcesSampled(Message):
    """A new GPU/CPU sample for the GPU panel."""

    def __init__(self, gpus: GpuSnapshot, usage: ProcessUsage | None) -> None:
        super().__init__()
        self.gpus = gpus
        self.usage = usage

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ResourcesSampled)
