"""Device profiles: data files naming each point of a device type (see docs/data-model.md)."""

from devices.profiles.loader import ModbusTiming, Profile, ProfileError, available, load_profile

__all__ = ["ModbusTiming", "Profile", "ProfileError", "available", "load_profile"]
