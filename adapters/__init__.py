"""Provider wire protocols ⇄ ledger commands: one module per protocol family."""
