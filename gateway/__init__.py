"""inference-gateway: an OpenAI-compatible gateway in front of W&B Inference."""
