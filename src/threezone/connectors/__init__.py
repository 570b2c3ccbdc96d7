"""threezone.connectors."""
