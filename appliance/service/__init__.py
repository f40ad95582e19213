"""Servicing a device in the field: the error catalogue, `appliance doctor`, the support bundle."""
