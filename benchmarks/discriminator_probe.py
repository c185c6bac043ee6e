"""Is a VQ-GAN's PatchGAN still looking at its input? Its mean logit on real images, on their reconstructions, on
Gaussian noise and on all-black and all-white images, from a tokenizer checkpoint's train state.

    python benchmarks/discriminator_probe.py outputs/select_fashionmnist/t_vgg_disc_3500/checkpoints/last

A discriminator that learned gives real images higher logits than reconstructions and noise. One that gives all
five the same logit is blind: its adversarial gradient is zero, whatever the adaptive weight makes of it
(docs/quality.md, the PatchGAN). The images: the first --num of the split the tokenizer was evaluated on.
"""

from __future__ import annotations

import argparse

import torch

from vqgpt.checkpoint import load_checkpoint
from vqgpt.config import DatasetConfig, dataclass_from_dict
from vqgpt.data import build_dataset, eval_split
from vqgpt.tokenizers.vqgan.discriminator import build_discriminator
from vqgpt.train.state import load_train_state


@torch.no_grad()
def probe(path: str, num: int) -> dict[str, dict[str, float]]:
    """Mean logit per kind of input, and the weight norms of the discriminator's layers."""
    ckpt = load_checkpoint(path, expected_stage="tokenizer")
    state = load_train_state(path)
    if state is None or "discriminator" not in state.get("modules", {}):
        raise SystemExit(f"error: {path} holds no discriminator (a train state from a VQ-GAN run is needed)")
    discriminator = build_discriminator(ckpt.model.config)
    discriminator.load_state_dict(state["modules"]["discriminator"])
    discriminator.eval()
    data_cfg = dataclass_from_dict(DatasetConfig, ckpt.meta["data_config"])
    data = build_dataset(data_cfg, eval_split(data_cfg))
    real = torch.stack([data[i][0] for i in range(min(num, len(data)))])
    inputs = {
        "real": real,
        "reconstruction": ckpt.model.decode_tokens(ckpt.model.tokenize(real)),
        "noise": torch.randn_like(real).clamp(-1, 1),
        "black": -torch.ones_like(real),
        "white": torch.ones_like(real),
    }
    logits = {name: discriminator(x).mean().item() for name, x in inputs.items()}
    norms = {name: p.norm().item() for name, p in discriminator.state_dict().items()}  # its weights and biases
    return {"logits": logits, "norms": norms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a VQ-GAN tokenizer's checkpoints/last (with its train_state.pt)")
    parser.add_argument("--num", type=int, default=64, help="real images to probe with")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = probe(args.checkpoint, args.num)
    for name, value in result["logits"].items():
        print(f"{name:>15}: mean logit {value:+.5f}")
    spread = max(result["logits"].values()) - min(result["logits"].values())
    print(f"spread {spread:.5f}" + ("  (blind: the same logit whatever the input)" if spread < 1e-3 else ""))
    print("weight norms: " + ", ".join(f"{k} {v:.3f}" for k, v in result["norms"].items()))


if __name__ == "__main__":
    main()
