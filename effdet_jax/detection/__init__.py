"""Pure jax.numpy pieces between the network outputs and boxes (no Flax state)."""
