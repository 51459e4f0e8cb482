"""routeq storage package."""
