"""Built-in conditioners (tau_theta): class labels, captions, segmentation maps.

Several at once: the ``conditioner`` node may be a list of conditioner configs
(presets ``conditioner=class_text``, ``class_segmentation``, ``text_segmentation``
ship in ``conf/conditioner/``); their outputs are merged by kind.
"""

from mmldm import hookimpl

from .config import (
    ClassConditionerConfig,
    InpaintConditionerConfig,
    PretrainedTextConditionerConfig,
    SegmentationConditionerConfig,
    TextConditionerConfig,
)

__version__ = "0.1.0"


@hookimpl
def mmldm_register_components(registry):  # noqa: ANN001
    registry.add(
        "conditioner", "class", "mmldm_conditioners.class_embedding:build_class_conditioner",
        config=ClassConditionerConfig,
        description="class label -> learned embedding (token and/or vector), null class for guidance",
    )
    registry.add(
        "conditioner", "text", "mmldm_conditioners.text:build_text_conditioner",
        config=TextConditionerConfig,
        description="caption -> small transformer trained with the denoiser (BPE learned from the captions, or bytes)",
    )
    registry.add(
        "conditioner", "text_pretrained", "mmldm_conditioners.text_pretrained:build_pretrained_text_conditioner",
        config=PretrainedTextConditionerConfig,
        description="caption -> frozen pretrained encoder from a local folder (default all-MiniLM-L6-v2)",
    )
    registry.add(
        "conditioner", "segmentation", "mmldm_conditioners.segmentation:build_segmentation_conditioner",
        config=SegmentationConditionerConfig,
        description="label map -> one-hot maps on the latent grid (concat) and/or spatial tokens, dims 1-3",
    )
    registry.add(
        "conditioner", "inpaint", "mmldm_conditioners.inpaint:build_inpaint_conditioner",
        config=InpaintConditionerConfig,
        description="masked latent + mask (concat), trained on random boxes, half-spaces and slabs: trained inpainting",
    )


@hookimpl
def mmldm_config_dirs():  # noqa: ANN201
    """Presets selecting several conditioners at once (``conf/conditioner/*.yaml``)."""
    return ["pkg://mmldm_conditioners.conf"]
