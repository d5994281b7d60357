"""Billing: accounts and their ledger; pays for orders and refunds them (SPEC §3, §5)."""
