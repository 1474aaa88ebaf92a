"""Tasks: what a kind of training plugs into the one loop (a batch source, a loss, an evaluation).

A task has `batch(step, micro_step)`, `loss(model, batch)` and `evaluate(model, full=False)`, and may
name its `selection` metric (the loop keeps the best checkpoint by it). One module per task (lm, classify,
sft, multimodal, embed), and `adversarial`, a wrapper that trains any of the text tasks on perturbed embeddings.
"""

from gptkit.training.tasks.adversarial import AdversarialConfig, AdversarialTask, with_adversarial
from gptkit.training.tasks.batches import batch_generator, sample_rows
from gptkit.training.tasks.classify import ClassificationTask
from gptkit.training.tasks.embed import ContrastiveTask
from gptkit.training.tasks.lm import CausalLMTask, causal_lm_loss
from gptkit.training.tasks.multimodal import MultimodalTask
from gptkit.training.tasks.sft import SFTTask

__all__ = ["AdversarialConfig", "AdversarialTask", "CausalLMTask", "ClassificationTask", "ContrastiveTask", "MultimodalTask", "SFTTask",
           "batch_generator", "causal_lm_loss", "sample_rows", "with_adversarial"]
