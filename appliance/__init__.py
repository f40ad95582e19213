"""Device firmware: the voice kiosk / intercom daemon."""
