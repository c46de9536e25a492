"""Hostile specs: paths that escape, files that are not specs, numbers that are not numbers,
and model folders that would run code. Each is refused with a position (or a clear error)
quickly and in bounded memory; what users legitimately need (an output or a model elsewhere,
real images counted from elsewhere) stays allowed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from diffspec.errors import SpecError
from diffspec.spec.loader import load_spec

REPO = Path(__file__).resolve().parents[2]
HEAD = """\
version: 1
dataset: h
output: {output}
models:
  m: {{source: {source}{model_extra}}}
defaults: {{model: m, size: [32, 32], steps: 2}}
classes:
"""


def spec(
    tmp_path: Path, classes: str, output: str = "out", source: str = '"builtin:digits"', model_extra: str = ""
) -> Path:
    path = tmp_path / "spec" / "spec.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        HEAD.format(output=output, source=source, model_extra=model_extra)
        + textwrap.indent(textwrap.dedent(classes), "  "),
        encoding="utf-8",
    )
    return path


def refused(path: Path, *needles: str) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    text = str(info.value)
    assert f"{path}:" in text or "spec.yaml:" in text, text  # a position
    for needle in needles:
        assert needle in text, text
    return text


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "..", "/abs"])
def test_a_class_name_cannot_escape(tmp_path: Path, name: str) -> None:
    refused(spec(tmp_path, f'"{name}": {{target: 1, prompt: "x"}}\n'))


@pytest.mark.parametrize("file", ["/etc/hostname", "../../../../../../etc/hostname", "../outside.txt", "link.txt"])
def test_a_var_file_outside_the_spec_folder_is_refused(tmp_path: Path, file: str) -> None:
    (tmp_path / "outside.txt").write_text("secret\n")
    path = spec(tmp_path, f'a: {{target: 1, prompt: "x {{v}}", vars: {{v: {{file: "{file}"}}}}}}\n')
    (path.parent / "link.txt").symlink_to(tmp_path / "outside.txt")
    text = refused(path, "outside the spec's folder", "DIFFSPEC_ALLOW_PATHS")
    assert "spec.yaml:8:" in text


def test_the_person_running_may_allow_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "v.txt").write_text("red\nblue\n")
    path = spec(tmp_path, 'a: {target: 1, prompt: "x {v}", vars: {v: {file: ../shared/v.txt}}}\n')
    refused(path, "outside the spec's folder")
    monkeypatch.setenv("DIFFSPEC_ALLOW_PATHS", str(tmp_path / "shared"))
    assert load_spec(path).classes["a"].variables["v"] == ("red", "blue")


@pytest.mark.parametrize("glob", ["/usr/**/*.png", "../**/*.png", "imgs/../../*.png", "imgs/*/../../../x.png"])
def test_input_globs_cannot_leave_the_spec_folder(tmp_path: Path, glob: str) -> None:
    t0 = time.monotonic()
    refused(spec(tmp_path, f'a: {{target: 1, prompt: "x", input: {{images: "{glob}"}}}}\n'), "input glob")
    assert time.monotonic() - t0 < 1.0  # refused before walking anything


def test_input_images_from_the_output_root_are_refused(tmp_path: Path) -> None:
    from PIL import Image

    path = spec(tmp_path, 'a: {target: 1, prompt: "x", input: {images: "out/images/**/*.png"}}\n')
    (path.parent / "out" / "images" / "b").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(path.parent / "out" / "images" / "b" / "x.png")
    refused(path, "inside the output root")


def test_existing_may_be_elsewhere_but_not_the_output_root(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    ok = spec(tmp_path, f'a: {{fill_to: 3, existing: "{tmp_path / "real"}", prompt: "x"}}\n')
    assert load_spec(ok).classes["a"].target == 3
    (ok.parent / "out" / "images" / "a").mkdir(parents=True)
    refused(spec(tmp_path, 'a: {fill_to: 3, existing: out/images/a, prompt: "x"}\n'), "overlaps the output root")


def test_an_absolute_output_elsewhere_is_allowed(tmp_path: Path) -> None:
    assert (
        load_spec(spec(tmp_path, 'a: {target: 1, prompt: "x"}\n', output=str(tmp_path / "disk" / "o"))).output
        == tmp_path / "disk" / "o"
    )


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (".nan", "finite"),
        (".inf", "finite"),
        ("-.inf", "finite"),
        ("1e400", "finite"),
        ("9" * 5000, "digits"),
        ("9" * 40, "guidance"),
    ],
)
def test_numbers_that_are_not_numbers_are_refused(tmp_path: Path, value: str, needle: str) -> None:
    refused(spec(tmp_path, f'a: {{target: 1, prompt: "x", guidance: {value}}}\n'), needle)


def _cli_validate(path: Path) -> tuple[int, str, float]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30));"
            "from diffspec.cli import main; sys.argv = ['diffspec', 'validate', sys.argv[1]]; main()",
            str(path),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    return proc.returncode, proc.stderr + proc.stdout, time.monotonic() - t0


def _bomb(path: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("kind", ["bomb", "empty", "folder", "binary", "devzero", "huge"])
def test_files_that_are_not_specs_fail_fast_in_bounded_memory(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "s.yaml"
    if kind == "bomb":
        _bomb(path)
    elif kind == "empty":
        path.write_text("")
    elif kind == "folder":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 20)
    elif kind == "devzero":
        path.symlink_to("/dev/zero")
    else:
        path.write_text("a: " + "x" * (17 * 1024 * 1024))
    rc, text, seconds = _cli_validate(path)
    assert rc == 1 and "Traceback" not in text and "internal error" not in text, text
    assert seconds < 10  # (start-up included; the refusal itself is well under a second)


def _weights_folder(root: Path, suffix: str, extra: dict[str, str] | None = None) -> Path:
    folder = root / "spec" / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text("{}")
    (folder / "unet" / f"diffusion_pytorch_model{suffix}").write_bytes(b"\0" * 16)
    (folder / "model_index.json").write_text(
        '{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}'
    )
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)
    return folder


def test_a_folder_of_pickle_weights_is_refused_unless_the_spec_opts_in(tmp_path: Path) -> None:
    _weights_folder(tmp_path, ".bin")
    body = 'a: {target: 1, prompt: "x"}\n'
    text = refused(spec(tmp_path, body, source="model", model_extra=", family: sd"), "use_safetensors: false", "unet/")
    assert "spec.yaml:5:" in text
    try:
        load_spec(spec(tmp_path, body, source="model", model_extra=", family: sd, use_safetensors: false"))
    except SpecError as exc:
        assert "pickle" not in str(exc)


def test_a_model_that_ships_code_is_refused_unless_trusted(tmp_path: Path) -> None:
    _weights_folder(tmp_path, ".safetensors", {"pipeline.py": "import os\n"})
    body = 'a: {target: 1, prompt: "x"}\n'
    refused(spec(tmp_path, body, source="model", model_extra=", family: sd"), "trust_remote_code: true", "pipeline.py")
    try:
        load_spec(spec(tmp_path, body, source="model", model_extra=", family: sd, trust_remote_code: true"))
    except SpecError as exc:
        assert "trust_remote_code" not in str(exc)


def test_a_pickle_lora_file_is_refused(tmp_path: Path) -> None:
    lora = tmp_path / "spec" / "lora.bin"
    lora.parent.mkdir(parents=True)
    lora.write_bytes(b"\0")
    refused(spec(tmp_path, 'a: {target: 1, prompt: "x"}\n', model_extra=", loras: [{source: lora.bin}]"), "pickle file")
