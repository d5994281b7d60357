"""Order: places, amends and withdraws orders; follows each to a final status (SPEC §3, §5)."""
