"""Techniques that rewrite a built model from outside (LoRA, adapters, AdaLoRA, freezing) and can be merged or undone; they know nothing of training jobs."""
