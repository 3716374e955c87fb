"""Real components the tests start themselves (PostgreSQL, ...): helpers, not tests."""
