"""The diffusion process as a component (kind ``process``: ``vp``, ``flow``, ``edm``).

- ``vp`` reproduces the numbers of the code before the process refactor (pinned below: sigma grids,
  losses for fixed seeds, the sigma-space wrapper, sampled latents), computed with that code;
- ``flow`` with Euler matches diffusers' ``FlowMatchEulerDiscreteScheduler`` step by step, and ``edm``
  with Euler / Heun / DPM-Solver++(2M) matches ``EDMEulerScheduler`` / ``HeunDiscreteScheduler`` /
  ``EDMDPMSolverMultistepScheduler`` (diffusers is a test-only reference);
- every process passes one contract (its training draw and its sampling preconditioning agree);
- every sampler runs with every process; a combination that cannot work fails when composed;
- exports record the process, and an export written with ``diffusion.parameterization`` still loads;
- ``mmldm train process=<p>`` runs end to end for each process.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from mmldm.configuration import ConfigProblem, compose
from mmldm.diffusion import (
    PROCESSES, SAMPLERS, DiscreteSchedule, EDMProcess, FlowProcess, Process, SamplerConfig, VPConfig, VPProcess,
    build_process, check_sampler_fits, diffusion_loss, get_sampler, sample_dpmpp_2m, sample_euler, sample_heun,
)
from mmldm.diffusion.sampling import sample_latents

import diffusers  # noqa: E402 - test-only reference (dev extra); a missing one must fail, not skip

from mmldm.testing import ProcessContract

from .conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------- vp: the numbers of the code before
SCHEDULES = {
    "sd": dict(schedule="scaled_linear", num_timesteps=1000, beta_start=0.00085, beta_end=0.012, zero_terminal_snr=False),
    "cos_zsnr": dict(schedule="cosine", num_timesteps=1000, beta_start=0.00085, beta_end=0.012, zero_terminal_snr=True),
    "lin": dict(schedule="linear", num_timesteps=500, beta_start=1e-4, beta_end=0.02, zero_terminal_snr=False),
}


def schedule(name: str) -> DiscreteSchedule:
    s = SCHEDULES[name]
    return DiscreteSchedule.from_name(s["schedule"], s["num_timesteps"], s["beta_start"], s["beta_end"],
                                      s["zero_terminal_snr"])


def NET(z, t):  # noqa: N802 - a fixed nonlinear "network" of (input, time)
    return torch.tanh(z) * 0.7 + (t / 1000.0).reshape(-1, *[1] * (z.ndim - 1)) - 0.1 * z.flip(-1)


class Tiny(torch.nn.Module):
    """A seeded 1D conv "denoiser" for the sampling path."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(2, 2, 3, padding=1)
        torch.manual_seed(0)
        torch.nn.init.normal_(self.conv.weight, std=0.3)
        torch.nn.init.normal_(self.conv.bias, std=0.1)

    def forward(self, z, t, conditioning=None):
        return self.conv(z) * (1 + t[:, None, None] / 1000)


OLD_SIGMAS = {  # VPProcess(SCHEDULES[s]).sigmas(7, spacing), was DiscreteSchedule.sigmas_for(7, spacing)
    ("sd", "leading"): [6.5384218271396888, 3.4713561206050678, 2.0401785259536855, 1.2679045615391027,
        0.78726709590677313, 0.43806173266482945, 0.029167158151720367, 0],
    ("sd", "trailing"): [14.614641229333637, 6.6685710054990164, 3.5138778571537688, 2.0544758133493493,
        1.2762351350015695, 0.79006095658441444, 0.43806173266482945, 0],
    ("sd", "linspace"): [14.614641229333637, 5.9488991909739726, 2.9183071154268285, 1.6155802601603273,
        0.9323579668348474, 0.49355172032017242, 0.029167158151720367, 0],
    ("sd", "karras"): [14.614641229333643, 7.0944106917549732, 3.1686030729596188, 1.2741002089780959,
        0.44691820937343935, 0.13030758649055035, 0.029167158151720381, 0],
    ("cos_zsnr", "leading"): [4.2891732828575924, 2.0682351726848958, 1.257878733761387, 0.80501971706034947,
        0.49102741410284462, 0.23941231785764994, 0.0064254127711507025, 0],
    ("cos_zsnr", "trailing"): [4095.9998779296861, 4.4134196130306282, 2.0931522239273135, 1.2659597298624983,
        0.81017024429730289, 0.49296377470992414, 0.23941231785764994, 0],
    ("cos_zsnr", "linspace"): [4095.9998779296861, 3.767531235576147, 1.7508394068563946, 1.0140106339421568,
        0.58972546951461247, 0.28022297281448194, 0.0064254127711507025, 0],
    ("cos_zsnr", "karras"): [4095.9998779296843, 1402.4185444604364, 395.37280830856076, 84.182459731339875,
        11.523746584510929, 0.70912680529384731, 0.0064254127711507103, 0],
    ("lin", "leading"): [6.2515165903031376, 3.4695522190753834, 2.0494890570174817, 1.241805177265582,
        0.72247933258847297, 0.33975036818273352, 0.010000500037502575, 0],
    ("lin", "trailing"): [12.506522927950613, 6.3633582575717238, 3.4966984662238429, 2.0641519898167644,
        1.241805177265582, 0.72247933258847297, 0.33490367282594791, 0],
    ("lin", "linspace"): [12.506522927950613, 5.7186008719258279, 2.9244351895637934, 1.6064762252762441,
        0.87954558350907486, 0.39962373769725451, 0.010000500037502575, 0],
    ("lin", "karras"): [12.506522927950616, 5.6861854802611509, 2.338895894048362, 0.84532220434411265,
        0.2568385301132502, 0.061069348067001025, 0.010000500037502582, 0],
}
OLD_LOSSES = {  # diffusion_loss per sample, was diffusion_loss(NET, Z0, schedule, prediction, weighting, gen, gamma)
    ("sd", "eps", "uniform", "float32"): [0.491223246, 1.44329786, 1.01526368, 0.737356961, 0.367370993],
    ("sd", "eps", "uniform", "float64"): [0.80665001899729594, 1.0897869761072696, 1.3299812910040665,
        0.50990530097386055, 0.52975670344078063],
    ("sd", "eps", "min_snr", "float32"): [0.491223246, 1.44329786, 1.01526368, 0.737356961, 0.367370993],
    ("sd", "eps", "min_snr", "float64"): [0.80665001899729594, 1.0897869761072696, 1.3299812910040665,
        0.50990530097386055, 0.52975670344078063],
    ("sd", "v", "uniform", "float32"): [1.7638551, 2.31955552, 1.56137383, 1.56713855, 0.770722687],
    ("sd", "v", "uniform", "float64"): [1.1412367169775086, 1.6713638975148708, 1.7896569777494271,
        1.3091455629057736, 1.0180833230801616],
    ("sd", "v", "min_snr", "float32"): [0.258740127, 0.0356476344, 0.110098235, 0.962244153, 0.477107078],
    ("sd", "v", "min_snr", "float64"): [0.16740815881152418, 0.025686028361993182, 0.12619532428049915,
        0.80383297328044379, 0.63023286714032478],
    ("sd", "x0", "uniform", "float32"): [1.27543771, 1.67803586, 1.2160114, 0.792820692, 0.633871019],
    ("sd", "x0", "uniform", "float64"): [1.3902749240738348, 2.3307728869269244, 1.2263667714206188,
        0.80951326581377803, 0.66846519328510257],
    ("sd", "x0", "min_snr", "float32"): [0.219256952, 0.0261910763, 0.0922503695, 1.26119041, 1.03000093],
    ("sd", "x0", "min_snr", "float64"): [0.23899829526396191, 0.036379111368731759, 0.093035960332189638,
        1.2877443957047081, 1.086214361477847],
    ("cos_zsnr", "eps", "uniform", "float64"): [0.87926800588341314, 1.0912928564297408, 1.3684618647439584,
        0.63451501980708014, 0.6420852345602267],
    ("cos_zsnr", "eps", "min_snr", "float64"): [0.87926800588341314, 1.0912928564297408, 1.3684618647439584,
        0.46623355410757428, 0.46078531229699621],
    ("cos_zsnr", "v", "uniform", "float64"): [1.2634111693978334, 1.6574462016611367, 1.8614039783566252,
        1.1782087530789784, 0.94600679552169831],
    ("cos_zsnr", "v", "min_snr", "float64"): [0.40094930300248871, 0.04564040350784071, 0.32803212998091685,
        0.69540730677454843, 0.54784065350172806],
    ("cos_zsnr", "x0", "uniform", "float64"): [1.202505923364878, 2.2916192703942095, 1.1208160367676405,
        0.68866042913880321, 0.59689716792218606],
    ("cos_zsnr", "x0", "min_snr", "float64"): [0.55903215042379806, 0.064890217113605292, 0.23977463277881528,
        2.0659812874164096, 1.7906915037665581],
    ("lin", "eps", "uniform", "float64"): [0.77078394639669912, 0.42647642468982377, 0.73820990336655046,
        0.28151406817261432, 0.3662361498849111],
    ("lin", "eps", "min_snr", "float64"): [0.74118252603733181, 0.42647642468982377, 0.73820990336655046,
        0.28151406817261432, 0.3662361498849111],
    ("lin", "v", "uniform", "float64"): [1.2312858652314291, 1.1689065380080972, 1.3480791850846607,
        1.4898644426458205, 1.2507717298304408],
    ("lin", "v", "min_snr", "float64"): [0.89660779154026726, 0.051223535461026135, 0.49420618070657441,
        0.27994679043922044, 0.24329411684282301],
    ("lin", "x0", "uniform", "float64"): [0.38649075479769962, 1.3732491705018546, 0.58173586115321052,
        1.2207841892898326, 0.90573786744770768],
    ("lin", "x0", "min_snr", "float64"): [1.1594722643930988, 0.062936161167096216, 0.33669814673433252,
        0.28246105426047452, 0.21872515251065958],
}
OLD_WRAPPER = {  # VPProcess(...).denoiser(NET)(X, SIGMA).flatten()[::4], was DenoiserWrapper(NET, schedule, prediction)
    ("sd", "eps"): [-0.6570372884590403, -4.7262756073454311, 0.43999119961907057, 0.51758010656786757,
        -1.8492128731716861, -5.0176023246253356, -3.7497633395420147, -3.1348009421196861, -12.371764737612466,
        -14.448801069741616],
    ("sd", "v"): [-0.65540351535410379, -4.7144499622096623, 0.43888785434142652, -0.075904431467093469,
        -0.7985910723646592, -0.47487774982241937, -0.70201698799840739, -0.74064158319301132, -1.1219552426202297,
        -0.84803143558309324],
    ("sd", "x0"): [0.075818262454957153, -0.63271863951337204, 0.098071486827344068, 0.86733837435361394,
        0.35930306601656137, 0.24457381438640419, 0.65515919388831489, 0.75694733910027134, 1.1433103855147009,
        0.83624067781209599],
    ("cos_zsnr", "eps"): [-0.65814265182603349, -4.7273809707124244, 0.43888583625207739, 0.32957271625656737,
        -2.0372202634829861, -5.4077822859854336, -4.1399433009021127, -3.5249809034797841, -11.83037009790549,
        -13.907406430034641],
    ("cos_zsnr", "v"): [-0.65650749960219812, -4.7155539464577565, 0.43778387009333225, -0.19053456045916128,
        -0.91322120135672713, -0.56951029062754299, -0.79664952880353102, -0.83527412399813494, -1.0833824716618405,
        -0.80945866462470395],
    ("cos_zsnr", "x0"): [0.097925529794819832, -0.61061137217350925, 0.12017875416720675, 1.0119594438238448,
        0.50392413548679227, 0.34211880472642869, 0.7527041842283394, 0.85449232944029585, 1.1046393398213454,
        0.79756963211874055],
    ("lin", "eps"): [-0.65735915431253344, -4.7265974731989244, 0.43966933376557749, 0.79603029740329612,
        -1.5707626823362577, -3.5326469707276482, -2.2648079856443282, -1.6498455882219991, -5.4713828871681889,
        -7.5484192192973421],
    ("lin", "v"): [-0.65572497962808496, -4.7147714264836438, 0.43856639006744541, 0.093869646245917759,
        -0.62881699465164809, -0.11472317491379481, -0.34186241308978288, -0.38048700828438675,
        -0.63032339198596188, -0.35639958494882545],
    ("lin", "x0"): [0.082255579524818656, -0.62628132244351054, 0.10450880389720557, 0.65314591986482273,
        0.14511061152777027, -0.12666502408801755, 0.28392035541389316, 0.3857085006258496, 0.65042596762582405,
        0.34335625992321916],
}
OLD_SAMPLES = {  # sample_latents(Tiny(), ...).flatten()[::3][:6] (float32), trailing spacing, 6 steps, seed 1
    ("eps", "ddpm"): [-123.221893, -70.9296188, 122.76516, 31.8189087, -179.563782, 68.6714935],
    ("eps", "ddim"): [-135.367493, 3.67888975, 46.7554665, 22.689806, 15.2617836, -21.318573],
    ("eps", "euler"): [-135.367493, 3.67888761, 46.7554665, 22.689806, 15.261795, -21.3185654],
    ("eps", "heun"): [-49.5573158, 12.2797127, 120.739151, 11.3707218, -157.272049, 29.0868759],
    ("eps", "dpmpp_2m"): [-126.14444, 0.035939455, 76.8623199, 17.7801437, -60.2935867, 17.4068279],
    ("v", "ddpm"): [0.949417472, -0.0821496546, -0.159885824, 1.20356655, 0.209288627, 0.711746454],
    ("v", "ddim"): [-4.51088238, -0.575845063, -0.0529671609, 0.840138555, 2.3570075, -1.04914427],
    ("v", "euler"): [-4.51088285, -0.575845122, -0.0529673398, 0.840138435, 2.35700774, -1.04914403],
    ("v", "heun"): [-4.9088769, -0.819557965, 0.0415937304, 0.896940589, 1.97005916, -0.842616498],
    ("v", "dpmpp_2m"): [-4.71233273, -0.713175654, -0.0107287467, 0.860693872, 2.12968493, -0.92022419],
}


@pytest.mark.parametrize("key", list(OLD_SIGMAS), ids="-".join)
def test_vp_sigma_grids_are_unchanged(key):
    name, spacing = key
    ours = VPProcess(schedule(name)).sigmas(7, spacing)
    torch.testing.assert_close(ours, torch.tensor(OLD_SIGMAS[key], dtype=torch.float64), rtol=1e-13, atol=0)


@pytest.mark.parametrize("key", list(OLD_LOSSES), ids="-".join)
def test_vp_losses_are_unchanged(key):
    name, prediction, weighting, dtype = key
    dtype = getattr(torch, dtype)
    process = VPProcess(schedule(name), prediction, weighting, 3.0 if weighting == "min_snr" else 5.0)
    z0 = torch.randn(5, 2, 3, 4, generator=torch.Generator().manual_seed(11), dtype=dtype)
    loss = diffusion_loss(NET, z0, process, torch.Generator().manual_seed(7))
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(loss, torch.tensor(OLD_LOSSES[key], dtype=loss.dtype), rtol=rtol, atol=0)


@pytest.mark.parametrize("key", list(OLD_WRAPPER), ids="-".join)
def test_vp_sigma_space_wrapper_is_unchanged(key):
    name, prediction = key
    x = torch.randn(4, 2, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    sigma = torch.tensor([0.05, 1.3, 4.0, 14.0], dtype=torch.float64)
    out = VPProcess(schedule(name), prediction).denoiser(NET)(x, sigma)
    torch.testing.assert_close(out.flatten()[::4], torch.tensor(OLD_WRAPPER[key], dtype=torch.float64),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("key", list(OLD_SAMPLES), ids="-".join)
def test_vp_samples_are_unchanged(key):
    """The whole sampling path (noise, sigma grid, wrapper, sampler). Two samplers now compute the same
    numbers in another order: Euler's step as ``D + d sigma_next`` (was ``x + d (sigma_next - sigma)``,
    which cancels at large sigma) and DDPM's noise as ``sigma_next sqrt(1 - (sigma_next / sigma)^2)`` (was
    with ``sigma^2``, which overflows float16), so their float32 results moved by rounding only (1e-5 on
    values of 200)."""
    prediction, sampler = key
    z = sample_latents(Tiny(), [], VPProcess(schedule("sd"), prediction), (3, 2, 6), None, sampler, 6, 1.0,
                       "trailing", torch.Generator().manual_seed(1))
    torch.testing.assert_close(z.flatten()[::3][:6], torch.tensor(OLD_SAMPLES[key]), rtol=2e-5, atol=2e-5)


def test_vp_defaults_sample_as_before():
    """``auto`` spacing is vp's ``trailing``, the old default."""
    process = VPProcess(schedule("sd"))
    torch.testing.assert_close(process.sigmas(7), process.sigmas(7, "trailing"), rtol=0, atol=0)
    assert process.spacings[0] == "trailing"


# ---------------------------------------------------------------- parity with diffusers
def velocity(z, c_noise):
    """A smooth nonlinear velocity "network" of the flow input and ``c_noise = 1000 t``."""
    t = (c_noise / 1000).reshape(-1, *[1] * (z.ndim - 1))
    return torch.tanh(1.5 * z) * (1 - t) + 0.4 * z.roll(1, -1) - 0.3 * t


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_euler_matches_diffusers_flow_match_euler_step_by_step(shift):
    """On the same time grid (ours, handed to diffusers unshifted: it applies the same shift) and the same
    start ``z = t_0 noise``, every Euler step lands where diffusers' lands."""
    steps = 8
    process = FlowProcess(shift=shift)
    sigmas = process.sigmas(steps).float()
    noise = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    seen = []
    x = sample_euler(process.denoiser(velocity), noise * sigmas[0], sigmas, disable=True, callback=seen.append)

    reference = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    reference.set_timesteps(sigmas=torch.linspace(process.t_max, 0, steps + 1, dtype=torch.float64)[:-1].tolist())
    torch.testing.assert_close(reference.sigmas, (sigmas / (1 + sigmas)).float(), rtol=0, atol=1e-7)  # t grid
    z = noise * sigmas[0] / (1 + sigmas[0])  # the same start: x / (1 + sigma) = z_t
    assert len(reference.timesteps) == steps
    for t, info in zip(reference.timesteps, seen):
        z = reference.step(velocity(z, t.expand(z.shape[0])), t, z).prev_sample
        torch.testing.assert_close(info["x"] / (1 + info["sigma_next"]), z, rtol=0, atol=2e-6)
    torch.testing.assert_close(x, z, rtol=0, atol=2e-6)


def _edm_network(x_in, sigma):
    s = sigma.reshape(-1, *[1] * (x_in.ndim - 1))
    return torch.tanh(1.5 * x_in) * torch.exp(-0.1 * s) + 0.4 * x_in.roll(1, -1) - 0.05 * s.log()


def ours_edm(x_in, c_noise):  # mmldm feeds c_noise = 250 ln(sigma)
    return _edm_network(x_in, torch.exp(c_noise / 250))


def theirs_edm(x_in, c_noise):  # diffusers feeds c_noise = ln(sigma) / 4
    return _edm_network(x_in, torch.exp(4 * c_noise))


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
@pytest.mark.parametrize("name,sampler,make", [
    ("euler", sample_euler, lambda sd: diffusers.EDMEulerScheduler(sigma_data=sd)),
    ("dpmpp_2m", sample_dpmpp_2m, lambda sd: diffusers.EDMDPMSolverMultistepScheduler(
        sigma_data=sd, algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero")),
])
def test_edm_matches_diffusers_edm_schedulers_step_by_step(name, sampler, make, sigma_data):
    """EDM's preconditioning, Karras grid (0.002 to 80, rho 7) and the steps, against diffusers' EDM schedulers
    on the same network ``F(c_in x, sigma)``."""
    steps = 10
    process = EDMProcess(sigma_data=sigma_data)
    sigmas = process.sigmas(steps).float()
    noise = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    seen = []
    sampler(process.denoiser(ours_edm), noise * sigmas[0], sigmas, disable=True, callback=seen.append)
    reference = make(sigma_data)
    reference.set_timesteps(steps)
    torch.testing.assert_close(reference.sigmas, sigmas, rtol=1e-6, atol=0)
    x = noise * sigmas[0]
    for t, info in zip(reference.timesteps, seen, strict=True):
        x = reference.step(theirs_edm(reference.scale_model_input(x, t), t.expand(x.shape[0])), t, x).prev_sample
        torch.testing.assert_close(info["x"], x, rtol=1e-6, atol=2e-5)  # |x| up to 300 at sigma 80


def test_edm_heun_matches_diffusers_heun_on_the_karras_grid():
    """Algorithm 1 of Karras et al. (Heun, no churn) on EDM's grid: diffusers' ``HeunDiscreteScheduler`` given
    the same sigmas (every inner one twice, its layout) and the same denoiser steps as ``heun`` does."""
    steps = 10
    process = EDMProcess()
    sigmas = process.sigmas(steps).float()
    noise = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    denoiser = process.denoiser(ours_edm)
    seen = []
    ours = sample_heun(denoiser, noise * sigmas[0], sigmas, disable=True, callback=seen.append)
    reference = diffusers.HeunDiscreteScheduler(prediction_type="sample", use_karras_sigmas=True)
    reference.set_timesteps(steps)
    reference.sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
    x, firsts = noise * sigmas[0], []
    for t in reference.timesteps:
        model_in = reference.scale_model_input(x, t)  # x / sqrt(sigma^2 + 1)
        sigma = reference.sigmas[reference.step_index]
        x = reference.step(denoiser(model_in * (sigma**2 + 1).sqrt(), sigma.expand(x.shape[0])), t, x).prev_sample
        if reference.state_in_first_order:
            firsts.append(x)  # the end of a full Heun step
    for info, x_ref in zip(seen, [*firsts, x]):
        torch.testing.assert_close(info["x"], x_ref, rtol=1e-6, atol=2e-6)
    torch.testing.assert_close(ours, x, rtol=1e-6, atol=2e-6)


# ---------------------------------------------------------------- the contract of a process
BUILTINS = {
    "vp-eps": lambda: VPProcess(schedule("sd"), "eps"),
    "vp-v-zsnr": lambda: VPProcess(schedule("cos_zsnr"), "v", "min_snr"),
    "vp-x0": lambda: VPProcess(schedule("lin"), "x0", "min_snr"),
    "flow": lambda: FlowProcess(),
    "flow-uniform-shift": lambda: FlowProcess("uniform", shift=3.0),
    "edm": lambda: EDMProcess(),
}


class _BuiltinContract(ProcessContract):
    name = ""

    def build(self):
        return BUILTINS[self.name]()


class TestVPEps(_BuiltinContract):
    name = "vp-eps"


class TestVPVZeroTerminalSNR(_BuiltinContract):
    name = "vp-v-zsnr"


class TestVPX0(_BuiltinContract):
    name = "vp-x0"


class TestFlow(_BuiltinContract):
    name = "flow"


class TestFlowUniformShift(_BuiltinContract):
    name = "flow-uniform-shift"


class TestEDM(_BuiltinContract):
    name = "edm"


def test_the_processes_mean_what_their_papers_say():
    z0, eps = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    # flow: sigma = t / (1 - t), c_in x = (1 - t) z0 + t eps, D from the velocity eps - z0 is z0
    flow, t = FlowProcess(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    sigma = t / (1 - t)
    c_skip, c_out, c_in, c_noise = flow.precondition(sigma)
    x = z0 + sigma[:, None] * eps
    torch.testing.assert_close(c_in[:, None] * x, (1 - t[:, None]) * z0 + t[:, None] * eps)
    torch.testing.assert_close(c_skip[:, None] * x + c_out[:, None] * (eps - z0), z0)
    torch.testing.assert_close(c_noise, 1000 * t)
    # SD3's shift, on the sampling grid too: t -> 3t / (1 + 2t)
    shifted = FlowProcess(shift=3.0).sigmas(4)
    ramp = torch.linspace(0.999, 0, 5, dtype=torch.float64)
    torch.testing.assert_close(shifted / (1 + shifted), 3 * ramp / (1 + 2 * ramp))
    # edm: Karras et al. Table 1, c_noise = 1000 ln(sigma) / 4, grid eq. 5
    edm, sigma = EDMProcess(sigma_data=0.5), torch.tensor([0.01, 1.0, 50.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm.precondition(sigma)
    torch.testing.assert_close(c_skip, 0.25 / (sigma**2 + 0.25))
    torch.testing.assert_close(c_out, sigma * 0.5 / (sigma**2 + 0.25).sqrt())
    torch.testing.assert_close(c_in, 1 / (sigma**2 + 0.25).sqrt())
    torch.testing.assert_close(c_noise, 250 * sigma.log())
    grid = EDMProcess().sigmas(5)
    assert grid[0] == pytest.approx(80) and grid[-2] == pytest.approx(0.002)
    torch.testing.assert_close(grid[:-1] ** (1 / 7), torch.linspace(80 ** (1 / 7), 0.002 ** (1 / 7), 5, dtype=torch.float64))


def test_training_time_distributions():
    z0 = torch.zeros(20000, 1, dtype=torch.float64)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    t = FlowProcess("logit_normal").noise(z0, gen()).c_noise / 1000
    logit = (t / (1 - t)).log()
    assert logit.mean().item() == pytest.approx(0, abs=0.03) and logit.std().item() == pytest.approx(1, abs=0.03)
    t = FlowProcess("uniform").noise(z0, gen()).c_noise / 1000
    assert t.min() >= 0 and t.max() < 1 and t.mean().item() == pytest.approx(0.5, abs=0.01)
    log_sigma = EDMProcess().noise(z0, gen()).sigma.log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.03) and log_sigma.std().item() == pytest.approx(1.2, abs=0.03)
    # edm's F target has unit variance at every sigma when the data's std is sigma_data (its design)
    z0 = torch.randn(20000, 1, generator=gen(), dtype=torch.float64)
    noised = EDMProcess().noise(z0, torch.Generator().manual_seed(1))
    assert noised.target.std().item() == pytest.approx(1, abs=0.02) and (noised.weight == 1).all()


# ---------------------------------------------------------------- samplers x processes
S = 0.5  # data ~ N(0, S^2): the exact denoiser is x S^2 / (S^2 + sigma^2) in every process's VE space


def gaussian_denoiser(x, sigma, **_):
    return x * (S**2 / (S**2 + sigma**2)).reshape(-1, *[1] * (x.ndim - 1))


@pytest.mark.parametrize("sampler", [name for name, *_ in SAMPLERS])
@pytest.mark.parametrize("process_name", ["vp", "flow", "edm"])
def test_every_sampler_reaches_the_data_with_every_process(sampler, process_name):
    """The samplers only see the VE sigma grid, so DDPM's posterior (the Brownian bridge of x = z0 + sigma eps)
    is as right on flow's and EDM's grids as on vp's: no built-in combination is refused."""
    process = {"vp": lambda: VPProcess(schedule("sd")), "flow": FlowProcess, "edm": EDMProcess}[process_name]()
    steps = 100 if sampler in ("ddpm", "ddim", "euler") else 30
    sigmas = process.sigmas(steps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 1, 2, generator=g, dtype=torch.float64) * sigmas[0]
    out = get_sampler(sampler)(gaussian_denoiser, x, sigmas, disable=True, generator=g)
    assert out.mean().item() == pytest.approx(0, abs=0.03)
    assert out.std().item() == pytest.approx(S, rel=0.08), out.std().item()


# ---------------------------------------------------------------- configuration
@pytest.mark.parametrize("process_name", [name for name, *_ in PROCESSES])
@pytest.mark.parametrize("sampler", [name for name, *_ in SAMPLERS])
def test_every_builtin_process_composes_with_every_sampler(process_name, sampler):
    cfg = compose([f"process={process_name}", f"sampler={sampler}"])
    assert cfg.diffusion.process.name == process_name and cfg.sampler.spacing == "auto"
    assert type(build_process(cfg.diffusion.process)).__name__.lower().startswith(process_name)


@pytest.mark.parametrize("overrides, message", [
    (["process=flow", "sampler.spacing=trailing"],
     "sampler.spacing=trailing does not fit process=flow, which places noise levels with linspace"),
    (["process=edm", "sampler=heun", "sampler.spacing=leading"], "sampler.spacing=leading does not fit process=edm"),
    (["process=flow", "diffusion.process.time_sampling=normal"],
     "invalid value 'normal' for config key 'diffusion.process.time_sampling': expected one of: logit_normal, uniform"),
    (["process=flow", "diffusion.process.t_max=1"],
     "invalid value '1' for config key 'diffusion.process.t_max': expected in (0, 1)"),
    (["process=edm", "diffusion.process.sigma_data=0"],
     "invalid value '0' for config key 'diffusion.process.sigma_data': expected > 0"),
    (["process=edm", "diffusion.process.sigma_min=100"], "diffusion.process.sigma_min (100) must be less than"),
    (["diffusion.process.weighting=snr"],
     "invalid value 'snr' for config key 'diffusion.process.weighting': expected one of: uniform, min_snr"),
    (["process=rf"], "unknown process 'rf' (in 'process=rf'); valid choices for process: edm, flow, v_minsnr, vp"),
])
def test_a_process_that_cannot_work_fails_when_composed(overrides, message):
    with pytest.raises(ConfigProblem) as e:
        compose(overrides)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_spacings_each_process_accepts_compose():
    for overrides in (["process=vp", "sampler.spacing=karras"], ["process=vp", "sampler.spacing=leading"],
                      ["process=edm", "sampler.spacing=karras"], ["process=flow", "sampler.spacing=linspace"]):
        compose(overrides)


def test_a_sampler_may_declare_the_processes_it_works_with():
    from dataclasses import dataclass

    @dataclass
    class DiscreteOnlyConfig(SamplerConfig):
        processes = ("vp",)

    check_sampler_fits(VPConfig(name="vp"), DiscreteOnlyConfig(name="lcm"))
    from mmldm.diffusion import FlowConfig

    with pytest.raises(ValueError, match="sampler=lcm works with process=vp only, not process=flow"):
        check_sampler_fits(FlowConfig(name="flow"), DiscreteOnlyConfig(name="lcm"))


def test_v_minsnr_option_is_the_vp_process_with_those_keys():
    process = compose(["process=v_minsnr"]).diffusion.process
    assert (process.name, process.prediction, process.weighting, process.schedule, process.zero_terminal_snr) == (
        "vp", "v", "min_snr", "cosine", True)


# ---------------------------------------------------------------- end to end and exports
E2E = {
    "vp-eps": ["process=vp"],
    "vp-v": ["process=vp", "diffusion.process.prediction=v"],
    "vp-x0": ["process=vp", "diffusion.process.prediction=x0"],
    "flow": ["process=flow"],
    "edm": ["process=edm"],
}


# v and x0 differ from eps only in the target, which the unit tests above pin; their end-to-end runs are slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("vp-v", "vp-x0") else n
                                  for n in E2E])
def test_train_runs_end_to_end_for_every_process(tmp_path, name):
    run = tmp_path / f"proc_{name}"
    out = run_cli("train", "modality=image", "modality.num_samples=24", "autoencoder.channels=8",
                  "denoiser.model_channels=16", *E2E[name], "trainer.max_steps=3", "data.batch_size=4",
                  "sample.num_samples=2", "sampler.steps=3", "trainer.enable_progress_bar=false",
                  f"hydra.run.dir={run}", env_extra={"MMLDM_CACHE": str(tmp_path / "cache")}, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    from mmldm.pipeline import LatentDiffusion

    recorded = yaml.safe_load((run / "export" / "config.yaml").read_text())["diffusion"]["process"]
    assert recorded["name"] == name.split("-")[0]
    pipe = LatentDiffusion.from_pretrained(run / "export")
    assert repr(pipe.process) == repr(build_process(recorded))
    z = pipe.sample(2, steps=3, seed=0, progress=False, return_latents=True)
    assert z.shape == (2, *pipe.latent_shape) and torch.isfinite(z).all()
    if name == "vp-v":
        _check_legacy_export_loads(run / "export", tmp_path / "legacy", z)


def _check_legacy_export_loads(export, legacy, z):
    """An export written before the process group (``diffusion.parameterization`` and the schedule keys in
    ``diffusion``) loads as the vp process with those values and samples the same latents."""
    from mmldm.pipeline import LatentDiffusion

    shutil.copytree(export, legacy)
    config = yaml.safe_load((legacy / "config.yaml").read_text())
    process = config["diffusion"].pop("process")
    config["diffusion"].update(parameterization=process.pop("prediction"), **{k: v for k, v in process.items() if k != "name"})
    (legacy / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    pipe = LatentDiffusion.from_pretrained(legacy)
    assert isinstance(pipe.process, VPProcess) and pipe.process.prediction_name == "v"
    torch.testing.assert_close(pipe.sample(2, steps=3, seed=0, progress=False, return_latents=True), z)
    pipe.save_pretrained(legacy / "again")  # re-exported with diffusion.process
    again = yaml.safe_load((legacy / "again" / "config.yaml").read_text())["diffusion"]
    assert again["process"]["name"] == "vp" and again["process"]["prediction"] == "v"
    assert "parameterization" not in again and "schedule" not in again


def test_sampling_default_steps_are_one_number():
    from mmldm.diffusion.config import DEFAULT_STEPS
    from mmldm.diffusion.sampling import sampler_settings

    assert SamplerConfig(name="euler").steps == DEFAULT_STEPS == compose([]).sampler.steps
    assert sampler_settings(None)["steps"] == DEFAULT_STEPS
    assert sampler_settings({"name": "ddim", "steps": 7, "eta": 1.0})["steps"] == 7
    assert sampler_settings({"name": "ddim", "steps": 7, "eta": 1.0}, "euler") == {
        "sampler": "euler", "steps": 7, "spacing": "auto"}  # another sampler: ddim's eta does not apply


def test_an_old_diffusion_config_is_the_vp_process():
    from mmldm.diffusion import upgrade_diffusion_config

    old = {"num_timesteps": 1000, "schedule": "cosine", "beta_start": 0.00085, "beta_end": 0.012,
           "zero_terminal_snr": True, "parameterization": "v", "weighting": "min_snr", "min_snr_gamma": 5.0,
           "cond_dropout": 0.1, "lr": 2e-4}
    new = upgrade_diffusion_config(old)
    assert new == {"cond_dropout": 0.1, "lr": 2e-4, "process": {
        "name": "vp", "prediction": "v", "weighting": "min_snr", "min_snr_gamma": 5.0, "num_timesteps": 1000,
        "schedule": "cosine", "beta_start": 0.00085, "beta_end": 0.012, "zero_terminal_snr": True}}
    assert upgrade_diffusion_config(new) == new
    assert repr(build_process(new["process"])) == repr(VPProcess(DiscreteSchedule.from_name("cosine", zero_terminal_snr=True), "v", "min_snr"))
    with pytest.raises(ValueError, match="neither 'process' nor"):
        upgrade_diffusion_config({"lr": 1e-4})


@pytest.mark.parametrize("process_name", ["vp-v-zsnr", "flow", "edm"])
def test_half_precision_sampling_stays_finite(process_name):
    """float16 overflows past 65504: x = noise * sigmas[0] (up to 4096 for zero terminal SNR, 999 for flow)
    fits, and no sampler squares a sigma."""
    process = BUILTINS[process_name]()
    net = Tiny().half()
    for sampler, options in [(name, {}) for name, *_ in SAMPLERS] + [("ddim", {"eta": 1.0})]:
        z = sample_latents(net, [], process, (2, 2, 6), None, sampler, 8, 1.0, "auto",
                           torch.Generator().manual_seed(0), **options)
        assert z.dtype == torch.float16 and torch.isfinite(z).all(), sampler


def test_keys_of_earlier_versions_say_where_they_moved():
    from mmldm.configuration import ConfigProblem, validate

    with pytest.raises(ConfigProblem, match=r"'diffusion.parameterization' \(value 'v'\); it moved to "
                                            r"'diffusion.process.prediction'"):
        validate(["diffusion.parameterization=v"])
    with pytest.raises(ConfigProblem, match=r"'diffusion.schedule' .* it moved to 'diffusion.process.schedule'"):
        validate(["diffusion.schedule=cosine"])
    with pytest.raises(ConfigProblem, match=r"'v_minsnr' is an option of process: process=v_minsnr"):
        validate(["diffusion=v_minsnr"])


def test_an_explicit_zero_step_count_is_refused_not_replaced_by_the_default():
    """``pipe.sample(steps=0)`` took the default steps silently (``steps or default``); it reaches the check now."""
    from mmldm.diffusion.sampling import sampler_settings

    assert sampler_settings({"name": "ddim", "steps": 25}, steps=0)["steps"] == 0
    assert sampler_settings({"name": "ddim", "steps": 25})["steps"] == 25
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        FlowProcess().sigmas(0)
