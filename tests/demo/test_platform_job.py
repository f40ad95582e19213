"""`scripts/demo --platform NAME`: the main job through a platform's fake prints the call's
states, the transcript the device shows, the backend's record and the timeline."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from demo import platform_job

pytestmark = pytest.mark.e2e


async def test_the_main_job_through_thinnestai(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    said: list[str] = []
    async with asyncio.timeout(90):
        status = await platform_job.run("thinnestai", tmp_path, 30.0, said.append)
    assert status == 0
    assert "  device: connecting -> in_call" in said
    assert any(line.startswith("  transcript: agent: Hello, you are through") for line in said)
    assert "  device: in_call -> ending (platform_ended)" in said
    (record,) = [line for line in said if line.startswith("  backend record:")]
    assert record.endswith("ended platform_ended, agent_hangup (duration 3 s)")
    timeline = capsys.readouterr().out
    for stage in ("token", "connected", "agent_joined", "first_agent_audio", "ended"):
        assert f"  {stage}" in timeline
    assert "end reason: platform_ended" in timeline
