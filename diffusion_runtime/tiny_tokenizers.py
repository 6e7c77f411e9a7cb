"""Tokenizers for the tiny models, trained here on a small fixed corpus (no pretrained vocabulary can be downloaded)
and wrapped in the transformers class each pipeline expects: CLIP's BPE (FLUX), T5's Unigram (FLUX, Wan) and a
byte-level BPE with LLaDA's special tokens and chat template. Each is reproducible: the same files every build."""

from __future__ import annotations

import json
import string
from typing import Any

# A fixed corpus: prompt-like English so that typical test prompts tokenize into real pieces.
_CORPUS: tuple[str, ...] = (
    "a photo of a cat sitting on a red sofa in the living room",
    "a small dog running on the beach at sunset, cinematic lighting",
    "an astronaut riding a horse on the moon, highly detailed, 4k",
    "a watercolor painting of a mountain lake with pine trees",
    "a futuristic city at night with neon lights and flying cars",
    "a bowl of fresh fruit on a wooden table, soft morning light",
    "portrait of an old man with a white beard, black and white photo",
    "a red car driving through a forest road in autumn",
    "a cup of coffee next to a laptop on a desk",
    "the ocean waves crashing against the rocks during a storm",
    "a panda eating bamboo in the snow, slow motion video",
    "a timelapse of clouds moving over green hills",
    "a robot playing chess with a child in a park",
    "a bird flying over a field of yellow flowers",
    "an oil painting of a ship sailing across the sea",
    "a close up of a blue eye with long eyelashes",
    "the camera slowly zooms in on a glowing crystal",
    "a train crossing a bridge over a river in the mountains",
    "a girl reading a book under a tree, studio ghibli style",
    "a bright kitchen with white walls and plants by the window",
    "User: What is the capital of France? Assistant: The capital of France is Paris.",
    "User: Write a short poem about the sea. Assistant: The sea is blue and wide and deep.",
    "Hello! How can I help you today? Please answer the question step by step.",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9",
    "Diffusion models generate images, videos and text by removing noise step by step.",
    "A masked language model predicts the missing words in a sentence.",
    "Tell me a story about a dragon who learns to fly again.",
    "Translate to French: good morning, thank you, see you tomorrow.",
    "What is two plus three? Two plus three is five.",
    "Summarize: the meeting was moved to Monday because of the holiday.",
)


def _corpus() -> list[str]:
    # The character lines make every printable ASCII character a known piece, so no prompt maps to <unk>.
    return [*_CORPUS, string.ascii_letters, string.digits + string.punctuation]


def train_clip_tokenizer(num_merges: int = 300) -> Any:
    """A ``CLIPTokenizer`` whose BPE vocab and merges are trained here.

    CLIPTokenizer rebuilds its pipeline from ``vocab``/``merges`` (lowercasing, a regex split, byte-level,
    atomic ``x</w>`` symbols for word ends), so words are cut with exactly that pipeline. The trainer's own
    ``end_of_word_suffix`` is not used: it numbers the ``x</w>`` symbols in hash-map order, which reorders
    equal-count merges from run to run. Instead a word's last character is swapped for a private-use
    stand-in of its ``x</w>`` symbol, so the whole alphabet is known (and sorted) up front, and the
    stand-ins are mapped back to ``x</w>`` afterwards.
    """
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import CLIPTokenizer

    bos, eos = "<|startoftext|>", "<|endoftext|>"
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    word_end = {c: chr(0xE000 + i) for i, c in enumerate(alphabet)}  # Unicode private-use area
    restore = {stand_in: c + "</w>" for c, stand_in in word_end.items()}

    def unmark(piece: str) -> str:
        return piece[:-1] + restore[piece[-1]] if piece[-1] in restore else piece

    template = CLIPTokenizer().backend_tokenizer
    words = [
        word[:-1] + word_end[word[-1]]
        for line in _corpus()
        for word, _ in template.pre_tokenizer.pre_tokenize_str(template.normalizer.normalize_str(line))
    ]
    tok = Tokenizer(BPE())  # no pre-tokenizer: every item is already one word
    trainer = trainers.BpeTrainer(
        vocab_size=2 * len(alphabet) + num_merges,
        initial_alphabet=[*alphabet, *word_end.values()],
        show_progress=False,
    )
    tok.train_from_iterator(words, trainer=trainer)
    merges = [(unmark(left), unmark(right)) for left, right in _bpe_merges(tok)]
    # CLIP's vocab layout: bytes, bytes + </w>, merge results in merge order, then the special tokens.
    pieces = [*alphabet, *restore.values(), *(left + right for left, right in merges), bos, eos]
    vocab = {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _bpe_merges(tok: Any) -> list[tuple[str, str]]:
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]


def train_t5_tokenizer(vocab_size: int = 400, model_max_length: int = 512) -> Any:
    """A ``T5Tokenizer`` (= ``T5TokenizerFast``) with a Unigram vocab trained here.

    T5Tokenizer rebuilds its pipeline from ``(piece, score)`` pairs and expects ``<pad>``, ``</s>``,
    ``<unk>`` at ids 0, 1, 2; training uses its own Metaspace pre-tokenization. The trainer's output varies
    from run to run, so its scores are canonicalised to make the vocab (hence which embedding row is which
    piece) reproducible. No sentinel (``<extra_id_*>``) tokens: the
    encoders only encode prompts.
    """
    from tokenizers import Tokenizer, trainers
    from tokenizers.models import Unigram
    from transformers import T5Tokenizer

    specials = ["<pad>", "</s>", "<unk>"]
    template = T5Tokenizer(extra_ids=0).backend_tokenizer
    tok = Tokenizer(Unigram())
    tok.pre_tokenizer = template.pre_tokenizer
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        unk_token="<unk>",
        initial_alphabet=list(string.printable.strip()),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    trained = json.loads(tok.to_str())["model"]["vocab"]
    scores = {piece: float(score) for piece, score in trained if piece not in specials}
    vocab = [(piece, 0.0) for piece in specials] + _canonical_unigram_scores(scores)
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def _canonical_unigram_scores(scores: dict[str, float], tolerance: float = 1e-3) -> list[tuple[str, float]]:
    """Snap near-equal scores to one value, then order pieces by (score, piece).

    The Unigram trainer gives characters it must keep but did not learn made-up scores 1e-4 apart, in
    hash-map order, and its other scores differ from run to run in the last bits. Only the sorted scores
    are reproducible, so pieces whose scores chain within ``tolerance`` share the score of the group's
    best; that removes both kinds of noise at a negligible cost in tokenization.
    """
    snapped: dict[str, float] = {}
    level = previous = None
    for piece, score in sorted(scores.items(), key=lambda ps: -ps[1]):
        if previous is None or previous - score > tolerance:
            level = round(score, 4)
        snapped[piece] = level
        previous = score
    return sorted(snapped.items(), key=lambda ps: (-ps[1], ps[0]))


_LLADA_SPECIALS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|eot_id|>",
    "pad_token": "<|endoftext|>",
    "mask_token": "<|mdm_mask|>",
    "unk_token": "<|unk|>",
}
_LLADA_ROLE_TOKENS = ("<|start_header_id|>", "<|end_header_id|>")

# LLaDA-8B-Instruct's template (Llama-3 layout), with a default system prompt left out.
_LLADA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim }}"
    "{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def train_llada_tokenizer(vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer with LLaDA's special tokens and chat template.

    Byte-level so any text round-trips (no unknown tokens in generated answers); the roles and masks are
    special tokens so the template and the mask never get split.
    """
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    specials = [*_LLADA_SPECIALS.values(), *_LLADA_ROLE_TOKENS]
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **_LLADA_SPECIALS,
        additional_special_tokens=list(_LLADA_ROLE_TOKENS),
        chat_template=_LLADA_CHAT_TEMPLATE,
        model_max_length=4096,
        padding_side="left",
    )
