"""musicgen-jax."""
