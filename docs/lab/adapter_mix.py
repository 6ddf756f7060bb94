"""Weight-space interpolation of two LoRA adapters of one base (WiSE-FT for adapters).

    python docs/lab/adapter_mix.py OUT --adapter A --adapter B --weight 0.5

OUT's update is weight * A's + (1 - weight) * B's, exactly: PEFT's ``add_weighted_adapter`` with
``combination_type="cat"`` stacks the two ranks (r 8 + 8 -> 16). A lab tool: it tries whether a
point between a fine-tune that keeps meaning and one that removes bias reads better than either.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--adapter", action="append", required=True, help="two PEFT adapter folders")
    parser.add_argument("--weight", type=float, default=0.5, help="the first adapter's share")
    args = parser.parse_args()
    first, second = args.adapter

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mbias.engines.packaged import adapter_base, converted_model_dir

    base = AutoModelForCausalLM.from_pretrained(
        str(converted_model_dir(adapter_base(first))), dtype=torch.bfloat16
    )
    model = PeftModel.from_pretrained(base, first, adapter_name="first")
    model.load_adapter(second, adapter_name="second")
    model.add_weighted_adapter(
        ["first", "second"], [args.weight, 1 - args.weight], adapter_name="mix", combination_type="cat"
    )
    model.delete_adapter("first")
    model.delete_adapter("second")
    out = Path(args.out)
    model.save_pretrained(str(out), selected_adapters=["mix"])
    nested = out / "mix"  # PEFT saves a non-default adapter in a subfolder
    if nested.is_dir():
        for path in nested.iterdir():
            path.replace(out / path.name)
        nested.rmdir()
    shutil.copy(Path(first) / "train_config.json", out / "train_config.json")  # names the base
    print(f"wrote {out}: {args.weight} x {first} + {1 - args.weight} x {second}")


if __name__ == "__main__":
    main()
