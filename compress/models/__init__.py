"""The SALMONN model and its parts, with the released checkpoints' parameter names."""
