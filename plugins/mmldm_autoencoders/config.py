"""Config dataclasses of the autoencoder plugin (torch-free).

Loss convention shared by every term of phase 1 (as in the LDM KL
autoencoder): per-sample losses are summed over elements and averaged over
the batch, so ``kl_weight=1e-6`` means what it means in Rombach et al. 2022.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from mmldm.config import ComponentConfig
from mmldm.schema import check_fields, checked, non_negative, one_of, positive, unit_interval

BOUNDS = ("none", "tanh", "clamp")
DOWNSAMPLE = ("conv", "pool")
DOWNSAMPLE_PADDING = ("symmetric", "asymmetric")
RECONSTRUCTION_LOSSES = ("auto", "l1", "l2", "bce", "dice", "bce_dice")
DISC_LOSSES = ("hinge", "vanilla")


def check_choice(owner: str, key: str, value: str, choices: Sequence[str]) -> None:
    """Raise a ``ValueError`` naming ``owner.key``, the bad value and the choices."""
    if value not in choices:
        raise ValueError(f"{owner}.{key}={value!r} is not valid; choose one of: {', '.join(choices)}")


@dataclass
class AutoencoderLossConfig:
    """Phase-1 objective: reconstruction + perceptual + regularizer + adversarial.

    Reconstruction and perceptual terms are summed over elements per sample
    and averaged over the batch. The adversarial term uses an N-d PatchGAN
    (Isola et al. 2017) and LDM's adaptive weight
    ``||grad rec|| / (||grad gan|| + 1e-4)`` at the decoder's last layer.
    """

    # auto: what the modality suggests (bce for occupancy grids, l1 otherwise) | l1 | l2 | bce | dice | bce_dice
    reconstruction: str = one_of("auto", RECONSTRUCTION_LOSSES)
    reconstruction_weight: float = non_negative(1.0)
    perceptual_weights: Optional[str] = None  # TorchScript file d(x, x_rec) -> [B]; None: no perceptual term
    perceptual_weight: float = non_negative(1.0)
    disc_weight: float = non_negative(0.0)  # 0 turns the GAN off (LDM uses 0.5)
    disc_start: int = non_negative(50001)  # optimizer step at which the adversarial terms switch on
    disc_loss: str = one_of("hinge", DISC_LOSSES)  # hinge | vanilla
    disc_layers: int = positive(3)  # strided convs of the PatchGAN (inputs need >= 3 * 2**disc_layers per axis)
    disc_channels: int = positive(64)
    adaptive_weight: bool = True  # False: the generator's GAN term is weighted by disc_weight only

    def __post_init__(self) -> None:
        check_choice("loss", "reconstruction", self.reconstruction, RECONSTRUCTION_LOSSES)
        check_choice("loss", "disc_loss", self.disc_loss, DISC_LOSSES)
        if self.disc_weight < 0:
            raise ValueError(f"loss.disc_weight must be >= 0 (0 turns the GAN off), got {self.disc_weight}")
        if self.disc_layers < 1:
            raise ValueError(f"loss.disc_layers must be >= 1, got {self.disc_layers}")
        check_fields(self, "autoencoder.loss")


@dataclass
class ConvAutoencoderConfig(ComponentConfig):
    """N-d convolutional encoder/decoder of the LDM autoencoder (Rombach et al. 2022, app. G).

    ``f = 2 ** (len(channel_mult) - 1)``: each entry after the first adds one
    downsampling by 2 per spatial axis.
    """

    channels: int = positive(64)  # width of the first level; level i has channels * channel_mult[i]
    channel_mult: list[int] = checked(factory=lambda: [1, 2, 4], each=True, nonempty=True, ge=1)  # f = 4
    # per level in the encoder, the decoder uses one more (LDM: 2; 1 keeps CPU runs fast)
    num_res_blocks: int = non_negative(1)
    latent_channels: int = positive(4)
    attention: bool = True  # self-attention in the mid block (cost grows with (#latent positions)^2)
    dropout: float = unit_interval(0.0, open_high=True)
    downsample: str = one_of("conv", DOWNSAMPLE)  # conv (strided 3-conv) | pool (average pooling)
    # of the strided conv: symmetric (1 on each side) | asymmetric (0 before, 1 after: Stable Diffusion's VAE)
    downsample_padding: str = one_of("symmetric", DOWNSAMPLE_PADDING)
    norm_groups: int = positive(32)
    # GroupNorm groups before the mid attention; None: 32 (SD: norm_groups)
    attention_norm_groups: Optional[int] = positive(None)
    attention_bias: bool = False  # biases on the mid attention's q/k/v projections (SD's VAE has them)
    quant_conv: bool = False  # 1x1 conv on the encoder's output (SD's quant_conv)
    post_quant_conv: bool = False  # 1x1 conv on z before the decoder (SD's post_quant_conv)
    # the phase-1 objective that trains this autoencoder (see AutoencoderLoss)
    loss: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)

    def __post_init__(self) -> None:
        check_choice("autoencoder", "downsample", self.downsample, DOWNSAMPLE)
        check_choice("autoencoder", "downsample_padding", self.downsample_padding, DOWNSAMPLE_PADDING)
        if self.downsample == "pool" and self.downsample_padding != "symmetric":
            raise ValueError("autoencoder.downsample_padding='asymmetric' needs autoencoder.downsample='conv' "
                             "(pooling has no padding)")
        if not self.channel_mult or any(m <= 0 for m in self.channel_mult):
            raise ValueError(f"autoencoder.channel_mult must be a non-empty list of positive ints, got {self.channel_mult}")
        for key in ("channels", "latent_channels", "norm_groups", "attention_norm_groups"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ValueError(f"autoencoder.{key} must be positive, got {getattr(self, key)}")
        if self.num_res_blocks < 0:
            raise ValueError(f"autoencoder.num_res_blocks must be >= 0, got {self.num_res_blocks}")
        check_fields(self, "autoencoder")


@dataclass
class KLRegularizerConfig(ComponentConfig):
    """Diagonal-Gaussian posterior with a KL penalty to N(0, I) (the LDM "KL-reg")."""

    kl_weight: float = non_negative(1e-6)  # times KL summed over latent elements, averaged over the batch
    sample: bool = True  # decode a posterior sample in training (False: the mean, an AE with a KL penalty)

    def __post_init__(self) -> None:
        check_fields(self, "regularizer")


@dataclass
class VQRegularizerConfig(ComponentConfig):
    """Vector quantization (van den Oord et al. 2017) with the LDM/taming options."""

    codebook_size: int = positive(1024)
    codebook_dim: Optional[int] = positive(None)  # None: latent_channels; else look codes up in a projected space
    beta: float = non_negative(0.25)  # commitment weight
    weight: float = non_negative(1.0)  # weight of the whole VQ loss
    ema: bool = False  # update the codebook with EMA statistics instead of its gradient loss
    ema_decay: float = unit_interval(0.99, open_high=True)
    dead_code_threshold: float = non_negative(0.0)  # restart codes whose EMA hit count per batch falls below; 0: off
    usage_decay: float = unit_interval(0.99, open_high=True)  # decay of that hit count
    quantize_in_decoder: bool = False  # LDM variant: diffusion sees pre-quantization z, decode() quantizes

    def __post_init__(self) -> None:
        if self.codebook_size < 1:
            raise ValueError(f"regularizer.codebook_size must be >= 1, got {self.codebook_size}")
        for key in ("ema_decay", "usage_decay"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"regularizer.{key} must be in [0, 1), got {getattr(self, key)}")
        check_fields(self, "regularizer")


@dataclass
class AERegularizerConfig(ComponentConfig):
    """Deterministic latent with optional bound, variance pull and noise."""

    bound: str = one_of("none", BOUNDS)  # none | tanh (z in (-1, 1)) | clamp (z clipped to [-1, 1])
    variance_weight: float = non_negative(0.0)  # weight of sum_c (Var[z_c] - 1)^2 over the batch
    noise_std: float = non_negative(0.0)  # Gaussian noise added to z in training (makes the decoder robust to it)

    def __post_init__(self) -> None:
        check_choice("regularizer", "bound", self.bound, BOUNDS)
        if self.noise_std < 0:
            raise ValueError(f"regularizer.noise_std must be >= 0, got {self.noise_std}")
        check_fields(self, "regularizer")
