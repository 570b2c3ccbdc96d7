"""threezone.zones."""
