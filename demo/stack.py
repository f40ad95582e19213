"""The whole local stack on loopback: LiveKit server, backend on SQLite, demo agent, and devices."""

from __future__ import annotations

import json
import os
import tempfile
import wave
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from appliance.aio import AsyncResource
from appliance.provisioning_client.enrollment import enroll_device
from appliance.settings import Settings, load_settings
from demo.agent import DemoAgent
from demo.agent_session import SessionOptions
from demo.livekit_server import LOOPBACK, LiveKitServer, free_port
from demo.redis_server import RedisServer
from provisioning.config import load_config
from provisioning.http import BackendServer
from provisioning.livekit_events import WEBHOOK_PATH

AGENT_NAME = "demo-agent"
USER_SENTENCE = "Hello, I would like to know when the library opens tomorrow morning."


@dataclass(frozen=True)
class DeviceFiles:
    """Where one simulated device keeps its settings, state and audio."""

    config: Path
    state_dir: Path
    microphone_wav: Path
    speaker_wav: Path


class LocalStack(AsyncResource):
    """`async with LocalStack() as stack:` starts everything; leaving stops it in reverse order.

    With `livekit_nodes=2` or more, the LiveKit nodes share one Redis; the backend sends devices
    to `livekit_nodes[device_node]` and the agent registers with `livekit_nodes[agent_node]`.
    """

    def __init__(
        self,
        *,
        workdir: Path | None = None,
        livekit_nodes: int = 1,
        device_node: int = 0,
        agent_node: int = -1,
        token_ttl_s: int = 600,
        max_calls_per_minute: int = 30,
        end_after_turns: int | None = None,
        agent_greeting: str | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        if livekit_nodes < 1:
            raise ValueError("livekit_nodes must be at least 1")
        for name, index in (("device_node", device_node), ("agent_node", agent_node)):
            if not -livekit_nodes <= index < livekit_nodes:
                raise ValueError(f"{name}={index} is not one of {livekit_nodes} LiveKit nodes")
        self._stack = AsyncExitStack()
        self._livekit_count = livekit_nodes
        self._device_node = device_node
        self._agent_node = agent_node
        self._workdir_arg = workdir
        self._token_ttl_s = token_ttl_s
        # Above the backend's default of 10: tests and benchmarks call back to back.
        self._max_calls_per_minute = max_calls_per_minute
        self._end_after_turns = end_after_turns
        self._agent_greeting = agent_greeting
        # Where fleet events go (a receiver of the test's), signed with this secret.
        self._webhook_url = webhook_url
        self._webhook_secret = webhook_secret
        self._backend_port = 0
        self.workdir = Path()
        self.redis: RedisServer | None = None
        self.livekit_nodes: list[LiveKitServer] = []
        self.livekit: LiveKitServer
        self.backend: BackendServer
        self.agent: DemoAgent
        self.backend_config = Path()
        self.webhook_url = ""

    async def aclose(self) -> None:
        """Stop everything in reverse order of starting."""
        await self._stack.aclose()

    async def start(self) -> None:
        """Start the LiveKit server, the backend and the agent."""
        if self._workdir_arg is None:
            tmp = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="kiosk-stack-"))
            self.workdir = Path(tmp)
        else:
            self.workdir = self._workdir_arg
            self.workdir.mkdir(parents=True, exist_ok=True)
        # The backend's port is chosen first: LiveKit's config names its webhook URL.
        backend_port = self._backend_port = free_port()
        self.webhook_url = f"http://{LOOPBACK}:{backend_port}{WEBHOOK_PATH}"
        await self._start_livekit()
        self.backend_config = self._write_backend_config()
        self.backend = await self._stack.enter_async_context(
            BackendServer(load_config(self.backend_config), port=backend_port)
        )
        # LiveKit stops before the backend: its last webhooks still get through, and none
        # connects while the backend shuts down (aiohttp would wait 60 s for that connection).
        self._stack.push_async_callback(self._stop_livekit)
        self.agent = await self._stack.enter_async_context(
            DemoAgent(
                url=self.agent_livekit.url,
                api_key=self.livekit.api_key,
                api_secret=self.livekit.api_secret,
                agent_name=AGENT_NAME,
                end_after_turns=self._end_after_turns,
                greeting=self._agent_greeting or SessionOptions.greeting,
            )
        )
        await self.agent.wait_registered(timeout=20)

    async def _start_livekit(self) -> None:
        redis_address = None
        if self._livekit_count > 1:
            self.redis = await self._stack.enter_async_context(RedisServer())
            redis_address = self.redis.address
        self.livekit = await self._stack.enter_async_context(
            LiveKitServer(redis_address=redis_address, webhook_urls=[self.webhook_url])
        )
        self.livekit_nodes = [self.livekit]
        for _ in range(1, self._livekit_count):
            node = LiveKitServer(
                api_key=self.livekit.api_key,
                api_secret=self.livekit.api_secret,
                redis_address=redis_address,
                webhook_urls=[self.webhook_url],
            )
            self.livekit_nodes.append(await self._stack.enter_async_context(node))

    async def _stop_livekit(self) -> None:
        for node in reversed(self.livekit_nodes):
            await node.aclose()

    @property
    def device_livekit(self) -> LiveKitServer:
        """The LiveKit node whose URL the backend hands to devices."""
        return self.livekit_nodes[self._device_node]

    @property
    def agent_livekit(self) -> LiveKitServer:
        """The LiveKit node the demo agent registers with."""
        return self.livekit_nodes[self._agent_node]

    def _write_backend_config(self) -> Path:
        secret_file = self.workdir / "livekit-api-secret"
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.livekit.api_secret)
        path = self.workdir / "provisioning.toml"
        webhooks = ""
        if self._webhook_url is not None:
            webhook_secret = self.workdir / "webhook-secret"
            fd = os.open(webhook_secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self._webhook_secret or "")
            webhooks = (
                f"\n[webhooks]\nurl = {json.dumps(self._webhook_url)}\n"
                'secret_file = "webhook-secret"\n'
            )
        path.write_text(
            '[server]\nhost = "127.0.0.1"\nport = 0\n'
            f'public_url = "http://{LOOPBACK}:{self._backend_port}"\n\n'
            '[database]\npath = "provisioning.sqlite3"\n\n'
            f"[livekit]\nurl = {json.dumps(self.device_livekit.url)}\n"
            f"api_key = {json.dumps(self.livekit.api_key)}\n"
            'api_secret_file = "livekit-api-secret"\n\n'
            f'[calls]\nagent_name = "{AGENT_NAME}"\ntoken_ttl_s = {self._token_ttl_s}\n'
            f"max_per_minute = {self._max_calls_per_minute}\n" + webhooks
        )
        return path

    def write_device(
        self,
        name: str,
        microphone_pcm: npt.NDArray[np.int16] | None,
        *,
        hold_grant: bool = True,
        **call: float,
    ) -> DeviceFiles:
        """Write settings for a simulated device whose microphone plays `microphone_pcm`."""
        base = self.workdir / name
        base.mkdir(parents=True, exist_ok=True)
        files = DeviceFiles(
            config=base / "appliance.toml",
            state_dir=base / "state",
            microphone_wav=base / "microphone.wav",
            speaker_wav=base / "speaker.wav",
        )
        pcm = microphone_pcm if microphone_pcm is not None else np.zeros(4800, dtype=np.int16)
        write_wav(files.microphone_wav, pcm)
        call_lines = "".join(f"{k} = {float(v)}\n" for k, v in call.items())
        files.config.write_text(
            f'[device]\nname = {json.dumps(name)}\nstate_dir = "state"\n\n'
            f"[backend]\nurl = {json.dumps(self.backend.url)}\n"
            f"hold_grant = {json.dumps(hold_grant)}\n\n"
            '[board]\nprofile = "simulated"\n\n'
            f"[call]\n{call_lines}\n"
            '[simulated]\nmicrophone_wav = "microphone.wav"\nspeaker_wav = "speaker.wav"\n'
        )
        return files

    async def enroll(self, files: DeviceFiles) -> Settings:
        """Issue a one-time code as the admin would, and enroll the device with it."""
        settings = load_settings(files.config)
        code = await self.backend.core.create_enrollment_code(ttl_s=600, label=settings.device.name)
        await enroll_device(
            settings.device.state_dir, settings.backend.url, settings.device.name, code
        )
        return settings


def write_wav(path: Path, pcm: npt.NDArray[np.int16], rate: int = 48000) -> None:
    """Write mono 16-bit PCM to a WAV file."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.astype(np.int16).tobytes())
