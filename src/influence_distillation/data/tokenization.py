"""Rendering samples to token ids with completion-only labels, and padding them into batches.

Chat samples are rendered with the tokenizer's chat template. The loss spans are found by rendering each assistant
turn's prefix with ``add_generation_prompt=True``: the characters between that prefix and the rendering up to and
including the turn are the turn (content plus the template's end-of-turn marker). Tokens whose first character falls
in a loss span get labels; every other label is -100. When a tokenizer has no chat template, `FALLBACK_TEMPLATE`
("User: …", "Assistant: …<eos>") is used, unless the fallback is disabled.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from influence_distillation.data.packed import IGNORE_INDEX, Example, PackedExamples
from influence_distillation.data.records import Sample, trained_turns
from influence_distillation.errors import ModelError

log = logging.getLogger(__name__)


# Newlines are written as string literals: transformers renders templates with trim_blocks=True.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)


@dataclass
class TokenizedSet:
    """Tokenized samples that can be trained on, plus what was dropped and why."""

    examples: PackedExamples
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    num_truncated: int = 0

    @property
    def ids(self) -> Sequence[str]:
        return self.examples.ids

    def counts(self) -> dict[str, object]:
        reasons = Counter(reason for _, reason in self.excluded)
        return {
            "kept": len(self.examples),
            "truncated": self.num_truncated,
            "excluded": len(self.excluded),
            "excluded_by_reason": dict(reasons),
        }

    def save(self) -> None:
        """Write a folder-backed set's index and exclusions next to its columns."""
        self.examples.save()
        (self.examples.folder / "excluded.json").write_text(json.dumps(
            {"excluded": self.excluded, "truncated": self.num_truncated}))

    @classmethod
    def open(cls, folder: Path) -> TokenizedSet:
        """A set written by `save`."""
        stored = json.loads((folder / "excluded.json").read_text())
        return cls(PackedExamples.open(folder), [tuple(pair) for pair in stored["excluded"]], stored["truncated"])


def tokenize_samples(
    samples: Iterable[Sample], tokenizer, max_length: int, template_fallback: bool = True, desc: str = "tokenize",
    progress: bool = True, folder: Path | None = None, chunk: int = 256,
) -> TokenizedSet:
    """Tokenize samples (any iterable: a pool can stream from `iter_samples`), truncate them to `max_length` tokens,
    and drop those left with no trainable token. With a `folder`, the tokens go to files there (call `save` on the
    result to keep them) instead of memory. Texts are encoded `chunk` at a time (the fast tokenizer encodes a list
    on all cores)."""
    result = TokenizedSet(examples=PackedExamples(folder))
    total = len(samples) if isinstance(samples, Sized) else None
    bar = tqdm(samples, desc=desc, unit="sample", total=total, leave=False,
               disable=not progress or (total is not None and total < 2000))
    template, stream = None, iter(bar)
    while part := list(islice(stream, chunk)):
        usable = [sample for sample in part if not sample.excluded]
        if template is None and any(sample.messages is not None for sample in usable):
            template = chat_template(tokenizer, template_fallback)
        encoded = iter(_encode(usable, tokenizer, template))
        for sample in part:
            outcome = sample.excluded or next(encoded)
            if isinstance(outcome, str):  # why it cannot be trained on, from the reader or the chat template
                result.excluded.append((sample.id, outcome))
                continue
            input_ids, labels = outcome
            truncated = len(input_ids) > max_length
            input_ids, labels = input_ids[:max_length], labels[:max_length]
            # Position 0 is never predicted, so its label cannot carry loss.
            if not any(label != IGNORE_INDEX for label in labels[1:]):
                reason = "no trainable token after truncation" if truncated else "no trainable token"
                result.excluded.append((sample.id, reason))
                continue
            result.num_truncated += truncated
            result.examples.append(sample.id, input_ids, labels, truncated)
    return result


def _encode(samples: list[Sample], tokenizer, template: str | None) -> list[tuple[list[int], list[int]] | str]:
    """(input_ids, labels) of each sample: chat samples with labels on their assistant turns only, plain texts (with
    the tokenizer's special tokens) with labels everywhere; or why a sample cannot be rendered (the chat template
    refused it)."""
    encoded: list = [None] * len(samples)
    rendered = {}
    for i, sample in enumerate(samples):
        if sample.messages is not None:
            try:
                rendered[i] = render_chat(sample.messages, tokenizer, template)
            except TemplateRefusal as refusal:
                encoded[i] = str(refusal)
    chats, rendered = list(rendered), list(rendered.values())
    texts = [i for i, sample in enumerate(samples) if sample.messages is None]
    if chats:
        batch = tokenizer([text for text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
        for i, (_, spans), input_ids, offsets in zip(chats, rendered, batch["input_ids"], batch["offset_mapping"],
                                                     strict=True):
            encoded[i] = (input_ids, _span_labels(input_ids, offsets, spans))
    if texts:
        for i, input_ids in zip(texts, tokenizer([samples[i].text for i in texts], add_special_tokens=True)[
                "input_ids"], strict=True):
            encoded[i] = (input_ids, list(input_ids))
    return encoded


def _span_labels(input_ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Labels: a token's id where its first character falls in a loss span, else IGNORE_INDEX."""
    if not input_ids:
        return []
    ids, bounds = np.asarray(input_ids), np.asarray(offsets).reshape(-1, 2)
    start, nonempty = bounds[:, 0], bounds[:, 1] > bounds[:, 0]
    inside = np.zeros(len(ids), dtype=bool)
    for lo, hi in spans:
        inside |= (start >= lo) & (start < hi)
    return np.where(inside & nonempty, ids, IGNORE_INDEX).tolist()


def chat_template(tokenizer, template_fallback: bool) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    if not template_fallback:
        raise ModelError(
            "the tokenizer has no chat template; add one to tokenizer_config.json or allow the built-in "
            "fallback (DataConfig.template_fallback=True)"
        )
    return FALLBACK_TEMPLATE


class TemplateRefusal(Exception):
    """The tokenizer's chat template raised on a conversation (e.g. one that demands strictly alternating roles): the
    sample is excluded with this reason, not the run stopped."""


def render_turns(turns, tokenizer, template: str, generation_prompt: bool = False) -> str:
    """`turns` ((role, content) pairs) as the chat template writes them, with the assistant's generation prompt after
    them if asked; a template that raises becomes a `TemplateRefusal`."""
    if not turns and not generation_prompt:
        return ""
    conversation = [{"role": role, "content": content} for role, content in turns]
    try:
        return tokenizer.apply_chat_template(
            conversation, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as error:  # jinja2's TemplateError, or a template's raise_exception(): the template's word
        message = " ".join(str(error).split())[:200]
        raise TemplateRefusal(f"the chat template refused it ({type(error).__name__}: {message})") from None


def render_chat(messages: tuple[tuple[str, str], ...], tokenizer, template: str) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation; return the text and the character spans of its trained assistant turns (those after a
    user turn: `records.trained_turns`)."""

    def render(turns, generation_prompt=False) -> str:
        return render_turns(turns, tokenizer, template, generation_prompt)

    text = render(messages)
    spans = []
    for i in trained_turns(messages):
        content = messages[i][1]
        before = render(messages[:i], True)
        through = text if i == len(messages) - 1 else render(messages[: i + 1])
        if through.startswith(before) and text.startswith(through) and len(through) > len(before):
            spans.append((len(before), len(through)))
            continue
        # Templates that rewrite earlier turns break the prefix property; fall back to locating the content.
        content = content.strip()  # templates that rewrite turns often trim them too
        start = text.find(content, spans[-1][1] if spans else 0)
        if start < 0:
            raise TemplateRefusal(f"cannot locate assistant turn {i} in the chat-template rendering")
        spans.append((start, start + len(content)))
    return text, spans


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T): positions count real tokens only, so left padding changes nothing
    labels: torch.Tensor  # (B, T)
    last_index: torch.Tensor  # (B,): position of each row's last real token

    def to(self, device) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids, self.labels,
                                               self.last_index)))


def collate(examples: list[Example], pad_id: int, padding_side: str = "right") -> Batch:
    """Pad examples into one batch. Position ids ignore padding, so either side gives the same outputs."""
    width = max(len(example) for example in examples)
    shape = (len(examples), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example)
        cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
        input_ids[row, cols], labels[row, cols], mask[row, cols] = example.input_ids, example.labels, 1
        labels[row, cols.start] = IGNORE_INDEX  # a sequence's first token is never predicted, even after left padding
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    last_index = torch.where(mask.bool(), torch.arange(width), -1).max(dim=1).values
    return Batch(input_ids, mask, position_ids, labels, last_index)


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Group indices of similar length into batches (stable order), so padding wastes little compute."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def training_batches(lengths: list[int], batch_size: int, steps: int, rng) -> Iterator[list[int]]:
    """`steps` batches of indices for training: each epoch is a fresh random permutation, cut into windows of 16
    batches that are sorted by length before being split, so a batch holds samples of similar length (little
    padding) while batch order stays random."""
    produced, window = 0, 16 * batch_size
    while True:
        order = rng.permutation(len(lengths)).tolist()
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        for index in rng.permutation(len(batches)):
            yield batches[index]
            produced += 1
            if produced == steps:
                return
