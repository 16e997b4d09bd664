"""Measurement: latency (TTFT/TPOT/E2E), peak memory, model bytes and the memory-bandwidth bound.

Submodules are imported explicitly (``from compress.bench.latency import measure_latency``) so that
a clean measuring process only pays for the imports it needs:

- ``latency``:   ``measure_latency``, ``hackathon_latency``, ``set_threads``, ``percentile``
- ``memory``:    ``run_in_clean_process``, ``peak_memory_cpu``, ``cuda_peak_memory``,
                 ``hackathon_memory``, ``model_bytes``
- ``bandwidth``: ``measure_bandwidth``, ``decode_bound``
"""
