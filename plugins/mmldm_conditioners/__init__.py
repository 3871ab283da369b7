"""Built-in conditioners (tau_theta): class labels."""

from mmldm import hookimpl

from .config import ClassConditionerConfig

__version__ = "0.1.0"


@hookimpl
def mmldm_register_components(registry):  # noqa: ANN001
    registry.add(
        "conditioner",
        "class",
        "mmldm_conditioners.class_embedding:build_class_conditioner",
        config=ClassConditionerConfig,
        description="class label -> learned embedding (token and/or vector), null class for guidance",
    )
