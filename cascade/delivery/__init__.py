"""The delivery log: who may call a provider for a message, and what became of it."""
