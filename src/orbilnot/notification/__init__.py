"""Notification: one stored notification per payment outcome (SPEC §3, §5)."""
