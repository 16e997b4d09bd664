"""salmonn-compress: a compression and optimization workbench for SALMONN-family audio LLMs."""

__version__ = "0.1.0"
