"""The file transport: each message becomes one JSON file in a spool directory.

`DISPATCHER_TRANSPORT=file` replaces every provider with it (offline dry runs, audits).
Layout: `<spool_dir>/<channel>/<message_id>.json`, holding every `OutboundMessage`
field plus `provider_id`. Files are written to a temporary name and renamed into
place, so a reader never sees half a message and a crash never leaves one behind.
Writing the same message again replaces its file: one message, one file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from dispatcher.channels.base import OutboundMessage, SendResult
from dispatcher.domain import Channel, MessageStatus


class FileChannel:
    """`FileChannel(channel, spool_dir)`: the file transport for one channel.

    The instance is of a per-channel subclass (`FileSmsChannel`, ...), because the
    channel protocol makes `channel` a class attribute.
    """

    channel: ClassVar[Channel] = Channel.SMS
    name: ClassVar[str] = "file"

    def __new__(cls, channel: Channel | str, spool_dir: Path | str) -> FileChannel:
        target = cls if cls is not FileChannel else _FILE_CHANNELS[Channel(channel)]
        return super().__new__(target)

    def __init__(self, channel: Channel | str, spool_dir: Path | str) -> None:
        if Channel(channel) is not type(self).channel:
            raise ValueError(f"{type(self).__name__} is for {type(self).channel.value}, not {channel}")
        self.spool_dir = Path(spool_dir)
        self.directory = self.spool_dir / self.channel.value

    def path_for(self, message: OutboundMessage) -> Path:
        return self.directory / f"{message.message_id}.json"

    @staticmethod
    def provider_id(message: OutboundMessage) -> str:
        return f"file-{message.message_id}"

    async def send(self, message: OutboundMessage) -> SendResult:
        """Write the message's file; a write error is retryable (nothing is half-written)."""
        try:
            await asyncio.to_thread(self._write, message)
        except OSError as exc:
            return SendResult(
                None, MessageStatus.FAILED, retryable=True, error=f"cannot write to {self.directory}: {exc.strerror}"
            )
        return SendResult(provider_id=self.provider_id(message), status=MessageStatus.SENT)

    async def reconcile(self, message: OutboundMessage, since: dt.datetime) -> SendResult | None:
        """The file exists: it was sent. No file: it was not (the write is atomic)."""
        exists = await asyncio.to_thread(self.path_for(message).exists)
        if not exists:
            return None
        return SendResult(provider_id=self.provider_id(message), status=MessageStatus.SENT)

    async def aclose(self) -> None:
        """Nothing to release."""

    def _write(self, message: OutboundMessage) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = _as_json(message)
        payload["provider_id"] = self.provider_id(message)
        target = self.path_for(message)
        fd, temp = tempfile.mkstemp(prefix=f".{message.message_id}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, ensure_ascii=False, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def _as_json(message: OutboundMessage) -> dict[str, Any]:
    data = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    data["channel"] = message.channel.value
    data["headers"] = dict(message.headers)
    return data


class FileSmsChannel(FileChannel):
    channel: ClassVar[Channel] = Channel.SMS


class FileEmailChannel(FileChannel):
    channel: ClassVar[Channel] = Channel.EMAIL


class FileVoiceChannel(FileChannel):
    channel: ClassVar[Channel] = Channel.VOICE


_FILE_CHANNELS: dict[Channel, type[FileChannel]] = {
    Channel.SMS: FileSmsChannel,
    Channel.EMAIL: FileEmailChannel,
    Channel.VOICE: FileVoiceChannel,
}
