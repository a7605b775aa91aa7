"""The project's own default model: a byte-level BPE tokenizer and a small random Llama.

Nothing is downloaded. ``build_default_model`` trains a tokenizer with the ``tokenizers``
library on the project's prompts and responses (plus a small built-in corpus, so it also
works with no texts at all), wraps it as a ``transformers`` fast tokenizer with pad/bos/eos
tokens and a chat template, builds a seeded, randomly initialised ``LlamaForCausalLM`` of a
few million parameters and writes both with ``save_pretrained``. The folder then loads like
any Hugging Face model folder::

    AutoTokenizer.from_pretrained(out_dir); AutoModelForCausalLM.from_pretrained(out_dir)

``load_model_and_tokenizer`` is the one loader the trainer (and the Django side) uses for any
local model folder: clear errors for a folder that does not load, pad token fixed with a
warning, PEFT adapter folders merged onto their base.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# Jinja chat template. Every turn is "<|role|>\n{content}</s>\n"; a generation prompt opens an
# assistant turn, which the model closes with </s> (its eos, so generate() stops there).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# A small built-in corpus so the tokenizer has ordinary English merges even with no texts.
BUILTIN_CORPUS = """\
The quick brown fox jumps over the lazy dog.
Human: Can you help me with something?
Assistant: Of course. What do you need help with?
Human: What is the capital of France?
Assistant: The capital of France is Paris.
Please answer the question as helpfully and honestly as you can.
I am sorry, but I cannot help with that request because it could cause harm.
Here is a short summary of the main points, followed by a few examples.
Thank you for asking. Let me explain it step by step.
First, read the instructions carefully. Second, write down what you know. Third, check your work.
Water boils at one hundred degrees Celsius at sea level.
The sun rises in the east and sets in the west.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 20 50 100 1000 2024.
Punctuation: , . ; : ! ? ' " ( ) [ ] { } - _ / \\ @ # $ % & * + = < > ~ `
A good answer is clear, correct, kind and short.
It is important to be safe, respectful and honest in every conversation.
Would you like to know more about this topic, or should we talk about something else?
Yes. No. Maybe. I do not know. That is a great question!
def add(a, b):
    return a + b
""".splitlines()


def _special_tokens() -> list[str]:
    return [PAD, BOS, EOS, UNK, *ROLE_TOKENS]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer; returns a ``PreTrainedTokenizerFast``.

    Byte-level means every string is encodable (no unknown tokens). ``tokenizer(text)`` adds a
    leading ``<s>``; the chat template adds it too (``apply_chat_template`` adds no special tokens).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=_special_tokens(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def corpus():
        yield from BUILTIN_CORPUS
        for text in texts:
            if text:
                yield text

    tok.train_from_iterator(corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
        padding_side="right",
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def llama_config(tokenizer, hidden: int = 256, layers: int = 4, heads: int | None = None,
                 intermediate: int | None = None, max_positions: int = 2048, tie_embeddings: bool = True):
    """A small Llama config matched to ``tokenizer``'s vocabulary and special tokens."""
    from transformers import LlamaConfig

    heads = heads or max(1, hidden // 64)
    if hidden % heads:
        raise ValueError(f"hidden={hidden} is not divisible by heads={heads}")
    intermediate = intermediate or int(8 * hidden / 3 / 32 + 0.999) * 32  # Llama's ~8/3 ratio, multiple of 32
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0,
    )


def build_default_model(
    out_dir: str | os.PathLike,
    texts: Iterable[str] = (),
    vocab_size: int = 4096,
    hidden: int = 256,
    layers: int = 4,
    heads: int | None = None,
    intermediate: int | None = None,
    max_positions: int = 2048,
    seed: int = 0,
    tie_embeddings: bool = True,
) -> Path:
    """Train the tokenizer on ``texts`` (+ the built-in corpus), build a seeded random Llama,
    ``save_pretrained`` both into ``out_dir`` and return it as a ``Path``.

    The defaults (hidden 256, 4 layers, tied embeddings, up to 4096 tokens) give 3,213,568
    parameters plus 256 per token the tokenizer learns: 4,262,144 (4.26M) when ``texts`` fill the
    4096-token vocabulary (e.g. HH-RLHF's dev slice), 3,583,232 on the demo project's texts (1,444
    tokens). It trains at a few steps per second on a laptop CPU.
    """
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    config = llama_config(tokenizer, hidden=hidden, layers=layers, heads=heads, intermediate=intermediate,
                          max_positions=max_positions, tie_embeddings=tie_embeddings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=64,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "prefloop_model.json").write_text(json.dumps({
        "built_by": "training.tiny_model.build_default_model",
        "vocab_size": len(tokenizer), "hidden": hidden, "layers": layers, "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
    }, indent=2))
    return out


class ModelLoadError(ValueError):
    """A model folder that does not load (missing, not a Hugging Face folder, broken weights)."""


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer from a local folder; a missing pad token becomes eos, with a warning."""
    from transformers import AutoTokenizer

    path = Path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one clear error
        raise ModelLoadError(f"could not load a tokenizer from {path}: {type(exc).__name__}: {exc}") from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"the tokenizer in {path} has neither a pad token nor an eos token")
        warnings.warn(
            f"the tokenizer in {path} has no pad token; using its eos token {tokenizer.eos_token!r} as pad",
            stacklevel=2,
        )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(path: str | os.PathLike, dtype=None, attn_implementation: str | None = "sdpa",
                             merge_adapter: bool = True):
    """Load ``(model, tokenizer)`` from a local Hugging Face folder, validating it.

    * ``ModelLoadError`` (a ``ValueError``) with the reason when the folder is missing, has no
      ``config.json``/``adapter_config.json``, or its weights or tokenizer do not load.
    * A tokenizer without a pad token gets ``pad = eos`` and a ``UserWarning``.
    * A PEFT adapter folder (``adapter_config.json``) is loaded on top of its base model (a local
      folder named by ``base_model_name_or_path``) and merged when ``merge_adapter``.
    * ``dtype`` defaults to float32 (the folder's dtype is ignored) so training is predictable.
    Never reaches the network (``local_files_only=True``).
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"model folder {path} does not exist or is not a directory")
    dtype = dtype or torch.float32
    kwargs = {"local_files_only": True, "dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation

    adapter_cfg = path / "adapter_config.json"
    if adapter_cfg.exists() and not (path / "config.json").exists():
        try:
            base_path = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"{adapter_cfg} is not a valid PEFT adapter config: {exc}") from exc
        if not base_path or not Path(base_path).is_dir():
            raise ModelLoadError(f"adapter {path} names base model {base_path!r}, "
                                 f"which is not a local folder")
        model, base_tokenizer = load_model_and_tokenizer(base_path, dtype=dtype,
                                                         attn_implementation=attn_implementation)
        try:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
            if merge_adapter:
                model = model.merge_and_unload()
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(
                f"could not load the PEFT adapter in {path}: {type(exc).__name__}: {exc}") from exc
        has_tokenizer = any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer = load_tokenizer(path) if has_tokenizer else base_tokenizer
        return model, tokenizer

    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} is not a Hugging Face model folder (no config.json)")
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"could not load a causal LM from {path}: {type(exc).__name__}: {exc}") from exc
    if model.config.pad_token_id is None or model.config.pad_token_id != tokenizer.pad_token_id:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
