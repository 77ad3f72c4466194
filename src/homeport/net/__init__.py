"""Who may talk to the server: tailnet identity, policy, tokens, the guard, the audit log."""
