"""routeq producer package."""
