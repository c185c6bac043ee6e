"""VQ-GAN training loss (Esser et al. 2021, "Taming Transformers", Sec. 3.1).

Generator: rec (L1/L2) + perceptual_weight * LPIPS + d_weight * adversarial + codebook_weight * q_loss
(the quantizer's own loss), where d_weight is disc_weight times the adaptive weight of Eq. 7, and 0
before `disc_start` (and throughout at disc_weight=0: then the discriminator is never run).
Discriminator: hinge or non-saturating loss on PatchGAN logits of real images and detached reconstructions.

A training iteration is two explicit optimizer steps:

    x_rec, q = model(x)
    loss, logs = criterion.generator_loss(x, x_rec, q.loss, step, model.last_layer)
    opt_g.zero_grad(set_to_none=True); loss.backward(); opt_g.step()
    if criterion.gan_active(step):
        d_loss, d_logs = criterion.discriminator_loss(x, x_rec.detach(), step)
        opt_d.zero_grad(set_to_none=True); d_loss.backward(); opt_d.step()  # zero: the G step left grads in D
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vqgpt.config import TokenizerLossConfig
from vqgpt.errors import ArgumentError, UserError

REC_LOSSES = ("l1", "l2")
DISC_LOSSES = ("hinge", "non_saturating")
PERCEPTUAL_NETS = ("vgg", "alex")  # LPIPS trunks (vqgpt.eval.lpips.TRUNKS)
LPIPS_MIN_SIZE = 16  # LPIPS's VGG pools 4 times before its last layer


def check_loss_config(cfg: TokenizerLossConfig) -> None:
    """Refuse unknown loss names and negative weights, naming the key and the fix on one line (an ArgumentError:
    the command line prefixes `tokenizer.loss.`)."""
    if cfg.rec_loss not in REC_LOSSES:
        raise ArgumentError("", message=f"§rec_loss={cfg.rec_loss!r} is unknown; use one of {', '.join(REC_LOSSES)}")
    if cfg.disc_loss not in DISC_LOSSES:
        raise ArgumentError("", message=f"§disc_loss={cfg.disc_loss!r} is unknown; use one of "
                                        f"{', '.join(DISC_LOSSES)}")
    if cfg.perceptual_net not in PERCEPTUAL_NETS:
        raise ArgumentError("", message=f"§perceptual_net={cfg.perceptual_net!r} is unknown; use one of "
                                        f"{', '.join(PERCEPTUAL_NETS)}")
    for key in ("perceptual_weight", "codebook_weight", "disc_weight", "disc_start"):
        if getattr(cfg, key) < 0:
            raise ArgumentError("", message=f"§{key}={getattr(cfg, key)} must be >= 0")


# ---------------------------------------------------------------------------------------------------------
# GAN losses on PatchGAN logits (any shape; averaged over batch and patches)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x_rec))]) (Lim & Ye 2017, as in taming)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def non_saturating_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[-log sigmoid(D(x))] + E[-log(1 - sigmoid(D(x_rec)))]): BCE, real = 1, fake = 0."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-E[D(x_rec)] (taming's generator loss)."""
    return -logits_fake.mean()


def non_saturating_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """E[-log sigmoid(D(x_rec))]: the non-saturating generator loss of Goodfellow et al. 2014."""
    return F.softplus(-logits_fake).mean()


D_LOSS_FNS = {"hinge": hinge_d_loss, "non_saturating": non_saturating_d_loss}
G_LOSS_FNS = {"hinge": hinge_g_loss, "non_saturating": non_saturating_g_loss}


def adaptive_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4, eps: float = 1e-4) -> torch.Tensor:
    """||grad nll|| / (||grad g_loss|| + eps) at the decoder's last layer, clamped and detached (Eq. 7).

    Balances the GAN term against reconstruction whatever their scales; eps and the clamp are taming's. Under
    DDP both gradients are averaged over the ranks first, so every rank uses the weight of the global batch (what
    one process would compute), not one of its own.
    """
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # Flattened first: two channels_last gradients stack into a tensor contiguous in no memory format, which
        # NCCL refuses (gloo takes it, so the CPU tests would not tell); the norms do not care about layout.
        both = torch.stack([nll_grad.flatten(), g_grad.flatten()])
        dist.all_reduce(both)
        nll_grad, g_grad = both / dist.get_world_size()
    return (nll_grad.norm() / (g_grad.norm() + eps)).clamp(0.0, max_weight).detach()


# ---------------------------------------------------------------------------------------------------------
# The loss


class VQGANLoss(nn.Module):
    """Holds the (frozen) LPIPS net and the discriminator; its two methods feed the two optimizers.

    `lpips` may be None when `perceptual_weight` is 0. The discriminator's parameters are the ones to
    give the discriminator optimizer (`criterion.discriminator.parameters()`) and to checkpoint.
    """

    def __init__(self, cfg: TokenizerLossConfig, lpips: nn.Module | None, discriminator: nn.Module):
        super().__init__()
        check_loss_config(cfg)
        if lpips is None and cfg.perceptual_weight > 0:
            raise ArgumentError("", message=f"§perceptual_weight={cfg.perceptual_weight} needs an LPIPS network; "
                                "build one with vqgpt.eval.lpips.build_lpips or set perceptual_weight=0")
        self.cfg = cfg
        self.perceptual = lpips.eval().requires_grad_(False) if lpips is not None else None
        self.discriminator = discriminator
        self.d_loss_fn = D_LOSS_FNS[cfg.disc_loss]
        self.g_loss_fn = G_LOSS_FNS[cfg.disc_loss]

    def train(self, mode: bool = True) -> VQGANLoss:
        """Train mode for the discriminator only: LPIPS stays in eval (its dropout off), as a fixed metric."""
        super().train(mode)
        if self.perceptual is not None:
            self.perceptual.eval()
        return self

    def gan_active(self, step: int) -> bool:
        """Whether the adversarial terms are on at this step: from `disc_start` on, and never at `disc_weight=0`
        (the generator would not feel the discriminator, so it is not run or trained at all)."""
        return self.cfg.disc_weight > 0 and step >= self.cfg.disc_start

    def reconstruction_loss(self, x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
        """Mean absolute (l1) or squared (l2) pixel error."""
        return F.l1_loss(x_rec, x) if self.cfg.rec_loss == "l1" else F.mse_loss(x_rec, x)

    def perceptual_loss(self, x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS distance (Zhang et al. 2018); grayscale is repeated to the 3 channels VGG wants."""
        if min(x.shape[-2:]) < LPIPS_MIN_SIZE:
            raise UserError(
                f"LPIPS needs images of at least {LPIPS_MIN_SIZE} px, got {tuple(x.shape[-2:])}; "
                "set tokenizer.loss.perceptual_weight=0 or use a larger dataset.image_size"
            )
        if x.shape[1] == 1:
            x, x_rec = x.expand(-1, 3, -1, -1), x_rec.expand(-1, 3, -1, -1)
        return self.perceptual(x.contiguous(), x_rec.contiguous()).mean()

    def generator_loss(self, x: torch.Tensor, x_rec: torch.Tensor, q_loss: torch.Tensor, step: int,
                       last_layer: torch.Tensor, split: str = "train") -> tuple[torch.Tensor, dict]:
        """The autoencoder's loss and its logs (detached scalars keyed `{split}/...`).

        Outside autograd (e.g. validation under torch.no_grad) the adaptive weight cannot be computed
        and is 0, as in taming, so `{split}/loss` then leaves out the GAN term.
        """
        zero = x_rec.new_zeros((), dtype=torch.float32)
        rec_loss = self.reconstruction_loss(x, x_rec)
        p_loss = self.perceptual_loss(x, x_rec) if self.cfg.perceptual_weight > 0 else zero
        nll_loss = rec_loss + self.cfg.perceptual_weight * p_loss

        g_loss, d_weight = zero, zero
        if self.gan_active(step):  # before disc_start the discriminator is not even run
            g_loss = self.g_loss_fn(self.discriminator(x_rec.contiguous()).float())
            if torch.is_grad_enabled() and g_loss.requires_grad:
                d_weight = self.cfg.disc_weight * adaptive_weight(nll_loss, g_loss, last_layer)
        loss = nll_loss + d_weight * g_loss + self.cfg.codebook_weight * q_loss

        logs = {"loss": loss, "rec_loss": rec_loss, "perceptual_loss": p_loss, "nll_loss": nll_loss,
                "q_loss": q_loss, "g_loss": g_loss, "d_weight": d_weight}
        return loss, {f"{split}/{k}": v.detach() for k, v in logs.items()}

    def discriminator_loss(self, x: torch.Tensor, x_rec: torch.Tensor, step: int, split: str = "train",
                           discriminator: nn.Module | None = None) -> tuple[torch.Tensor, dict]:
        """The discriminator's loss on real images and (detached) reconstructions, and its logs. `discriminator`:
        the module to call, when it is wrapped (DDP, compile); default this loss's own.

        Before `disc_start` the loss is multiplied by 0 (taming's disc_factor); better to skip the
        discriminator step then, with `gan_active(step)`.
        """
        discriminator = discriminator if discriminator is not None else self.discriminator
        logits_real = discriminator(x.contiguous().detach()).float()  # fp32 losses under autocast
        logits_fake = discriminator(x_rec.contiguous().detach()).float()
        d_loss = self.d_loss_fn(logits_real, logits_fake) * float(self.gan_active(step))
        logs = {"d_loss": d_loss, "logits_real": logits_real.mean(), "logits_fake": logits_fake.mean()}
        return d_loss, {f"{split}/{k}": v.detach() for k, v in logs.items()}
