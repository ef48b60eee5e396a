"""Pretrained transformers backbones: VLMs (hf_vlm), LoRA settings (lora), tiny offline test models (tiny_hf)."""
