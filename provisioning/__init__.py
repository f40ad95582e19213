"""Provisioning backend: enrolls devices and mints their LiveKit tokens."""
