"""The method's math: pure functions on tensors, one module per stage."""
