"""Test support shipped with the package: tiny random-init transformers models written offline (tiny_hf.py) and
the SmolLM2 GGUF -> transformers conversion (smollm2.py). Not imported by the library itself, except where a
CLI or bench needs a tiny model."""
