"""Decoder (generative) language models: IO specs, export, genai folders, generation loops."""
