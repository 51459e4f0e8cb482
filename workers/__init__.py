"""routeq workers package."""
