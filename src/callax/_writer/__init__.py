"""Host side of callax's writer (no JAX here): event encoding and the run registry."""
