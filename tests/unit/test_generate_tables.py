"""The planner-facing parts of diffspec.generate: torch-free tables, family guesses, prompt syntax."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from diffspec.errors import GenerationError
from diffspec.generate import prompts
from diffspec.spec.model import SCHEDULER_NAMES
from diffspec.tables import families, schedulers


def test_planner_modules_import_without_torch():
    code = (
        "import sys\n"
        "import diffspec.generate, diffspec.tables.families, diffspec.tables.schedulers\n"
        "import diffspec.generate.prompts, diffspec.generate.memory, diffspec.tables.sources\n"
        "from diffspec.tables.families import pipeline_class_name, guess_family, check_scheduler_name\n"
        "from diffspec.tables.schedulers import scheduler_table_entry\n"
        "pipeline_class_name('sdxl', 'inpaint'); scheduler_table_entry('dpmpp_2m_karras')\n"
        "check_scheduler_name('flux', 'flow_euler'); guess_family('black-forest-labs/FLUX.1-dev')\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'cv2', 'compel') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_scheduler_table_covers_the_spec_names():
    assert tuple(schedulers.SCHEDULER_TABLE) == SCHEDULER_NAMES
    assert schedulers.scheduler_table_entry("default") == (None, {})
    assert schedulers.scheduler_table_entry("dpmpp_2m_karras") == (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    )
    for name in SCHEDULER_NAMES:
        class_name, kwargs = schedulers.scheduler_table_entry(name)
        json.dumps([class_name, kwargs])  # goes into the fingerprint
    with pytest.raises(GenerationError, match="unknown scheduler 'eulr'"):
        schedulers.scheduler_table_entry("eulr")


def test_table_entries_are_copies():
    _, kwargs = schedulers.scheduler_table_entry("dpmpp_2m_karras")
    kwargs["use_karras_sigmas"] = False
    assert schedulers.scheduler_table_entry("dpmpp_2m_karras")[1]["use_karras_sigmas"] is True


@pytest.mark.parametrize(
    ("source", "family"),
    [
        ("builtin:digits", "builtin"),
        ("stable-diffusion-v1-5/stable-diffusion-v1-5", "sd"),
        ("stabilityai/stable-diffusion-2-1", "sd"),
        ("stabilityai/stable-diffusion-xl-base-1.0", "sdxl"),
        ("stabilityai/sdxl-turbo", "sdxl"),
        ("RunDiffusion/Juggernaut-XL-v9", "sdxl"),
        ("stabilityai/stable-diffusion-3-medium-diffusers", "sd3"),
        ("stabilityai/stable-diffusion-3.5-large", "sd3"),
        ("black-forest-labs/FLUX.1-schnell", "flux"),
        ("kandinsky-community/kandinsky-2-2-decoder", "kandinsky"),
        ("runwayml/stable-diffusion-inpainting", "sd"),
        ("xlabs-ai/pixel-model", "sd"),
    ],
)
def test_guess_family_from_hub_ids(source, family):
    assert families.guess_family(source) == family


def test_guess_family_from_a_local_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLInpaintPipeline"}))
    assert families.guess_family(str(folder)) == "sdxl"
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert families.guess_family(str(folder)) == "flux"
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "WuerstchenPipeline"}))
    with pytest.raises(GenerationError, match="cannot tell the model family"):
        families.guess_family(str(folder))
    (folder / "model_index.json").unlink()
    with pytest.raises(GenerationError, match="no model_index.json"):
        families.guess_family(str(folder))


def test_pipeline_class_names_and_unsupported_pairs():
    assert families.pipeline_class_name("sd", "controlnet") == "StableDiffusionControlNetPipeline"
    assert families.pipeline_class_name("sdxl", "img2img") == "StableDiffusionXLImg2ImgPipeline"
    assert families.pipeline_class_name("sd3", "inpaint") == "StableDiffusion3InpaintPipeline"
    assert families.pipeline_class_name("flux", "controlnet") == "FluxControlNetPipeline"
    assert families.pipeline_class_name("kandinsky", "txt2img") == "KandinskyV22CombinedPipeline"
    with pytest.raises(GenerationError, match="ControlNet is not supported for Kandinsky 2.2"):
        families.pipeline_class_name("kandinsky", "controlnet")
    with pytest.raises(GenerationError, match="family 'builtin' supports: txt2img"):
        families.pipeline_class_name("builtin", "inpaint")
    with pytest.raises(GenerationError, match="unknown mode"):
        families.pipeline_class_name("sd", "outpaint")
    assert families.controlnet_class_name("sd3") == "SD3ControlNetModel"


def test_scheduler_compatibility_by_family():
    assert families.compatible_scheduler_names("flux") == ("default", "flow_euler")
    assert "flow_euler" not in families.compatible_scheduler_names("sd")
    families.check_scheduler_name("sdxl", "dpmpp_2m_karras")
    with pytest.raises(GenerationError, match="compatible schedulers: default, flow_euler"):
        families.check_scheduler_name("sd3", "ddim")
    with pytest.raises(GenerationError, match="cannot drive sd models"):
        families.check_scheduler_name("sd", "flow_euler")


def test_size_rules():
    families.check_size("sd", 512, 768)
    families.check_size("kandinsky", 768, 512)
    with pytest.raises(GenerationError, match="multiples of 64 \\(try 64 or 128 x 64\\)"):
        families.check_size("kandinsky", 100, 64)
    with pytest.raises(GenerationError, match="multiples of 16"):
        families.check_size("flux", 1000, 1024)


def test_a1111_prompt_parsing():
    assert prompts.parse_a1111("(masterpiece:1.3), a cat") == [("masterpiece", 1.3), (", a cat", 1.0)]
    assert prompts.parse_a1111("((red)) [car]") == [("red", 1.21), (" ", 1.0), ("car", 0.909091)]
    assert prompts.parse_a1111("a \\(literal\\) bracket") == [("a (literal) bracket", 1.0)]
    assert prompts.parse_a1111("time: 5pm") == [("time: 5pm", 1.0)]
    assert prompts.is_weighted("a (cat:1.2)") and not prompts.is_weighted("a (cat:1)")
    assert not prompts.has_weighting("a \\(cat\\)") and prompts.has_weighting("a (cat)")
    assert prompts.plain_text("a (red:1.4) [car]") == "a red car"
    for bad in ("(a", "a)", "[a)", "a:1.2)"):
        with pytest.raises(GenerationError, match="unbalanced"):
            prompts.parse_a1111(bad)


def test_memory_strategy_names_match_the_spec():
    from diffspec.generate.memory import STRATEGIES
    from diffspec.spec.model import Budget

    spec_names = set(Budget.model_fields["strategy"].annotation.__args__) - {"auto"}
    assert set(STRATEGIES) == spec_names


def test_guidance_rule_has_one_owner_used_by_compiler_estimator_and_backend():
    from pathlib import Path

    assert families.guidance_applies("sd", 7.5) and families.guidance_applies("kandinsky", 4.0)
    assert not families.guidance_applies("sd", 1.0)  # at 1 the guided and unguided passes coincide
    assert not families.guidance_applies("flux", 3.5)  # guidance-distilled: one pass
    assert not families.guidance_applies("sdxl", 7.5, distilled=True)
    root = Path(__file__).resolve().parents[2] / "diffspec"
    for user in ("plan/compile.py", "plan/estimate.py", "generate/backend.py"):
        text = (root / user).read_text(encoding="utf-8")
        assert "guidance_applies(" in text, user
        assert "guidance > 1" not in text and "guidance <= 1" not in text, f"{user} restates the rule"


def test_estimate_counts_guidance_passes_by_the_rule():
    from diffspec.plan.estimate import seconds_per_image
    from diffspec.plan.unit import ModelRef, PipelineKey

    def seconds(family: str, guidance: float) -> float:
        key = PipelineKey(ModelRef("m", f"x/{family}", family), "txt2img", "default", (), 512, 512, 10, guidance)
        return seconds_per_image(key, "cuda", 1, {})[0]

    assert seconds("sd", 1.0) == pytest.approx(0.55 * seconds("sd", 7.5))
    assert seconds("flux", 0.0) == seconds("flux", 3.5)  # FLUX's table figure is one pass already
