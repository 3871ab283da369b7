"""The built-in components pass the contracts of :mod:`mmldm.testing` (the same classes plugin authors subclass)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from mmldm.diffusion import samplers
from mmldm.plugins import registry
from mmldm.testing import ConditionerContract, DenoiserContract, ModalityContract, SamplerContract


class TestUNet(DenoiserContract):
    def build(self, **kwargs):
        cfg = {"name": "unet", "model_channels": 8, "channel_mult": [1, 2], "attention_levels": [1],
               "num_res_blocks": 1, "num_heads": 2}
        return registry().build("denoiser", cfg, **kwargs)


class TestDiT(DenoiserContract):
    def build(self, **kwargs):
        cfg = {"name": "dit", "hidden_size": 24, "depth": 2, "num_heads": 2, "patch_size": [2]}
        return registry().build("denoiser", cfg, **kwargs)


class TestDiTLearnedPositions(DenoiserContract):
    dims_to_test = (3,)

    def build(self, **kwargs):
        cfg = {"name": "dit", "hidden_size": 24, "depth": 1, "num_heads": 2, "patch_size": [1, 2, 4],
               "pos_embed": "learned", "max_positions": 8}
        return registry().build("denoiser", cfg, **kwargs)


class TestClassConditioner(ConditionerContract):
    def build(self, dims):
        return registry().build("conditioner", {"name": "class", "num_classes": 5, "embed_dim": 16})

    def condition(self, dims, batch, seed):
        return torch.randint(0, 5, (batch,), generator=torch.Generator().manual_seed(seed))


class TestSegmentationConditioner(ConditionerContract):
    def build(self, dims):
        modality = SimpleNamespace(dims=dims, name="maps")
        return registry().build("conditioner", {"name": "segmentation", "num_classes": 3}, modality=modality)

    def condition(self, dims, batch, seed):
        return torch.randint(0, 3, (batch, 1, *([8] * dims)), generator=torch.Generator().manual_seed(seed))


class TestInpaintConditioner(ConditionerContract):
    def build(self, dims):
        return registry().build("conditioner", {"name": "inpaint"})

    def condition(self, dims, batch, seed):
        from mmldm_conditioners.inpaint import random_masks

        from mmldm.editing import inpaint_condition

        g = torch.Generator().manual_seed(seed)
        z = torch.randn(batch, self.latent_channels, *([self.latent_size] * dims), generator=g)
        return inpaint_condition(z, random_masks((batch, *([self.latent_size] * dims)), ["box", "half", "slab"], g))


class TestTextConditioner(ConditionerContract):
    CAPTIONS = ["a red circle", "a blue square on the left", "two green stars"]

    def build(self, dims):
        conditioner = registry().build("conditioner", {"name": "text", "embed_dim": 16})
        conditioner.fit(self.CAPTIONS * 5)  # the tokenizer learns the captions, as at the start of phase 2
        return conditioner

    def condition(self, dims, batch, seed):
        words = ["red circle", "blue square", "green star", "a ring"]
        return [words[(seed + i) % len(words)] for i in range(batch)]


class TestImageModality(ModalityContract):
    def build(self):
        return registry().build("modality", {"name": "image", "num_samples": 12})


class TestAudioModality(ModalityContract):
    def build(self):
        return registry().build("modality", {"name": "audio", "num_samples": 12})


class TestVoxelModality(ModalityContract):
    def build(self):
        return registry().build("modality", {"name": "voxel", "num_shapes": 12, "resolution": 16})


class TestEuler(SamplerContract):
    def build(self):
        return samplers.sample_euler


class TestHeun(SamplerContract):
    def build(self):
        return samplers.sample_heun


class TestDDIM(SamplerContract):
    def build(self):
        return samplers.sample_ddim


class TestDDPM(SamplerContract):
    def build(self):
        return samplers.sample_ddpm


class TestDPMSolver(SamplerContract):
    def build(self):
        return samplers.sample_dpmpp_2m
