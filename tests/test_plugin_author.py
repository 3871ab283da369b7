"""A plugin author's first hour: a third-party stochastic sampler written from the documented contract only.

The plugin (an installed package with an ``mmldm`` entry point, as ``pip install`` leaves it) adds an
Euler-ancestral sampler with an ``eta`` option. Its test subclasses :class:`mmldm.testing.SamplerContract`
as docs/plugins.md tells authors to, and a tiny training run samples through it at its end, the way a run
calls samplers (one generator per sample, the config's extra fields as keyword arguments). A contract
check that fails in the author's own suite shows pytest's rewritten assertion (the ``pytest11`` entry
point :mod:`mmldm.pytest_plugin`).
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from mmldm.diffusion.config import DDIMConfig
from mmldm.testing import SamplerContract

from .conftest import make_plugin_package

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "euler_ancestral_demo"
PLUGIN = {
    "mmldm_ancestral/__init__.py": f'''
        """Hooks and configs only: torch is imported when a run resolves the sampler."""
        from dataclasses import dataclass

        from mmldm import hookimpl
        from mmldm.config import ComponentConfig
        from mmldm.diffusion.config import SamplerConfig


        @dataclass
        class EulerAncestralConfig(SamplerConfig):
            eta: float = 1.0  # share of each step's noise drawn afresh (0: the deterministic Euler step)


        @dataclass
        class BareConfig(ComponentConfig):  # wrong on purpose: not a SamplerConfig
            eta: float = 1.0


        @hookimpl
        def mmldm_register_components(registry):
            registry.add("sampler", "{NAME}", "mmldm_ancestral.sampler:sample_euler_ancestral",
                         config=EulerAncestralConfig, description="Euler ancestral steps")
            registry.add("sampler", "{NAME}_bare", "mmldm_ancestral.sampler:sample_euler_ancestral",
                         config=BareConfig, description="the same, with a config that is no SamplerConfig")
    ''',
    "mmldm_ancestral/sampler.py": '''
        import torch

        from mmldm.diffusion.samplers import ancestral_step, randn

        CALLS = []  # what each call received, for the test


        @torch.no_grad()
        def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None,
                                   eta=1.0):
            """Euler steps down to sigma_down, then fresh noise of std sigma_up (ancestral_step)."""
            CALLS.append({"generator": generator, "eta": eta, "batch": x.shape[0]})
            extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
            for i in range(len(sigmas) - 1):
                denoised = model(x, sigmas[i] * s_in, **extra_args)
                sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
                x = x + (x - denoised) / sigmas[i] * (sigma_down - sigmas[i])
                if float(sigma_up) > 0:
                    x = x + randn(x.shape, x, generator) * sigma_up  # row i from generator[i]
                if callback is not None:
                    callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_next": sigmas[i + 1], "denoised": denoised})
            return x
    ''',
}
TINY = ["modality=image", "modality.num_samples=24", "autoencoder.channels=8", "denoiser.model_channels=16",
        "trainer.max_steps=3", "diffusion.max_steps=3", "trainer.enable_progress_bar=false",
        "trainer.limit_val_batches=1", "data.batch_size=4", "data.stats_batches=2", "sample.num_samples=2",
        "sampler.steps=3"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The plugin package on ``sys.path`` with its entry point, and mmldm's plugins loaded afresh; afterwards
    gone again, from Hydra's ConfigStore too (later tests list the ``sampler`` group's options)."""
    from hydra.core.config_store import ConfigStore

    from mmldm.plugins import reset

    root = make_plugin_package(tmp_path_factory.mktemp("site"), "mmldm-ancestral", PLUGIN,
                               {"ancestral": "mmldm_ancestral"})
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    reset()
    yield root
    sys.path.remove(str(root))
    for mod in [m for m in sys.modules if m == "mmldm_ancestral" or m.startswith("mmldm_ancestral.")]:
        del sys.modules[mod]
    for name in (NAME, f"{NAME}_bare"):
        ConfigStore.instance().repo.get("sampler", {}).pop(f"{name}.yaml", None)
    reset()


@pytest.mark.usefixtures("installed")
class TestEulerAncestral(SamplerContract):
    """What the plugin's own test module holds: the contract, on the sampler as registered."""

    @property
    def config(self):  # the config class comes from the installed plugin
        from mmldm_ancestral import EulerAncestralConfig

        return EulerAncestralConfig(eta=1.0)

    def build(self):
        from mmldm.diffusion.samplers import get_sampler

        return get_sampler(NAME)


def test_the_contract_passes_options_and_one_generator_per_sample(installed):
    from mmldm_ancestral import sampler

    contract = TestEulerAncestral()
    assert contract.options() == {"eta": 1.0}
    sampler.CALLS.clear()
    contract.draw(1, n=3)
    (call,) = sampler.CALLS
    assert call["eta"] == 1.0 and isinstance(call["generator"], list) and len(call["generator"]) == 3
    assert all(isinstance(g, torch.Generator) for g in call["generator"])


class TestDDIMWithEtaFromItsConfig(SamplerContract):
    """A built-in's option reaches it through its config as in a run: DDIM with fresh noise (eta 1)."""

    config = DDIMConfig(name="ddim", eta=1.0)

    def build(self):
        from mmldm.diffusion.samplers import sample_ddim

        return sample_ddim


def test_a_sampler_that_takes_one_generator_only_fails_the_contract():
    """The mistake the contract exists for: ``torch.randn(..., generator=generator)`` works with one generator
    and fails with the list a run passes."""

    def sample_one_generator(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None):
        for i in range(len(sigmas) - 1):
            x = model(x, sigmas[i] * x.new_ones(len(x))) + torch.randn(x.shape, generator=generator) * sigmas[i + 1]
        return x

    class TestOneGenerator(SamplerContract):
        def build(self):
            return sample_one_generator

    contract = TestOneGenerator()
    contract.test_no_generator_or_one_generator_also_work(1)
    with pytest.raises(AssertionError, match=r"list of generators.*mmldm\.diffusion\.samplers\.randn"):
        contract.test_a_point_mass_is_reached_exactly(1)


def test_a_config_that_is_no_sampler_config_is_refused(installed):
    from mmldm.configuration import ConfigProblem, compose
    from mmldm_ancestral import BareConfig

    with pytest.raises(ConfigProblem, match=r"unknown config key 'sampler\.steps'"):
        compose([f"sampler={NAME}_bare", "sampler.steps=3"])

    class WithBareConfig(TestEulerAncestral):
        config = BareConfig(name=f"{NAME}_bare")

    with pytest.raises(AssertionError, match="does not derive from mmldm.diffusion.config.SamplerConfig"):
        WithBareConfig().test_config_is_a_sampler_config()


def test_a_training_run_samples_through_the_plugin_sampler(installed, tmp_path):
    """The end-of-run samples go through the sampler as a run calls it: per-sample generators (the run's
    ``sample.seed``) and ``sampler.eta`` as the keyword ``eta``."""
    from mmldm.configuration import compose
    from mmldm.training.run import train
    from mmldm_ancestral import sampler

    cfg = compose([*TINY, f"sampler={NAME}", "sampler.eta=0.5"])
    assert cfg.sampler.name == NAME and cfg.sampler.eta == 0.5
    sampler.CALLS.clear()
    run = tmp_path / "run"
    train(cfg, run)
    assert sampler.CALLS, "the run did not sample through the plugin's sampler"
    last = sampler.CALLS[-1]
    assert last["eta"] == 0.5 and last["batch"] == 2
    assert isinstance(last["generator"], list) and len(last["generator"]) == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["diffusion"]["steps"] == 3 and metrics["diffusion"]["num_samples"] == 2
    assert len(list((run / "samples").glob("sample_0*"))) >= 2
    exported = (run / "export" / "config.yaml").read_text()
    assert f"name: {NAME}" in exported and "eta: 0.5" in exported


FAILING_SUITE = '''
    from mmldm.diffusion.samplers import randn
    from mmldm.testing import SamplerContract


    def sample_shared_noise(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None):
        """Ancestral steps drawing every sample's noise from the first generator: the bug to report."""
        first = generator[0] if isinstance(generator, list) else generator
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i] * s_in)
            x = denoised + randn(x.shape, x, first) * sigmas[i + 1]
        return x


    class TestSharedNoise(SamplerContract):
        dims_to_test = (1,)

        def build(self):
            return sample_shared_noise
'''
REWRITTEN = re.compile(r"E\s+assert \d[\d.e+-]* <= 1e-05")


def _pytest(tmp_path, *args):
    (tmp_path / "test_shared_noise.py").write_text(textwrap.dedent(FAILING_SUITE))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "each_sample_is_reproducible",
         *args, "test_shared_noise.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )


def test_a_failing_contract_check_shows_the_compared_values(tmp_path):
    """pytest rewrites mmldm.testing's asserts in an author's suite through the ``pytest11`` entry point;
    the check's own message is there with or without it."""
    out = _pytest(tmp_path)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "draw the noise of row i from generator[i]" in out.stdout
    assert REWRITTEN.search(out.stdout), out.stdout[-3000:]
    assert "cannot be rewritten" not in out.stdout + out.stderr
    bare = _pytest(tmp_path, "-p", "no:mmldm")  # the entry point's name: without it, no introspection
    assert bare.returncode == 1 and "draw the noise of row i from generator[i]" in bare.stdout
    assert not REWRITTEN.search(bare.stdout), bare.stdout[-3000:]
