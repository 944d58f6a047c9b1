"""The Game Gateway edge service: aiohttp on uvloop, in front of the hot paths, adapters and ledger."""

__version__ = "0.1.0"
