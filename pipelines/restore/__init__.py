"""`ugpnet restore`: batch restoration on Ray Data (run: config and flow; stages, inputs, memory, budget)."""
