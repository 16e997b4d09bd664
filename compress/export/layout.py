"""File names of an ONNX export directory (shared by the writer and the ONNX Runtime backend)."""

KIND = "onnx"
FRONT = "audio_front.onnx"
LLM = "llm.onnx"
EMBED = "embed_tokens.npy"
CONFIG = "config.json"
