"""The transfer flow the agents drive: one task from its connections to its result (no Faust)."""
