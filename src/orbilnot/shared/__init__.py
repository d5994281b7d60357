"""The shared kernel: what every service uses and nothing service-specific."""
