"""Techniques that rewrite a built model from outside and can be merged or undone: peft.py (the config and
the transformation: LoRA, adapters, AdaLoRA, freeze), modules.py, adalora.py, files.py; they know nothing of
training jobs."""
