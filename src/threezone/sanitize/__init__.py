"""threezone.sanitize."""
