"""Talks to the provisioning backend with the device's own key."""

from appliance.provisioning_client.client import (
    CallGrant,
    DeviceInfo,
    ProvisioningClient,
    StatusReport,
)
from appliance.provisioning_client.enrollment import Enrollment
from appliance.provisioning_client.keys import DeviceKey

__all__ = [
    "CallGrant",
    "DeviceInfo",
    "DeviceKey",
    "Enrollment",
    "ProvisioningClient",
    "StatusReport",
]
