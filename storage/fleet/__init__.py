"""State the whole fleet shares in Redis and changes atomically: admission (breakers, limits) and budgets."""
