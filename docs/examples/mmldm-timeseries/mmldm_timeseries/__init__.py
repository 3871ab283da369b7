"""mmldm plugin: 1D time series ``[B, C, T]`` (sums of sinusoids plus noise, classes by frequency band).

The module stays torch-free: mmldm imports it to list plugins and to validate
configs, and the modality itself is imported only when a run builds it.
"""

from mmldm import hookimpl

from .config import TimeSeriesConfig

__version__ = "0.1.0"


@hookimpl
def mmldm_register_components(registry):  # type: ignore[no-untyped-def]
    registry.add(
        "modality",
        "timeseries",
        "mmldm_timeseries.modality:TimeSeriesModality",
        config=TimeSeriesConfig,
        description="1D time series [B,C,T]: sums of sinusoids plus noise, class = frequency band",
    )


@hookimpl
def mmldm_config_dirs():  # type: ignore[no-untyped-def]
    """``preset/timeseries.yaml``, applied by ``modality=timeseries``."""
    return ["pkg://mmldm_timeseries.conf"]
