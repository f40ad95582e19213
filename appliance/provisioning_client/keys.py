"""The device's Ed25519 key pair: made on the device, kept in a 0600 file, never sent anywhere."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.errors import DeviceKeyError
from appliance.files import fsync_dir

KEY_FILE_NAME = "device_key.pem"


def b64url(data: bytes) -> str:
    """URL-safe base64 without padding, as the backend's API uses."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class DeviceKey:
    """The device's signing key. Only its public half and signatures ever leave this object."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self._public_raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def load_or_create(cls, state_dir: Path) -> DeviceKey:
        """Load the key from `state_dir`, creating it (mode 0600, directory 0700) on first start."""
        path = Path(state_dir) / KEY_FILE_NAME
        try:
            Path(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            if path.exists():
                return cls._load(path)
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            # Written whole and synced before it gets its name, so a power cut on first
            # boot never leaves an empty key; link() fails if another process won the race.
            tmp = path.with_name(f".{KEY_FILE_NAME}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            finally:
                tmp.unlink()
            fsync_dir(path.parent)
            return cls(key)
        except FileExistsError:
            return cls._load(path)
        except OSError as exc:
            raise DeviceKeyError(f"cannot create or read the device key {path}: {exc}") from exc

    @classmethod
    def _load(cls, path: Path) -> DeviceKey:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise DeviceKeyError(
                f"device key {path} has mode {mode:o}; it must be readable by its owner only (0600)"
            )
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except ValueError as exc:
            raise DeviceKeyError(f"device key {path} is not a valid PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise DeviceKeyError(f"device key {path} is not an Ed25519 key")
        return cls(key)

    @property
    def public_key_b64(self) -> str:
        """The raw public key as URL-safe base64."""
        return b64url(self._public_raw)

    @property
    def fingerprint(self) -> str:
        """The device id the backend derives from this key: `d-` + 16 hex digits."""
        return "d-" + hashlib.sha256(self._public_raw).hexdigest()[:16]

    def sign(self, message: bytes) -> bytes:
        """An Ed25519 signature of `message`."""
        return self._private_key.sign(message)

    def __repr__(self) -> str:
        return f"DeviceKey({self.fingerprint})"
