"""espeak-ng speech for the demo agent and the wake-word tests."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo.tts import espeak_wav, wav_to_pcm


@pytest.fixture
def unraisables(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    seen: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    yield seen


async def test_speech_comes_back_as_pcm() -> None:
    pcm, rate = wav_to_pcm(await espeak_wav("hello"))
    assert rate > 8000 and len(pcm) > rate // 10


def _espeak_children() -> list[str]:
    pids = " ".join(p.read_text() for p in Path("/proc/self/task").glob("*/children")).split()
    names = []
    for pid in pids:
        try:
            names.append(Path(f"/proc/{pid}/comm").read_text().strip())
        except FileNotFoundError:
            continue
    return [n for n in names if n.startswith("espeak")]


async def test_a_cancelled_synthesis_leaves_no_process_or_pipe_behind(
    unraisables: list[Any],
) -> None:
    # A minute of speech: espeak-ng is still writing into the pipe when the task is cancelled.
    task = asyncio.create_task(espeak_wav("the quick brown fox jumps over the lazy dog " * 60))
    async with asyncio.timeout(5):
        while not _espeak_children():
            await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    del task
    await asyncio.sleep(0.2)
    gc.collect()
    assert _espeak_children() == []
    assert [u.object for u in unraisables] == []
