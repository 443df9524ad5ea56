"""spurgen."""
