"""Quantization math and modules: RTN/GPTQ as pure tensor functions, GPTQ-format packing, run-time modules, export."""
