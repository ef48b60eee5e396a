"""Word-level tokenizer with GPT-style leading-space tokens, byte fallback and the LaRA special tokens.

Why not BPE: the scratch backbone trains from scratch on templated Meta-World instructions and CoT strings
("Subtask: move toward the puck BBox: [0.12 0.34 0.56 0.78] Reasoning: globally ..., locally ..."), so a fixed,
built-in word vocabulary gives short sequences and checkpoints that never depend on a trained tokenizer file.

Pre-tokenisation splits text into pieces: an optional leading space plus a run of ASCII letters, an optional
leading space plus one digit or one punctuation character, or one whitespace character. A piece that is in the
vocabulary is one token ("puck" and " puck" are different tokens, as in GPT-2); any other piece becomes its
UTF-8 bytes (256 byte tokens), so `decode(encode(s)) == s` for every string.

Id layout (stable for a given `num_action_bins` and `extra_words`):
    [specials (8)] [<act_0> .. <act_{n-1}>] [<0x00> .. <0xFF>] [words ...]
Special tokens (LaRA §1.2, Coconut §4): <pad> <bos> <eos> <start_of_thinking> <thinking> <end_of_thinking>
<img_next> <query> (RD-VLA latent/query token).

`HFTokenizer` is the same interface over a transformers tokenizer (the "hf" and "hf_vlm" backbones), with these
special and action tokens added to its vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

SPECIAL_TOKENS = (
    "<pad>",
    "<bos>",
    "<eos>",
    "<start_of_thinking>",
    "<thinking>",
    "<end_of_thinking>",
    "<img_next>",
    "<query>",
)

# Words of Meta-World-style instructions (the 50 v3 tasks) and of our CoT templates (subtask verbs, objects,
# directions, "globally"/"locally" reasoning, gripper phrases). Anything missing still round-trips via bytes.
_BASE_WORDS = """
a an the to of and or with in into on onto out off from at by for up down over under toward towards through is
are be it its this that then than until while as so not no yes all subtask bbox BBox reasoning action task
instruction robot arm hand gripper fingers finger target object goal globally locally move moving moves reach
reaching approach approaching grasp grasping grab pick picking picked place placing put lift lifting lower
lowering raise hold holding carry carrying transport transporting release releasing drop retract retracting
push pushing pull pulling press pressing slide sliding turn turning rotate rotating open opening close closing
insert inserting unplug plug lock unlock sweep sweeping hit hammer hammering kick shoot dunk throw stack
unstack assemble disassemble align keep stay stop wait finish done forward backward backwards left right up
down upward upwards downward downwards lower higher high low front back side top bottom center middle near far
above below behind beside between across around inside outside closer further away along straight slightly
fast slow small large big full partially open opened closed close empty grasped gripped aligned contact
touching reached lifted placed puck block cube ball basketball hoop basket bin box lid button coffee machine
mug cup dial door drawer faucet handle lever peg hole nail plank plate shelf soccer goal stick thermos window
wall table sink knob nut wrench screw ring tool cabinet top-down topdown region area position location pose x
y z xyz axis height distance direction red green blue yellow black white gray grey now please next first again
onto still already target position
""".split()  # noqa: SIM905 (a word list reads better as text)

_PUNCTUATION = tuple("[]:.,-@'/()!?;_\"+=<>*#%&")
_DIGITS = tuple("0123456789")

# One piece = optional space + letters | optional space + one digit/punct char | one whitespace char.
_PIECE = re.compile(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]|\s")


def _word_variants(words: Iterable[str]) -> list[str]:
    """Every piece of every word with and without a leading space (letters also capitalised), in order."""
    out: dict[str, None] = {}
    for w in words:
        # Multi-piece words (e.g. "top-down") are split the way pre-tokenisation would split them.
        for piece in _PIECE.findall(w):
            p = piece.strip()
            if not p:
                continue
            for form in (p, p.capitalize()) if p.isalpha() else (p,):
                out.setdefault(form, None)
                out.setdefault(" " + form, None)
    return list(out)


class Tokenizer:
    """Fixed-vocabulary word tokenizer; `encode(str) -> list[int]`, `decode(list[int]) -> str`, special ids."""

    def __init__(self, extra_words: Sequence[str] = (), num_action_bins: int = 256) -> None:
        if num_action_bins < 1:
            raise ValueError(f"num_action_bins must be >= 1, got {num_action_bins}.")
        if isinstance(extra_words, str):
            raise TypeError("extra_words must be a sequence of words, not one string; use extra_words=[...].")
        self.extra_words = tuple(extra_words)
        self.num_action_bins = num_action_bins
        specials = list(SPECIAL_TOKENS) + [f"<act_{i}>" for i in range(num_action_bins)]
        self._byte_offset = len(specials)
        pieces = [
            " ",
            "\n",
            *_DIGITS,
            *(" " + d for d in _DIGITS),
            *_PUNCTUATION,
            *(" " + p for p in _PUNCTUATION),
        ]
        words = _word_variants([*_BASE_WORDS, *self.extra_words])
        vocab: dict[str, None] = dict.fromkeys(pieces)
        vocab.update(dict.fromkeys(words))
        self._words = list(vocab)
        self._word_offset = self._byte_offset + 256
        self._word_to_id = {w: self._word_offset + i for i, w in enumerate(self._words)}
        self._special_to_id = {t: i for i, t in enumerate(specials)}
        self._id_to_special = specials
        # Decoding table: bytes for every non-special id (bytes first, then words).
        self._id_bytes = [bytes([b]) for b in range(256)] + [w.encode() for w in self._words]

    # ---- encode / decode ---------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids for `text` (no special tokens are added or parsed: "<eos>" in text is plain text)."""
        ids: list[int] = []
        for piece in _PIECE.findall(text):
            tid = self._word_to_id.get(piece)
            if tid is not None:
                ids.append(tid)
            elif piece[0] == " " and len(piece) > 1 and piece[1:] in self._word_to_id:
                ids += [self._word_to_id[" "], self._word_to_id[piece[1:]]]
            else:
                ids += [self._byte_offset + b for b in piece.encode()]
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text for `ids`; special tokens are dropped (or rendered as their names with skip_special=False)."""
        buf = bytearray()
        out: list[str] = []
        for tid in ids:
            tid = int(tid)
            if tid < 0 or tid >= self.vocab_size:
                raise ValueError(f"Token id {tid} is outside the vocabulary [0, {self.vocab_size}).")
            if tid < self._byte_offset:
                if not skip_special:
                    out.append(buf.decode(errors="replace"))
                    buf.clear()
                    out.append(self._id_to_special[tid])
                continue
            buf += self._id_bytes[tid - self._byte_offset]
        out.append(buf.decode(errors="replace"))
        return "".join(out)

    def token_to_id(self, token: str) -> int:
        """Id of a special token name or of a vocabulary piece (e.g. "<img_next>", " puck")."""
        if token in self._special_to_id:
            return self._special_to_id[token]
        if token in self._word_to_id:
            return self._word_to_id[token]
        raise KeyError(f"{token!r} is not a single token; use encode() for arbitrary text.")

    # ---- special ids -------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._word_offset + len(self._words)

    @property
    def pad_id(self) -> int:
        return self._special_to_id["<pad>"]

    @property
    def bos_id(self) -> int:
        return self._special_to_id["<bos>"]

    @property
    def eos_id(self) -> int:
        return self._special_to_id["<eos>"]

    @property
    def start_thinking_id(self) -> int:
        return self._special_to_id["<start_of_thinking>"]

    @property
    def thinking_id(self) -> int:
        return self._special_to_id["<thinking>"]

    @property
    def end_thinking_id(self) -> int:
        return self._special_to_id["<end_of_thinking>"]

    @property
    def img_next_id(self) -> int:
        return self._special_to_id["<img_next>"]

    @property
    def query_id(self) -> int:
        return self._special_to_id["<query>"]

    @property
    def action_token_ids(self) -> range:
        """Contiguous ids of <act_0> .. <act_{num_action_bins-1}>: bin b has id `action_token_ids[b]`."""
        return range(len(SPECIAL_TOKENS), len(SPECIAL_TOKENS) + self.num_action_bins)

    @property
    def special_ids(self) -> tuple[int, ...]:
        """All non-action special ids."""
        return tuple(range(len(SPECIAL_TOKENS)))

    # ---- serialisation -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"type": "word", "extra_words": list(self.extra_words), "num_action_bins": self.num_action_bins}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tokenizer:
        if d.get("type", "word") != "word":
            raise ValueError(f"Tokenizer.from_dict got type {d.get('type')!r}; expected 'word'.")
        return cls(extra_words=d.get("extra_words", ()), num_action_bins=d.get("num_action_bins", 256))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, num_action_bins={self.num_action_bins})"


class HFTokenizer:
    """Our tokenizer interface over a transformers tokenizer, with our special and action tokens added."""

    def __init__(self, hf_tokenizer: Any, num_action_bins: int) -> None:
        self.hf = hf_tokenizer
        self.num_action_bins = num_action_bins
        actions = [f"<act_{i}>" for i in range(num_action_bins)]
        before = len(self.hf)
        self.hf.add_tokens([*SPECIAL_TOKENS, *actions], special_tokens=True)
        ids = self.hf.convert_tokens_to_ids([*SPECIAL_TOKENS, *actions])
        self._special = dict(zip(SPECIAL_TOKENS, ids))
        first = ids[len(SPECIAL_TOKENS)]
        if ids[len(SPECIAL_TOKENS) :] != list(range(first, first + num_action_bins)):
            raise ValueError(
                "The HF tokenizer did not give the action tokens contiguous ids; use a fresh tokenizer."
            )
        self.action_token_ids = range(first, first + num_action_bins)
        self.vocab_size = len(self.hf)
        self.base_vocab = before  # the pretrained tokenizer's length: ids below it have trained rows
        self.new_token_ids = list(range(before, len(self.hf)))  # rows added to the embedding
        for name, attr in zip(
            SPECIAL_TOKENS,
            ("pad", "bos", "eos", "start_thinking", "thinking", "end_thinking", "img_next", "query"),
        ):
            setattr(self, f"{attr}_id", self._special[name])
        self.special_ids = tuple(ids[: len(SPECIAL_TOKENS)])

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Any, skip_special: bool = True) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)
