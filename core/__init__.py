"""The shared base every other package builds on: settings, errors, money, ledger commands, the session and
provider records, the HTTP edge helpers. It imports nothing of the project; ``ledger``, ``adapters`` and
``gateway`` import it (``tests/test_structure.py`` holds every package to its direction)."""
