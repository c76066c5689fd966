"""Pure functions over arrays: pooling, attention and (later) losses' building blocks."""
