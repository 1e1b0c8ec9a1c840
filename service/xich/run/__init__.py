"""Running an audit: the recorded-run sequence every entry point calls."""
