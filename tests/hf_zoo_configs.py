"""Tiny random-init models of every architecture the installed transformers knows, and inputs for them.

`zoo_types()` lists the model types of transformers' auto mappings that have a base model class
(`MODEL_MAPPING_NAMES`; the `extra` variants add config flags that take other code paths, such
as GPT-2's `reorder_and_upcast_attn`). `build(entry)` shrinks the default config of that type
(width 64, 2 layers, 4 heads, 2 key/value heads, small vocabulary and images, recursively in
sub-configs), builds the model on the CPU without any download, and finds inputs it accepts:
token ids for text (and multimodal) models, plus decoder ids for encoder-decoders, pixel values
for vision models, features or samples for audio models. What cannot be built or run unwatched
raises `Skip` with the reason. `compare_watched(...)` runs one forward of each attention
implementation the model supports (sdpa, eager) in fp32 and under bf16 autocast, unwatched,
watched and unwatched again, and returns what differed. Shared by tests/test_hf_zoo.py and
benchmarks/hf_zoo.py.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import multiprocessing
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

WIDTH = 64
TINY: dict[str, int] = {
    # width
    "hidden_size": WIDTH, "d_model": WIDTH, "n_embd": WIDTH, "embed_dim": WIDTH, "embedding_size": WIDTH,
    "decoder_hidden_size": WIDTH, "encoder_hidden_size": WIDTH, "projection_dim": WIDTH, "out_hidden_size": WIDTH,
    "output_hidden_size": WIDTH, "projector_hidden_size": WIDTH, "text_hidden_size": WIDTH,
    "vision_hidden_size": WIDTH,
    # depth
    "num_hidden_layers": 2, "n_layer": 2, "n_layers": 2, "num_layers": 2, "encoder_layers": 2,
    "decoder_layers": 2, "num_decoder_layers": 2, "depth": 2, "decoder_num_hidden_layers": 2,
    # heads
    "num_attention_heads": 4, "n_head": 4, "n_heads": 4, "num_heads": 4, "encoder_attention_heads": 4,
    "decoder_attention_heads": 4, "decoder_num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": WIDTH // 4, "d_kv": WIDTH // 4,
    # feed-forward
    "intermediate_size": 2 * WIDTH, "ffn_dim": 2 * WIDTH, "encoder_ffn_dim": 2 * WIDTH, "decoder_ffn_dim": 2 * WIDTH,
    "d_ff": 2 * WIDTH, "decoder_intermediate_size": 2 * WIDTH, "n_inner": 2 * WIDTH,
    # mixture of experts
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
    "moe_intermediate_size": WIDTH // 2, "shared_expert_intermediate_size": WIDTH // 2,
    "n_shared_experts": 1, "first_k_dense_replace": 1,
    # multi-head latent attention
    "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "qk_head_dim": 16,
    "v_head_dim": 16,
    # state-space layers of hybrid models
    "mamba_chunk_size": 16, "chunk_size": 16, "mamba_d_state": 16, "state_size": 16, "ssm_state_size": 16,
    "mamba_dt_rank": 8, "time_step_rank": 8, "mamba_n_heads": 8, "mamba_num_heads": 8, "mamba_d_head": 16,
    "mamba_head_dim": 16, "mamba_headdim": 16, "mamba_d_ssm": 128, "n_groups": 1,
    # positions and images
    "rotary_dim": 8, "max_position_embeddings": 128, "n_positions": 128, "max_source_positions": 32,
    "max_target_positions": 64, "image_size": 32, "patch_size": 8,
}
"""Size attributes shrunk to these values wherever a default config has them as a larger int."""

INIT_RANGE = 0.2
"""Weights ten times the usual spread, so attention is far from uniform and paths that differ show."""
MILD = {"num_hidden_layers", "n_layer", "n_layers", "num_layers", "encoder_layers", "decoder_layers",
        "num_decoder_layers", "depth", "decoder_num_hidden_layers", "num_experts", "num_local_experts",
        "n_routed_experts", "num_experts_per_tok", "n_shared_experts", "first_k_dense_replace"}
"""What the mild shrink (the fallback) changes."""
HYBRID: dict[str, Any] = {"attention_types": [[["global", "local"], 1]], "attn_layer_period": 2,
                          "attn_layer_offset": 1, "attn_layer_indices": [1], "hybrid_layer_ids": [1],
                          "attention_head_dim": WIDTH // 4}
"""Where hybrid (state-space + attention) models place attention, set for two layers."""
SSM_HEADS = [("num_heads", "head_dim", "expand"), ("mamba_n_heads", "mamba_d_head", "mamba_expand"),
             ("mamba_num_heads", "mamba_head_dim", "expand"), ("n_mamba_heads", "mamba_headdim", "mamba_expand")]
"""(heads, head size, expansion) of state-space layers: heads x head size = width x expansion."""
SEQ = 8
MAX_PARAMS = 40_000_000
BATCH = 2
PROBES = ["timing", "attention", "activations", "gradients", "experts", "anomalies", "weight_norm"]
"""Every probe that attaches to a model (`system` only samples the machine)."""


SLOW = {"swin2sr": 18, "glm5_next": 13, "glm5_next_text": 13, "kimi_linear": 5}
"""Architectures whose tiny model takes seconds per forward on a CPU core (measured with
benchmarks/hf_zoo.py, transformers 5.25): skipped to keep the zoo test within minutes on 2 busy cores."""


class Skip(Exception):
    """This architecture cannot be run here; the message says why."""


@dataclass(frozen=True)
class ZooEntry:
    """One architecture to run: a model type, and config flags of a variant (empty: the defaults)."""

    model_type: str
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """`gpt2`, or `gpt2[reorder_and_upcast_attn=True]` for a variant."""
        flags = ",".join(f"{k}={v}" for k, v in self.extra)
        return f"{self.model_type}[{flags}]" if flags else self.model_type


VARIANTS = [ZooEntry("gpt2", (("reorder_and_upcast_attn", True),)),
            ZooEntry("decision_transformer", (("reorder_and_upcast_attn", True),))]
"""Config flags under which a model takes another path depending on its attention implementation's name."""


def zoo_types() -> list[ZooEntry]:
    """Every model type with a base model class in the installed transformers, then the variants."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    return [ZooEntry(t) for t in sorted(MODEL_MAPPING_NAMES)] + VARIANTS


# ---- configs -------------------------------------------------------------------------------------

def tiny_config(entry: ZooEntry, mild: bool = False) -> Any:
    """The default config of `entry.model_type` with its sizes (and its sub-configs' sizes) shrunk;
    `mild`: only depth, experts and vocabulary (for models whose widths are tied together)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        cls = CONFIG_MAPPING[entry.model_type]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            default = cls()
            return cls(**_shrunk_kwargs(default, mild), **dict(entry.extra))
    except Exception as exc:  # noqa: BLE001 - anything: the architecture is listed as skipped with this
        raise Skip(f"no tiny config: {_short(exc)}") from exc


def _shrunk_kwargs(default: Any, mild: bool = False) -> dict[str, Any]:
    """Constructor keywords that shrink `default`; sub-configs are passed as shrunk config objects."""
    from transformers import PretrainedConfig

    names = _field_names(default)
    values = {k: _get(default, k) for k in names}
    kwargs: dict[str, Any] = {}
    for key, tiny in TINY.items():
        if mild and key not in MILD:
            continue
        value = values.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > tiny:
            kwargs[key] = tiny
        elif key == "image_size" and isinstance(value, (list, tuple)) and len(value) == 2:
            kwargs[key] = [tiny, tiny]
    if isinstance(values.get("initializer_range"), float):
        kwargs["initializer_range"] = INIT_RANGE
    if "num_key_value_heads" in kwargs and values.get("num_key_value_heads") == values.get("num_attention_heads"):
        kwargs["num_key_value_heads"] = TINY["num_attention_heads"]  # keep multi-head where it was
    if "qk_rope_head_dim" in kwargs and values.get("head_dim") == values.get("qk_rope_head_dim"):
        kwargs["head_dim"] = TINY["qk_rope_head_dim"]  # multi-head latent attention: head_dim is the rope part
    experts = [values.get(k) for k in ("num_experts", "num_local_experts", "n_routed_experts")]
    if values.get("num_experts_per_tok", 0) is None and any(isinstance(e, int) for e in experts):
        kwargs["num_experts_per_tok"] = TINY["num_experts_per_tok"]  # a default left unset (DeepSeek-V2)
    for key in ("n_group", "topk_group"):  # expert groups of the shrunk expert count
        if isinstance(values.get(key), int) and values[key] > 1:
            kwargs[key] = 1
    depth = next((values[k] for k in ("num_hidden_layers", "num_layers", "n_layer") if isinstance(values.get(k), int)),
                 None)
    for key, value in values.items():  # per-layer lists (layer_types, ...) follow the depth
        if isinstance(value, list) and depth and len(value) == depth and depth > 2:
            kwargs[key] = _two_layers(value)
    for key, tiny_value in HYBRID.items():  # hybrids: the second of the two layers is an attention layer
        if key in values and (values[key] is None or type(values[key]) is type(tiny_value)):
            kwargs[key] = tiny_value
    rope = values.get("rope_parameters")
    if not mild and isinstance(rope, dict) and isinstance(rope.get("mrope_section"), list):
        kwargs["rope_parameters"] = {**rope, "mrope_section": _scaled(rope["mrope_section"], TINY["head_dim"] // 2)}
    for heads_key, dim_key, expand_key in SSM_HEADS:  # state-space heads tile hidden * expand
        expand = values.get(expand_key)
        if isinstance(expand, int) and isinstance(values.get(dim_key), int) and heads_key in values:
            heads = kwargs.get(heads_key, values[heads_key])
            if isinstance(heads, int) and heads and WIDTH * expand % heads == 0:
                kwargs[dim_key] = WIDTH * expand // heads
    specials = special_ids(default, recurse=False)
    vocab = values.get("vocab_size")
    if isinstance(vocab, int) and vocab > 256:
        kwargs["vocab_size"] = max([256] + [i + 1 for i in specials if i < vocab])
    for key in getattr(default, "sub_configs", {}) or {}:
        sub = getattr(default, key, None)
        if isinstance(sub, PretrainedConfig):
            try:
                kwargs[key] = type(sub)(**_shrunk_kwargs(sub, mild))
            except Exception:  # noqa: BLE001 - keep this sub-config as it is
                pass
    return kwargs


def _get(config: Any, key: str) -> Any:
    try:
        return getattr(config, key, None)
    except Exception:  # noqa: BLE001 - e.g. a per-layer attribute with no global value
        return None


def _scaled(sections: list[int], total: int) -> list[int]:
    """Integer sections proportional to `sections` that sum to `total` (multimodal rope)."""
    out = [max(1, v * total // sum(sections)) for v in sections]
    out[-1] += total - sum(out)
    return out


def _two_layers(per_layer: list[Any]) -> list[Any]:
    """Two layers' entries: the first, and the first of another kind when there is one (hybrids)."""
    other = next((v for v in per_layer if v != per_layer[0]), per_layer[1])
    return [per_layer[0], other]


def _field_names(config: Any) -> list[str]:
    if dataclasses.is_dataclass(config):
        return [f.name for f in dataclasses.fields(config)]
    return list(vars(config))


def special_ids(config: Any, recurse: bool = True) -> set[int]:
    """Every token id a config names (`*_token_id`, `*_token_index`, `*_id`), in its sub-configs too."""
    from transformers import PretrainedConfig

    found: set[int] = set()
    for key, value in vars(config).items():
        if (key.endswith("_id") or key.endswith("_index")) and isinstance(value, int) and not isinstance(value, bool):
            found.add(value)
        elif key.endswith("_ids") and isinstance(value, (list, tuple)):
            found.update(v for v in value if isinstance(v, int))
        elif recurse and isinstance(value, PretrainedConfig):
            found |= special_ids(value)
    return {i for i in found if i >= 0}


# ---- models and inputs ---------------------------------------------------------------------------

def build(entry: ZooEntry) -> tuple[nn.Module, dict[str, Any]]:
    """The tiny model in eval mode and keyword inputs its forward accepts; `Skip` when there are none.
    When the tiny config does not build or run, a mild one (depth, experts, vocabulary) is tried."""
    try:
        return _build(tiny_config(entry))
    except Skip as tiny_failed:
        try:
            return _build(tiny_config(entry, mild=True))
        except Skip:
            raise tiny_failed from None


def _build(config: Any) -> tuple[nn.Module, dict[str, Any]]:
    from transformers import AutoModel

    torch.manual_seed(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.device("meta"):  # count first: a size the shrinking missed would take minutes
                size = sum(p.numel() for p in AutoModel.from_config(config).parameters())
            if size > MAX_PARAMS:
                raise Skip(f"{size / 1e6:.0f} M parameters after shrinking (the zoo runs up to "
                           f"{MAX_PARAMS / 1e6:.0f} M)")
            model = AutoModel.from_config(config).eval()
    except Skip:
        raise
    except Exception as exc:  # noqa: BLE001
        raise Skip(f"does not build from a tiny config: {_short(exc)}") from exc
    errors = []
    for make in _input_candidates(model, config):
        inputs = make()
        try:
            forward(model, inputs, bf16=False)
            return model, inputs
        except Exception as exc:  # noqa: BLE001
            errors.append(_short(exc))
    if not errors:
        raise Skip(f"main input {model.main_input_name!r}: no input the harness builds")
    raise Skip(f"no input runs unwatched ({model.main_input_name}): {errors[-1]}")


def _input_candidates(model: nn.Module, config: Any) -> Iterator[Callable[[], dict[str, Any]]]:
    params = inspect.signature(model.forward).parameters
    main = model.main_input_name
    gen = torch.Generator().manual_seed(1)
    text = text_config(config)
    if "input_ids" in params and main in ("input_ids", "pixel_values", "input_features", "input_values"):
        yield lambda: _text_inputs(model, config, text, params, gen)
    if "pixel_values" in params:
        vision = getattr(config, "vision_config", None) or config
        channels = getattr(vision, "num_channels", 3)
        channels = channels if isinstance(channels, int) else 3
        for size in _image_sizes(vision):
            yield lambda size=size: {"pixel_values": torch.randn(BATCH, channels, size, size, generator=gen),
                                     **_decoder(config, params, gen)}
            if "input_ids" in params:  # dual encoders (CLIP-like) take text and image together
                yield lambda size=size: {"pixel_values": torch.randn(BATCH, channels, size, size, generator=gen),
                                         **_text_inputs(model, config, text, params, gen)}
    if main == "input_features":
        mel = getattr(config, "num_mel_bins", None) or getattr(config, "feature_size", 80)
        frames = 2 * getattr(config, "max_source_positions", 16) if hasattr(config, "max_source_positions") else 32
        feat = getattr(config, "input_feat_per_channel", None)
        shapes = [(BATCH, mel, frames)] + ([(BATCH, 32, feat * getattr(config, "input_channels", 1))] if feat else [])
        shapes.append((BATCH, 32, mel))
        for shape in shapes:
            yield lambda shape=shape: {"input_features": torch.randn(*shape, generator=gen),
                                       **_decoder(config, params, gen)}
    if main == "input_values":
        for shape in [(BATCH, 1600), (BATCH, 1, 1600)]:
            yield lambda shape=shape: {"input_values": torch.randn(*shape, generator=gen),
                                       **_decoder(config, params, gen)}


def text_config(config: Any) -> Any:
    """The config that holds the vocabulary (the text sub-config of a multimodal model)."""
    if isinstance(getattr(config, "vocab_size", None), int):
        return config
    for key in ("text_config", "decoder", "language_config", "llm_config"):
        sub = getattr(config, key, None)
        if isinstance(getattr(sub, "vocab_size", None), int):
            return sub
    return config


def _token_ids(config: Any, text: Any, shape: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    vocab = getattr(text, "vocab_size", None) or 64
    avoid = special_ids(config)
    pool = [i for i in range(3, min(int(vocab), 256)) if i not in avoid] or list(range(int(vocab)))
    pick = torch.randint(0, len(pool), shape, generator=gen)
    return torch.tensor(pool)[pick]


def _text_inputs(model: nn.Module, config: Any, text: Any, params: Any, gen: torch.Generator) -> dict[str, Any]:
    inputs: dict[str, Any] = {"input_ids": _token_ids(config, text, (BATCH, SEQ), gen)}
    if "attention_mask" in params:
        mask = torch.ones(BATCH, SEQ, dtype=torch.long)
        mask[1, -2:] = 0  # right padding in the second sequence
        inputs["attention_mask"] = mask
    inputs.update(_decoder(config, params, gen))
    return inputs


def _decoder(config: Any, params: Any, gen: torch.Generator) -> dict[str, Any]:
    if "decoder_input_ids" not in params or not getattr(config, "is_encoder_decoder", False):
        return {}
    decoder = getattr(config, "decoder", None)
    decoder = decoder if isinstance(getattr(decoder, "vocab_size", None), int) else text_config(config)
    return {"decoder_input_ids": _token_ids(config, decoder, (BATCH, SEQ - 3), gen)}


def _image_sizes(config: Any) -> list[int]:
    size = getattr(config, "image_size", None)
    size = size[0] if isinstance(size, (list, tuple)) else size
    sizes = [size] if isinstance(size, int) and size <= 512 else []
    return sizes + [s for s in (32, 64, 224) if s not in sizes]


def forward(model: nn.Module, inputs: dict[str, Any], bf16: bool) -> list[torch.Tensor]:
    """One seeded forward without gradients; every tensor of the output, in order."""
    torch.manual_seed(0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(**inputs)
    return list(_tensors(out))


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):  # ModelOutput included
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def implementations(model: nn.Module) -> list[str]:
    """The attention implementations to run: sdpa where the model supports it, and eager."""
    impls = ["sdpa"] if getattr(model, "_supports_sdpa", False) else []
    return impls + ["eager"]


def set_implementation(model: nn.Module, impl: str) -> bool:
    """Switch the model to `impl`; False when it refuses."""
    try:
        model.set_attn_implementation(impl)
    except Exception:  # noqa: BLE001
        return False
    return model.config._attn_implementation == impl


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    """Bit-identical tensor lists (NaN equals NaN at the same place)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.is_floating_point() or x.is_complex():
            if not torch.equal(torch.isnan(x), torch.isnan(y)):
                return False
            if not torch.equal(torch.nan_to_num(x, nan=0.0), torch.nan_to_num(y, nan=0.0)):
                return False
        elif not torch.equal(x, y):
            return False
    return True


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest absolute difference between two tensor lists of the same layout (inf when not)."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf")
    diffs = [(x.double() - y.double()).abs().nan_to_num(0.0).max().item() for x, y in zip(a, b)
             if x.numel() and (x.is_floating_point() or not torch.equal(x, y))]
    return max(diffs, default=0.0)


@dataclass
class ZooResult:
    """What running one architecture watched and unwatched gave."""

    label: str
    status: str  # "same", "differs", "error", "skipped"
    reason: str = ""
    impls: list[str] = field(default_factory=list)
    maps: int = 0
    unwatched_s: float = 0.0
    watched_s: float = 0.0


def compare_watched(entry: ZooEntry, run_dir: Path) -> ZooResult:
    """Run `entry` unwatched and watched (probes `PROBES`, every step sampled; one watch per
    implementation, opened after setting it) in fp32 and bf16 autocast; bit-identical outputs give
    status "same". A difference is checked against a second unwatched run (nondeterminism)."""
    import inspector

    if entry.model_type in SLOW:
        return ZooResult(entry.label, "skipped", f"slow: about {SLOW[entry.model_type]} s for the zoo's forwards on CPU")
    try:
        model, inputs = build(entry)
    except Skip as exc:
        return ZooResult(entry.label, "skipped", str(exc))
    impls = [i for i in implementations(model) if set_implementation(model, i)]
    if not impls:
        return ZooResult(entry.label, "skipped", "accepts neither sdpa nor eager attention")
    cases = [(impl, bf16) for impl in impls for bf16 in (False, True)]
    before, ran = {}, []
    unwatched_s = watched_s = 0.0
    for impl, bf16 in cases:
        set_implementation(model, impl)
        try:
            start = time.perf_counter()
            before[impl, bf16] = forward(model, inputs, bf16)
            unwatched_s += time.perf_counter() - start
            ran.append((impl, bf16))
        except Exception as exc:  # noqa: BLE001 - e.g. an op without a bf16 CPU kernel
            if not bf16:
                return ZooResult(entry.label, "skipped", f"{impl} forward fails unwatched: {_short(exc)}")
    during: dict[tuple[str, bool], list[torch.Tensor]] = {}
    problems: list[str] = []
    maps = 0
    for impl in impls:  # one watch per implementation, set before watching as a user would
        set_implementation(model, impl)
        mine = [case for case in ran if case[0] == impl]
        try:
            w = inspector.watch(model, run_dir / impl, probes=PROBES, every=1)
        except Exception as exc:  # noqa: BLE001
            return ZooResult(entry.label, "error", f"watch() raised {_short(exc)}", impls)
        try:
            for case in mine:
                try:
                    start = time.perf_counter()
                    during[case] = forward(model, inputs, case[1])
                    watched_s += time.perf_counter() - start
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"{_case(case)} raised {_short(exc)} when watched")
                w.step()
        finally:
            w.close()
        maps += _count_maps(run_dir / impl, len(mine))
    for case in ran:
        if case in during and not same(before[case], during[case]):
            set_implementation(model, case[0])
            if not same(before[case], forward(model, inputs, case[1])):
                return ZooResult(entry.label, "skipped", f"forward not deterministic unwatched ({_case(case)})",
                                 impls)
            problems.append(f"{_case(case)} differs watched by {max_diff(before[case], during[case]):.3g}")
    status = "differs" if problems else "same"
    return ZooResult(entry.label, status, "; ".join(problems), [_case(c) for c in ran], maps, unwatched_s, watched_s)


def _count_maps(run_dir: Path, steps: int) -> int:
    import inspector

    try:
        reader = inspector.open_run(run_dir)
        return sum(len(reader.blob_rows(step=s)) for s in range(steps))
    except Exception:  # noqa: BLE001
        return 0


def _case(case: tuple[str, bool]) -> str:
    return f"{case[0]}/{'bf16' if case[1] else 'fp32'}"


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}"


# ---- running the zoo -----------------------------------------------------------------------------

def default_workers() -> int:
    """Worker processes for the zoo: `INSPECTOR_ZOO_WORKERS`, else one per core up to two."""
    return int(os.environ.get("INSPECTOR_ZOO_WORKERS") or min(2, os.cpu_count() or 1))


def run_zoo(entries: list[ZooEntry], root: Path, workers: int | None = None) -> dict[str, tuple[ZooResult, float]]:
    """Every entry's result and seconds, by label; in `workers` spawned processes (1: in this one).

    Each architecture imports its own modeling module and a watch patches transformers' attention
    lookup while it is open, so worker processes also keep the test process itself clean."""
    workers = default_workers() if workers is None else workers
    jobs = [(entry, root / f"{i:04d}") for i, entry in enumerate(entries)]
    if workers <= 1 or len(jobs) <= 1:
        import transformers

        logger, verbosity = logging.getLogger("inspector"), transformers.logging.get_verbosity()
        level, threads = logger.level, torch.get_num_threads()
        try:
            _quiet()
            return {entry.label: _timed(entry, run_dir) for entry, run_dir in jobs}
        finally:
            logger.setLevel(level)
            transformers.logging.set_verbosity(verbosity)
            torch.set_num_threads(threads)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_quiet) as pool:
        futures = {entry.label: pool.submit(_timed, entry, run_dir) for entry, run_dir in jobs}
        return {label: future.result() for label, future in futures.items()}


def _timed(entry: ZooEntry, run_dir: Path) -> tuple[ZooResult, float]:
    start = time.perf_counter()
    try:
        result = compare_watched(entry, run_dir)
    except Exception as exc:  # noqa: BLE001 - a harness failure is reported, not a crash of the whole zoo
        result = ZooResult(entry.label, "error", f"harness: {_short(exc)}")
    return result, time.perf_counter() - start


def _quiet() -> None:
    """One torch thread (tiny models; busy cores) and no transformers chatter."""
    import transformers

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    logging.getLogger("inspector").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
