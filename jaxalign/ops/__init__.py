"""Pure functions over arrays: pooling and (later) losses' building blocks."""
