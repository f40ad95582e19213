"""Status outputs: the journal and systemd. They observe state changes and decide nothing."""
