"""Every side effect a workflow needs: profile look-ups, sends, records."""
