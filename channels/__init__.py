"""One module per provider, each behind the small `Channel` protocol of channels.base."""
