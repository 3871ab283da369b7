"""mmldm built-in plugin: the audio modality (log-mel ``[B, n_mels, T]`` or ``[B, 1, n_mels, T]``)
and its vocoders: Griffin-Lim (no training) and a Vocos-style neural vocoder (``mmldm train-vocoder``).

Kept torch-free at import: components are registered as lazy ``"module:attr"`` factories.
"""

from mmldm import hookimpl

from .config import AudioConfig, GriffinLimConfig, VocosConfig


@hookimpl
def mmldm_register_components(registry):  # type: ignore[no-untyped-def]
    registry.add(
        "modality",
        "audio",
        "mmldm_audio.modality:AudioModality",
        config=AudioConfig,
        description="audio as normalized log-mel [B,n_mels,T] (1d) or [B,1,n_mels,T] (2d): synthesized sounds (default) or a folder",
    )
    registry.add(
        "vocoder",
        "griffinlim",
        "mmldm_audio.vocoder:GriffinLimVocoder",
        config=GriffinLimConfig,
        description="log-mel -> waveform by inverse mel scale and Griffin-Lim (no training); factory(cfg, modality=...)",
    )
    registry.add(
        "vocoder",
        "vocos",
        "mmldm_audio.neural_vocoder:VocosVocoder",
        config=VocosConfig,
        description="log-mel -> STFT magnitude and phase by a ConvNeXt stack -> inverse STFT (Vocos); trained by "
        "`mmldm train-vocoder`, selected by modality.vocoder=vocos modality.vocoder_path=<folder>; "
        "factory(cfg, modality=...)",
    )


@hookimpl
def mmldm_config_dirs():  # type: ignore[no-untyped-def]
    """Presets applied by `modality=audio` (`preset/audio.yaml`)."""
    return ["pkg://mmldm_audio.conf"]
