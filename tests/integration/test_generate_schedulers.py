"""Schedulers swap from config, change the output, and are recorded; incompatible ones are refused."""

from __future__ import annotations

import pytest

try:
    from tiny_models import *  # noqa: F403
except ImportError:  # pragma: no cover
    from tests.integration.tiny_models import *  # noqa: F403

from diffspec.errors import GenerationError

pytestmark = pytest.mark.usefixtures("single_thread")

SD_SWAPS = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "dpmpp_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


@pytest.fixture(scope="module")
def sd_backend(tiny_model):
    from diffspec.generate.backend import Backend

    backend = Backend(make_key(tiny_model("sd", "txt2img"), "sd", "txt2img", size=32, steps=4))
    yield backend
    backend.close()


def test_each_scheduler_changes_the_output_and_records_its_config(sd_backend, tiny_model):
    folder = tiny_model("sd", "txt2img")
    default_key = make_key(folder, "sd", size=32, steps=4)
    default = sd_backend.generate(make_units(default_key, [3]))[0].image
    assert sd_backend.scheduler_config(default_key)["_class_name"] == "PNDMScheduler"
    outputs = {"default": default.tobytes()}
    for name, (class_name, expected) in SD_SWAPS.items():
        key = make_key(folder, "sd", size=32, steps=4, scheduler=name)
        image = sd_backend.generate(make_units(key, [3]))[0].image
        again = sd_backend.generate(make_units(key, [3]))[0].image
        assert image.tobytes() == again.tobytes(), f"{name} is not reproducible"
        config = sd_backend.scheduler_config(key)
        assert config["_class_name"] == class_name
        for option, value in expected.items():
            assert config[option] == value, (name, option)
        # the checkpoint's betas survive the swap (from_config)
        assert config["beta_schedule"] == "scaled_linear" and config["beta_start"] == 0.00085
        outputs[name] = image.tobytes()
    # every scheduler gives its own picture
    assert len(set(outputs.values())) == len(outputs)


def test_scheduler_kwargs_reach_the_config_and_unknown_ones_are_refused(sd_backend, tiny_model):
    folder = tiny_model("sd", "txt2img")
    key = make_key(folder, "sd", size=32, steps=4, scheduler="ddim", scheduler_kwargs={"timestep_spacing": "trailing"})
    sd_backend.generate(make_units(key, [1]))
    assert sd_backend.scheduler_config(key)["timestep_spacing"] == "trailing"

    bad = make_key(folder, "sd", size=32, steps=4, scheduler="ddim", scheduler_kwargs={"timestep_spacin": "trailing"})
    with pytest.raises(GenerationError, match="timestep_spacin.*valid options"):
        sd_backend.generate(make_units(bad, [1]))


def test_flow_scheduler_on_a_noise_prediction_model_is_refused(sd_backend, tiny_model):
    key = make_key(tiny_model("sd", "txt2img"), "sd", size=32, steps=4, scheduler="flow_euler")
    with pytest.raises(GenerationError, match="flow_euler.*not compatible.*compatible schedulers: default, ddpm, ddim"):
        sd_backend.generate(make_units(key, [1]))


@pytest.mark.parametrize(
    ("family", "flow_kwargs"),
    [("sd3", {"shift": 2.0}), ("flux", {"base_shift": 0.1, "max_shift": 0.2})],  # FLUX shifts dynamically
)
def test_flow_matching_models_take_flow_euler_only(family, flow_kwargs, tiny_model):
    from diffspec.generate.backend import Backend

    folder = tiny_model(family, "txt2img")
    with Backend(make_key(folder, family, size=32)) as backend:
        default_key = make_key(folder, family, size=32)
        default = backend.generate(make_units(default_key, [4]))[0].image
        flow_key = make_key(folder, family, size=32, scheduler="flow_euler", scheduler_kwargs=flow_kwargs)
        flow = backend.generate(make_units(flow_key, [4]))[0].image
        config = backend.scheduler_config(flow_key)
        assert config["_class_name"] == "FlowMatchEulerDiscreteScheduler"
        assert {k: config[k] for k in flow_kwargs} == flow_kwargs
        assert flow.tobytes() != default.tobytes()
        with pytest.raises(GenerationError, match=r"'ddim'.*compatible schedulers: default, flow_euler"):
            backend.generate(make_units(make_key(folder, family, size=32, scheduler="ddim"), [4]))


def test_make_scheduler_returns_a_json_record():
    import json

    from diffusers import PNDMScheduler

    from diffspec.generate.schedulers import make_scheduler

    base = {**PNDMScheduler(beta_schedule="scaled_linear").config, "_class_name": "PNDMScheduler"}
    scheduler, record = make_scheduler("dpmpp_2m_karras", base, {"solver_order": 3})
    assert type(scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert record["solver_order"] == 3 and record["use_karras_sigmas"] is True
    assert "_diffusers_version" not in record
    json.dumps(record)
