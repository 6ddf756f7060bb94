"""Instruction fine-tuning of a rewriter: presets (config), training pairs (data), LoRA SFT (sft), merge.

Heavy libraries (torch, transformers, trl, peft) are imported inside functions, so importing this
package costs nothing until a run starts.
"""
