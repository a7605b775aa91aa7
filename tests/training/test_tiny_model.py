"""training.tiny_model: the project's own default model builds, reloads and generates offline."""
import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.tiny_model import ModelLoadError, build_default_model, load_model_and_tokenizer

TEXTS = ["Human: What is the capital of France?\n\nAssistant: Paris.", "The cat sat on the mat."] * 10

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_default_model(tmp_path_factory.mktemp("tiny") / "model", TEXTS, vocab_size=600, hidden=64,
                               layers=2)


def test_builds_loads_and_generates(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    assert tok.pad_token and tok.eos_token and tok.bos_token
    assert model.config.model_type == "llama"
    n_params = sum(p.numel() for p in model.parameters())
    assert 50_000 < n_params < 5_000_000
    ids = tok("The cat", return_tensors="pt")
    assert ids["input_ids"][0, 0].item() == tok.bos_token_id
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert isinstance(tok.decode(out[0], skip_special_tokens=True), str)
    # the text round-trips through the byte-level tokenizer, including unseen characters
    text = "Grüße, 東京! ¿qué?"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_chat_template(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    msgs = [{"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == "<s><|user|>\nHi</s>\n<|assistant|>\n"
    prompt_ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "Hello"}], tokenize=True,
                                   return_dict=True)["input_ids"]
    assert full[:len(prompt_ids)] == prompt_ids  # the prompt is a prefix: responses split cleanly
    assert tok.convert_tokens_to_ids("<|assistant|>") in prompt_ids


def test_same_seed_same_weights(tmp_path):
    a = build_default_model(tmp_path / "a", TEXTS, vocab_size=300, hidden=32, layers=1, seed=3)
    b = build_default_model(tmp_path / "b", TEXTS, vocab_size=300, hidden=32, layers=1, seed=3)
    ma, _ = load_model_and_tokenizer(a)
    mb, _ = load_model_and_tokenizer(b)
    for (na, pa), (nb, pb) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)


def test_load_errors(tmp_path, model_dir):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model_and_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model_and_tokenizer(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="could not load"):
        load_model_and_tokenizer(broken)


def test_missing_pad_token_becomes_eos(tmp_path, model_dir):
    nopad = tmp_path / "nopad"
    shutil.copytree(model_dir, nopad)
    cfg_path = nopad / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("pad_token", None)
    cfg_path.write_text(json.dumps(cfg))
    tok_json = json.loads((nopad / "tokenizer.json").read_text())
    (nopad / "tokenizer.json").write_text(json.dumps(tok_json))
    with pytest.warns(UserWarning, match="no pad token"):
        model, tok = load_model_and_tokenizer(nopad)
    assert tok.pad_token == tok.eos_token
    assert model.config.pad_token_id == tok.eos_token_id
