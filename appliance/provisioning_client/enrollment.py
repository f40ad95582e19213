"""The device's record of its enrollment: which backend accepted it, under which id."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from appliance.errors import NotEnrolledError, SettingsError
from appliance.files import write_private

ENROLLMENT_FILE_NAME = "enrollment.json"


@dataclass(frozen=True)
class Enrollment:
    """What the backend said when it enrolled this device."""

    device_id: str
    identity: str
    backend_url: str

    @classmethod
    def load(cls, state_dir: Path) -> Enrollment:
        """Read the enrollment, or raise NotEnrolledError with what to do."""
        path = Path(state_dir) / ENROLLMENT_FILE_NAME
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise NotEnrolledError(
                f"this device is not enrolled ({path} is missing): "
                "run `appliance enroll --code CODE`"
            ) from exc
        except json.JSONDecodeError as exc:
            raise SettingsError(path, None, f"not valid JSON: {exc}") from exc
        try:
            return cls(str(raw["device_id"]), str(raw["identity"]), str(raw["backend_url"]))
        except KeyError as exc:
            raise SettingsError(path, str(exc.args[0]), "missing key") from exc

    def save(self, state_dir: Path) -> None:
        """Write the enrollment atomically, durably and readable by the daemon's user only."""
        path = Path(state_dir) / ENROLLMENT_FILE_NAME
        write_private(path, (json.dumps(asdict(self), indent=2) + "\n").encode())


async def enroll_device(
    state_dir: Path, backend_url: str, name: str, code: str, *, timeout_s: float = 5.0
) -> Enrollment:
    """Make the device key if needed, enroll with a one-time code, and save the enrollment."""
    from appliance.provisioning_client.client import ProvisioningClient
    from appliance.provisioning_client.keys import DeviceKey

    key = DeviceKey.load_or_create(state_dir)
    async with ProvisioningClient(backend_url, key, timeout_s=timeout_s) as client:
        device_id, identity = await client.enroll(code, name)
    enrollment = Enrollment(device_id, identity, backend_url)
    enrollment.save(state_dir)
    return enrollment
