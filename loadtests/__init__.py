"""Locust scenarios: simulated providers and players driving a running gateway."""
