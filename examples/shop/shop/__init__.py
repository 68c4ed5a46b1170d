"""The reference shop: six services, each with its own database, calling each other by name."""
