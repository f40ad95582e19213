"""Talks to the provisioning backend with the device's own key."""

from appliance.provisioning_client.client import (
    CallGrant,
    CallRing,
    DeviceInfo,
    ProvisioningClient,
    StatusReport,
)
from appliance.provisioning_client.enrollment import Enrollment
from appliance.provisioning_client.keys import DeviceKey

__all__ = [
    "CallGrant",
    "CallRing",
    "DeviceInfo",
    "DeviceKey",
    "Enrollment",
    "ProvisioningClient",
    "StatusReport",
]
