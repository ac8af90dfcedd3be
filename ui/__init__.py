"""The people-facing surfaces: the letsplay CLI and the Qt window."""
