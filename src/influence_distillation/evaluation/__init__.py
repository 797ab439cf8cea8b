"""Does a selection help? LoRA fine-tuning, the demo, the side-by-side benchmark and reports."""
