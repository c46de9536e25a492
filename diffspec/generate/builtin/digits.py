"""The embedded default model ``builtin:digits``.

A tiny text-conditioned diffusion model trained on scikit-learn's bundled
handwritten digits (``sklearn.datasets.load_digits``).  It is built from plain
diffusers parts so that everything a real model does works on it too:

* ``unet``: a :class:`diffusers.UNet2DConditionModel` working at the native
  resolution of the data, 8x8 pixels, one channel, epsilon prediction.  The
  prompt reaches it as a *multi-hot bag of words* over a small vocabulary
  (:data:`TOKENS`), fed through the UNet's ``class_embed_type="projection"``
  embedding (a two-layer MLP whose output is added to the timestep
  embedding).  A bag of words is a summed embedding of its tokens, so digit and
  style words combine freely; the all-zero vector is the null condition used
  for classifier-free guidance.
* ``scheduler``: a :class:`diffusers.DDPMScheduler` (linear betas, 1000 train
  steps, ``timestep_spacing="trailing"``).  Any diffusers scheduler swaps in
  with ``pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)``.

The prompt parser (:func:`parse_prompt`) is plain Python: it finds one digit
and any style words in free text and ignores every other word.  There is no
learned text encoder, hence no tokenizer to ship.

Images come out as light ink on a black background (the value convention of
the training data: 0 = paper, 16 = full ink), rendered as RGB.  The model
samples 8x8 images; ``height``/``width`` (default 32x32) upscale the decoded
result with nearest-neighbour interpolation (``upscale="bilinear"`` for a
smoother look).  See ``docs/builtin-digits.md``.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

__all__ = [
    "DIGIT_WORDS",
    "STYLE_WORDS",
    "TOKENS",
    "NATIVE_SIZE",
    "DEFAULT_SIZE",
    "DEFAULT_STEPS",
    "DEFAULT_GUIDANCE",
    "ParsedPrompt",
    "parse_prompt",
    "encode_prompt",
    "DigitsPipeline",
    "builtin_path",
]

# --------------------------------------------------------------------------- vocabulary

#: Native resolution of the model (the data are 8x8).
NATIVE_SIZE = 8
#: Output size when ``height``/``width`` are not given.
DEFAULT_SIZE = 32
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 3.0

#: The condition tokens, in the order of the UNet's multi-hot input.  Changing this
#: order or length invalidates the shipped weights.
TOKENS: tuple[str, ...] = (
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "thin",
    "thick",  # stroke weight: ink mass, lower/upper tercile within the digit's class
    "narrow",
    "wide",  # horizontal spread of the ink, lower/upper tercile within the class
    "backslanted",
    "upright",
    "slanted",  # slant from image moments, terciles within the class
)
TOKEN_INDEX = {t: i for i, t in enumerate(TOKENS)}

#: Style groups: at most one word of each group is used (the first one met).
STYLE_GROUPS: dict[str, tuple[str, ...]] = {
    "weight": ("thin", "thick"),
    "width": ("narrow", "wide"),
    "slant": ("backslanted", "upright", "slanted"),
}

#: Words (and digits) that name a digit.
DIGIT_WORDS: dict[str, int] = {
    **{str(d): d for d in range(10)},
    "zero": 0,
    "nought": 0,
    "naught": 0,
    "nil": 0,
    "oh": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "zeros": 0,
    "zeroes": 0,
    "ones": 1,
    "twos": 2,
    "threes": 3,
    "fours": 4,
    "fives": 5,
    "sixes": 6,
    "sevens": 7,
    "eights": 8,
    "nines": 9,
}

#: Single words that name a style token.
STYLE_WORDS: dict[str, str] = {
    "thin": "thin",
    "light": "thin",
    "fine": "thin",
    "faint": "thin",
    "skinny": "thin",
    "lightweight": "thin",
    "hairline": "thin",
    "thick": "thick",
    "bold": "thick",
    "heavy": "thick",
    "fat": "thick",
    "dark": "thick",
    "heavyweight": "thick",
    "narrow": "narrow",
    "slim": "narrow",
    "condensed": "narrow",
    "compressed": "narrow",
    "wide": "wide",
    "broad": "wide",
    "extended": "wide",
    "expanded": "wide",
    "upright": "upright",
    "straight": "upright",
    "vertical": "upright",
    "unslanted": "upright",
    "slanted": "slanted",
    "slanting": "slanted",
    "italic": "slanted",
    "italics": "slanted",
    "oblique": "slanted",
    "leaning": "slanted",
    "tilted": "slanted",
    "sloped": "slanted",
    "slant": "slanted",
    "cursive": "slanted",
    "backslanted": "backslanted",
    "backslant": "backslanted",
    "backward": "backslanted",
    "reclined": "backslanted",
}

#: Two-word phrases, checked before single words.
STYLE_PHRASES: dict[tuple[str, str], str] = {
    ("left", "leaning"): "backslanted",
    ("leaning", "left"): "backslanted",
    ("left", "slanted"): "backslanted",
    ("slanted", "left"): "backslanted",
    ("left", "slanting"): "backslanted",
    ("slanting", "left"): "backslanted",
    ("back", "slanted"): "backslanted",
    ("backward", "slanted"): "backslanted",
    ("backwards", "slanted"): "backslanted",
    ("reverse", "slanted"): "backslanted",
    ("tilted", "left"): "backslanted",
    ("left", "tilted"): "backslanted",
    ("right", "leaning"): "slanted",
    ("leaning", "right"): "slanted",
    ("right", "slanted"): "slanted",
    ("slanted", "right"): "slanted",
    ("tilted", "right"): "slanted",
    ("right", "tilted"): "slanted",
    ("not", "slanted"): "upright",
    ("no", "slant"): "upright",
}

_WORD_RE = re.compile(r"[a-z0-9]+")
_NUMERAL_RE = re.compile(r"[0-9]s?")  # "7", "7s"; not "10", "4k", "28x28"


@dataclass(frozen=True)
class ParsedPrompt:
    """What the model understood of a prompt."""

    digit: int | None
    styles: tuple[str, ...]  # canonical style tokens, in TOKENS order

    @property
    def tokens(self) -> tuple[str, ...]:
        head = (str(self.digit),) if self.digit is not None else ()
        return head + self.styles

    @property
    def is_null(self) -> bool:
        return self.digit is None and not self.styles


def parse_prompt(prompt: str | None) -> ParsedPrompt:
    """Find the digit and the style words in free text; every other word is ignored.

    * A digit is a single numeral (``"7"``) or a number word (``"seven"``,
      ``"sevens"``, ``"zero"``/``"nought"``/``"oh"``).  Numerals take precedence over
      words; ``"one"`` counts only when no other digit word is present (it is also
      an article: "one thick seven" is a seven).  Otherwise the first one wins.
      Multi-digit numbers and numerals glued to letters (``"10"``, ``"28x28"``,
      ``"4k"``) are not digits; ``"7s"`` is.
    * Style words map to the canonical tokens of :data:`STYLE_GROUPS`; per group
      the first word met wins (``"thin bold 3"`` is a thin 3).
    """
    if not prompt:
        return ParsedPrompt(None, ())
    words = _WORD_RE.findall(prompt.lower())

    numerals = [int(w[0]) for w in words if _NUMERAL_RE.fullmatch(w)]
    named = [DIGIT_WORDS[w] for w in words if w.isalpha() and w in DIGIT_WORDS]
    if numerals:
        digit: int | None = numerals[0]
    else:
        not_one = [w for w in words if w.isalpha() and w in DIGIT_WORDS and w not in ("one", "ones", "oh")]
        if not_one:
            digit = DIGIT_WORDS[not_one[0]]
        elif named:
            digit = named[0]
        else:
            digit = None

    chosen: dict[str, str] = {}
    skip = False
    for i, w in enumerate(words):
        if skip:
            skip = False
            continue
        tok = None
        if i + 1 < len(words) and (w, words[i + 1]) in STYLE_PHRASES:
            tok = STYLE_PHRASES[(w, words[i + 1])]
            skip = True
        elif w in STYLE_WORDS:
            tok = STYLE_WORDS[w]
        if tok is None:
            continue
        group = next(g for g, members in STYLE_GROUPS.items() if tok in members)
        chosen.setdefault(group, tok)
    styles = tuple(t for t in TOKENS if t in chosen.values())
    return ParsedPrompt(digit, styles)


def encode_prompt(prompt: str | None) -> list[float]:
    """The multi-hot condition vector of a prompt (all zeros = null condition)."""
    vec = [0.0] * len(TOKENS)
    for tok in parse_prompt(prompt).tokens:
        vec[TOKEN_INDEX[tok]] = 1.0
    return vec


def builtin_path(name: str = "digits") -> pathlib.Path:
    """The folder of the shipped weights of ``builtin:<name>`` (a ``save_pretrained`` folder)."""
    path = pathlib.Path(__file__).resolve().parent / name
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"no built-in model {name!r}: {path} has no model_index.json")
    return path


# --------------------------------------------------------------------------- the pipeline

_UPSCALE_MODES = {"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic"}


def _as_list(value: str | list[str] | None, n: int | None = None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value] * (n or 1)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"prompts must be a str or a list of str, got {type(value).__name__}")
    return list(value)


class DigitsPipeline(DiffusionPipeline):
    r"""Text-to-image pipeline of the embedded ``builtin:digits`` model.

    Called like a Stable Diffusion txt2img pipeline::

        pipe = DigitsPipeline.from_pretrained(builtin_path())
        images = pipe("a thick handwritten 7", generator=torch.Generator().manual_seed(0)).images

    Args:
        unet: a ``UNet2DConditionModel`` with ``class_embed_type="projection"`` and
            ``projection_class_embeddings_input_dim == len(TOKENS)``.
        scheduler: any diffusers noise scheduler (epsilon prediction).
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DConditionModel, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    # -- conditioning -----------------------------------------------------------
    def encode_prompt(self, prompt: str | list[str] | None, device=None) -> torch.Tensor:
        """Multi-hot condition vectors, shape ``(len(prompt), len(TOKENS))``."""
        prompts = _as_list(prompt) or [""]
        dtype = self.unet.dtype if self.unet is not None else torch.float32
        return torch.tensor([encode_prompt(p) for p in prompts], dtype=dtype, device=device)

    @staticmethod
    def parse_prompt(prompt: str | None) -> ParsedPrompt:
        return parse_prompt(prompt)

    def prepare_extra_step_kwargs(self, generator, eta):
        import inspect

        params = set(inspect.signature(self.scheduler.step).parameters)
        extra = {}
        if "eta" in params:
            extra["eta"] = eta
        if "generator" in params:
            extra["generator"] = generator
        return extra

    # -- sampling ---------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        return_dict: bool = True,
        eta: float = 0.0,
        latents: torch.Tensor | None = None,
        upscale: str = "nearest",
        callback_on_step_end: Callable | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate digits.

        Args:
            prompt: text naming a digit and optional style words (see :func:`parse_prompt`).
                ``None`` or ``""`` is the null condition (any digit).
            negative_prompt: encoded like ``prompt``; the unconditional branch of
                classifier-free guidance.  ``None``/``""`` = null condition.
            num_inference_steps: denoising steps of the scheduler.
            guidance_scale: classifier-free guidance weight; ``<= 1`` disables guidance
                (and the negative prompt).
            generator: one generator, or one per image (``len == batch * num_images_per_prompt``);
                with a list, image *i* draws all its noise from generator *i* only, so its
                pixels do not depend on the batch it is in.
            height, width: output size in pixels (default 32x32).  The model samples
                8x8 images; other sizes are resized from them (``upscale``).
            num_images_per_prompt: images per prompt (diffusers order: p0, p0, p1, p1, ...).
            output_type: ``"pil"`` (RGB images), ``"np"`` (float32 ``(B, H, W, 3)`` in [0, 1])
                or ``"pt"`` (float32 ``(B, 3, H, W)`` in [0, 1]).
            return_dict: return an :class:`ImagePipelineOutput` (else a 1-tuple).
            eta: DDIM eta (ignored by schedulers without it).
            latents: optional initial noise ``(B, 1, 8, 8)`` (before ``init_noise_sigma`` scaling).
            upscale: ``"nearest"`` (default, crisp pixels), ``"bilinear"`` or ``"bicubic"``.
            callback_on_step_end: ``f(pipe, step_index, timestep, callback_kwargs) -> dict``,
                called with ``{"latents": ...}`` after each step, may return new latents.
        """
        # ---- validate arguments (errors rather than silent corrections)
        if prompt is None:
            prompt = ""
        prompts = _as_list(prompt)
        if not prompts:
            raise ValueError("`prompt` must be a non-empty str or list of str")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt!r}")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"`output_type` must be 'pil', 'np' or 'pt', got {output_type!r}")
        if upscale not in _UPSCALE_MODES:
            raise ValueError(f"`upscale` must be one of {sorted(_UPSCALE_MODES)}, got {upscale!r}")
        height = DEFAULT_SIZE if height is None else height
        width = DEFAULT_SIZE if width is None else width
        for name, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {v!r}")
        negatives = _as_list(negative_prompt, len(prompts))
        if negatives is not None and len(negatives) != len(prompts):
            raise ValueError(f"`negative_prompt` has {len(negatives)} entries but `prompt` has {len(prompts)}")
        batch = len(prompts) * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(
                f"got a list of {len(generator)} generators for {batch} images "
                f"({len(prompts)} prompts x {num_images_per_prompt} per prompt); pass one per image"
            )

        device = self._execution_device
        dtype = self.unet.dtype
        do_cfg = guidance_scale > 1.0

        # ---- conditions
        cond = self.encode_prompt(prompts, device).repeat_interleave(num_images_per_prompt, dim=0)
        if do_cfg:
            uncond = self.encode_prompt(negatives or [""] * len(prompts), device)
            uncond = uncond.repeat_interleave(num_images_per_prompt, dim=0)
            labels = torch.cat([uncond, cond])
        else:
            labels = cond

        # ---- initial noise: per-image generators draw per image (randn_tensor)
        size = self.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        shape = (batch, self.unet.config.in_channels, size, size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}")
            latents = latents.to(device=device, dtype=dtype)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        latents = latents * self.scheduler.init_noise_sigma
        extra = self.prepare_extra_step_kwargs(generator, eta)

        # ---- denoising loop
        for i, t in enumerate(self.progress_bar(timesteps)):
            model_in = torch.cat([latents] * 2) if do_cfg else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            eps = self.unet(model_in, t, encoder_hidden_states=None, class_labels=labels).sample
            if do_cfg:
                eps_u, eps_c = eps.chunk(2)
                eps = eps_u + guidance_scale * (eps_c - eps_u)
            latents = self.scheduler.step(eps, t, latents, **extra, return_dict=False)[0]
            if callback_on_step_end is not None:
                out = callback_on_step_end(self, i, t, {"latents": latents}) or {}
                latents = out.get("latents", latents)

        # ---- decode: [-1, 1] -> [0, 1], resize, gray -> RGB
        image = (latents.float().clamp(-1, 1) + 1) / 2
        if (height, width) != tuple(image.shape[-2:]):
            mode = _UPSCALE_MODES[upscale]
            kw = {} if mode == "nearest-exact" else {"align_corners": False}
            image = F.interpolate(image, size=(height, width), mode=mode, **kw).clamp(0, 1)
        image = image.repeat(1, 3, 1, 1)

        if output_type == "pt":
            out = image.cpu()
        else:
            out = image.cpu().permute(0, 2, 3, 1).numpy().astype(np.float32)
            if output_type == "pil":
                out = self.numpy_to_pil(out)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (out,)
        return ImagePipelineOutput(images=out)
