"""Fine-tuning jobs built on the layers below: a base checkpoint + a method (`gptkit.adapt`) + a task, trained by the
one loop."""
