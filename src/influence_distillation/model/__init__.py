"""Loading a causal LM and cutting it to the blocks the JVP embeddings need."""
