"""The reuse layer: the attention reuser (the router over the pool) and its shared embedding."""
