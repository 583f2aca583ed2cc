"""`ugpnet archive`: incremental, crash-safe restoration of a growing archive (lease, state, plan)."""
