"""The FastAPI service that turns provider receipts and tracking hits into journey signals."""
