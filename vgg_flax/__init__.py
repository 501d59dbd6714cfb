"""VGG-style networks in JAX/Flax, after D2L's "Networks Using Blocks" lesson."""
