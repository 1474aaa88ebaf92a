"""Interoperability with other tools' formats: Hugging Face transformers checkpoints and llama.cpp's GGUF files
(`gptkit convert`).

See `gptkit.interop.hf` and `gptkit.interop.gguf` for what maps to what.
"""

from gptkit.interop.hf import (
    SUPPORTED_ARCHITECTURES,
    export_family,
    export_hf,
    hf_to_model_config,
    import_hf,
    model_config_to_hf,
)

__all__ = ["SUPPORTED_ARCHITECTURES", "export_family", "export_hf", "hf_to_model_config", "import_hf",
           "model_config_to_hf"]
