import pytest
import torch
from conftest import make_tokenizer, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from influence_distillation.data.records import Sample, load_samples
from influence_distillation.data.tokenization import (
    IGNORE_INDEX,
    Example,
    collate,
    length_batches,
    render_chat,
    tokenize_samples,
)
from influence_distillation.errors import ModelError


def chat(*turns, sample_id="x"):
    return Sample(sample_id, {}, tuple(turns), None)


def labelled_text(tokenizer, example):
    keep = example.labels != IGNORE_INDEX
    assert torch.equal(example.labels[keep], example.input_ids[keep])
    return tokenizer.decode(example.input_ids[keep])


def test_only_assistant_turns_carry_loss(tokenizer):
    sample = chat(("system", "Be brief."), ("user", "What is 2 plus 2?"), ("assistant", "2 plus 2 is 4."),
                  ("user", "And 3 plus 3?"), ("assistant", "3 plus 3 is 6."))
    (example,) = tokenize_samples([sample], tokenizer, max_length=512).examples
    text = tokenizer.decode(example.input_ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert labelled_text(tokenizer, example) == "2 plus 2 is 4.<|im_end|>\n3 plus 3 is 6.<|im_end|>\n"
    # Every prompt token is masked: the unmasked positions are exactly the two assistant spans.
    rendered, spans = render_chat(sample.messages, tokenizer, tokenizer.chat_template)
    assert [rendered[a:b] for a, b in spans] == ["2 plus 2 is 4.<|im_end|>\n", "3 plus 3 is 6.<|im_end|>\n"]


def test_fallback_template_and_refusal_without_it():
    tokenizer = make_tokenizer(chat_template=False)
    sample = chat(("user", "Hi"), ("assistant", "Hello there."))
    (example,) = tokenize_samples([sample], tokenizer, max_length=512).examples
    assert tokenizer.decode(example.input_ids) == "User: Hi\n\nAssistant: Hello there.<|endoftext|>\n\n"
    assert labelled_text(tokenizer, example) == "Hello there.<|endoftext|>\n\n"
    with pytest.raises(ModelError, match="no chat template"):
        tokenize_samples([sample], tokenizer, max_length=512, template_fallback=False)


def test_text_records_train_on_every_token(tokenizer):
    (example,) = tokenize_samples([Sample("t", {}, None, "The sky looked red today.")], tokenizer, 512).examples
    assert torch.equal(example.labels, example.input_ids)


def test_truncation_is_counted_and_empty_samples_are_excluded(tokenizer):
    long_prompt = chat(("user", "Write a short sentence about the color red. " * 20), ("assistant", "Red."))
    fine = chat(("user", "Hi"), ("assistant", "The capital is Paris."), sample_id="fine")
    fits = len(tokenize_samples([fine], tokenizer, 512).examples[0])
    result = tokenize_samples([long_prompt, fine], tokenizer, max_length=fits)
    assert result.ids == ["fine"] and result.num_truncated == 0
    assert result.excluded == [("x", "no trainable token after truncation")]
    long_answer = chat(("user", "Hi"), ("assistant", "The capital is Paris. " * 20))
    result = tokenize_samples([long_answer], tokenizer, max_length=fits)
    assert result.num_truncated == 1 and len(result.examples[0]) == fits
    assert result.counts()["excluded"] == 0


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_pads_and_finds_last_real_token(side):
    examples = [Example(str(n), torch.arange(1, n + 1), torch.arange(1, n + 1), False) for n in (3, 5)]
    batch = collate(examples, pad_id=0, padding_side=side)
    assert batch.input_ids.shape == (2, 5)
    assert batch.attention_mask.sum(1).tolist() == [3, 5]
    for row, n in enumerate((3, 5)):
        real = batch.attention_mask[row].bool()
        assert batch.input_ids[row, real].tolist() == list(range(1, n + 1))
        assert batch.position_ids[row, real].tolist() == list(range(n))
        assert batch.input_ids[row, batch.last_index[row]] == n
        assert (batch.labels[row, ~real] == IGNORE_INDEX).all()


def test_length_batches_group_similar_lengths_and_cover_everything():
    batches = length_batches([5, 1, 9, 2, 5, 7], 2)
    assert batches == [[1, 3], [0, 4], [5, 2]]


def test_training_batches_cover_each_epoch_and_group_lengths():
    import numpy as np

    from influence_distillation.data.tokenization import training_batches

    lengths = list(np.random.default_rng(0).integers(1, 500, size=100))
    batches = list(training_batches(lengths, 4, steps=50, rng=np.random.default_rng(1)))
    assert len(batches) == 50
    first_epoch = [i for batch in batches[:25] for i in batch]
    assert sorted(first_epoch) == list(range(100))
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 100  # random batches of 4 from U(1, 500) would spread by ~300


def test_packed_examples_give_back_each_sample_as_tokenized(tokenizer):
    from influence_distillation.data.tokenization import PackedExamples

    rng = torch.Generator().manual_seed(0)
    rows = []
    packed = PackedExamples()
    for i in range(7):
        length = int(torch.randint(2, 40, (1,), generator=rng))
        ids = torch.randint(0, 50_000, (length,), generator=rng)
        labels = torch.where(torch.rand(length, generator=rng) < 0.5, torch.full_like(ids, IGNORE_INDEX), ids)
        rows.append((f"s{i}", ids, labels, i % 2 == 0))
        packed.append(f"s{i}", ids.tolist(), labels.tolist(), i % 2 == 0)
    assert len(packed) == 7 and packed.ids == [r[0] for r in rows]
    for index in (*range(7), -1):
        example, (sample_id, ids, labels, truncated) = packed[index], rows[index]
        assert (example.id, example.truncated) == (sample_id, truncated)
        assert example.input_ids.dtype == torch.long and torch.equal(example.input_ids, ids)
        assert torch.equal(example.labels, labels)
    assert [e.id for e in packed[2:5]] == ["s2", "s3", "s4"] and [e.id for e in packed] == packed.ids
    with pytest.raises(IndexError):
        packed[7]


def test_packed_examples_in_files_equal_those_in_memory_and_reopen(tmp_path):
    from influence_distillation.data.packed import PackedExamples, content_digest

    rng = torch.Generator().manual_seed(1)
    memory, files = PackedExamples(), PackedExamples(tmp_path)
    for i in range(300):
        length = int(torch.randint(2, 30, (1,), generator=rng))
        ids = torch.randint(0, 50_000, (length,), generator=rng).tolist()
        labels = [IGNORE_INDEX if j % 3 == 0 else token for j, token in enumerate(ids)]
        for packed in (memory, files):
            packed.append(f"sample-{i}-é", ids, labels, i % 7 == 0)
        if i == 150:  # reads while appending see what was written so far
            assert torch.equal(files[150].input_ids, memory[150].input_ids)
    files.save()
    reopened = PackedExamples.open(tmp_path)
    for packed in (files, reopened):
        assert len(packed) == 300 and packed.ids == memory.ids and list(packed.ids[290:]) == list(memory.ids[290:])
        assert (packed.total_tokens, packed.completion_tokens) == (memory.total_tokens, memory.completion_tokens)
        assert packed.total_tokens == sum(len(e) for e in memory)
        assert packed.completion_tokens == sum(int((e.labels[1:] != IGNORE_INDEX).sum()) for e in memory)
        assert packed.lengths().tolist() == [len(e) for e in memory]
        for index in (0, 17, 299, -1):
            a, b = packed[index], memory[index]
            assert (a.id, a.truncated) == (b.id, b.truncated)
            assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
            assert packed.digests[index % 300] == content_digest(b.input_ids, b.labels)
    assert len(set(reopened.digests)) == 300


def test_a_tokenized_folder_is_complete_or_absent(tmp_path, tokenizer):
    from influence_distillation.run.shards import tokenized_in

    samples = [chat(("user", f"Question {i}?"), ("assistant", f"Answer {i}."), sample_id=f"q{i}") for i in range(5)]
    empty = Sample("empty", {}, (("user", "x" * 50), ("assistant", "y")), None)
    folder = tmp_path / "tokens"

    def failing(staging):
        tokenize_samples(samples[:3], tokenizer, 512, folder=staging)
        raise RuntimeError("killed while tokenizing")

    with pytest.raises(RuntimeError):
        tokenized_in(folder, failing)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its staging copy is left
    made, reused = tokenized_in(folder, lambda staging: tokenize_samples([*samples, empty], tokenizer, 12,
                                                                         folder=staging))
    again, reused_again = tokenized_in(folder, lambda staging: pytest.fail("tokenized twice"))
    direct = tokenize_samples([*samples, empty], tokenizer, 12)
    assert (reused, reused_again) == (False, True) and [p.name for p in tmp_path.iterdir()] == ["tokens"]
    for tokenized in (made, again):
        assert tokenized.ids == direct.ids and tokenized.excluded == direct.excluded
        assert tokenized.num_truncated == direct.num_truncated and tokenized.counts() == direct.counts()
        assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(tokenized.examples, direct.examples))


def test_chunked_encoding_keeps_order_and_labels_of_a_mixed_stream(tokenizer):
    """Texts are encoded a chunk at a time (chat and plain samples apart); every sample must keep its own tokens and
    labels, in stream order, whatever the chunk boundaries."""
    samples = [chat(("user", f"Question {i}?" + " More." * (i % 4)), ("assistant", f"Answer {i}."), sample_id=f"c{i}")
               for i in range(7)]
    samples[2:2] = [Sample("t0", {}, None, "Plain text, every token trains.")]
    samples[5:5] = [chat(("user", "Only a prompt " * 80), ("assistant", "cut"), sample_id="cut")]  # excluded
    expected = [tokenize_samples([sample], tokenizer, 120) for sample in samples]  # one at a time
    for size in (1, 2, 3, 256):
        result = tokenize_samples(iter(samples), tokenizer, 120, chunk=size)  # a stream, as a pool is read
        assert result.excluded == [("cut", "no trainable token after truncation")]
        kept = [e for alone in expected for e in alone.examples]
        assert result.ids == [e.id for e in kept] == [s.id for s in samples if s.id != "cut"]
        for got, want in zip(result.examples, kept, strict=True):
            assert torch.equal(got.input_ids, want.input_ids) and torch.equal(got.labels, want.labels)
    for sample, example in zip([s for s in samples if s.id != "cut"], result.examples, strict=True):
        if sample.messages is None:
            assert torch.equal(example.labels, example.input_ids)
        else:  # the labelled tokens are exactly the assistant turn as the template renders it
            rendered, spans = render_chat(sample.messages, tokenizer, tokenizer.chat_template)
            assert labelled_text(tokenizer, example) == "".join(rendered[a:b] for a, b in spans)


def test_an_opening_assistant_turn_is_context_and_not_trained(tokenizer):
    sample = chat(("assistant", "...as I was saying."), ("user", "Go on."), ("assistant", "Next point."))
    (example,) = tokenize_samples([sample], tokenizer, max_length=512).examples
    assert tokenizer.decode(example.input_ids).startswith("<|im_start|>assistant\n...as I was saying.<|im_end|>")
    assert labelled_text(tokenizer, example) == "Next point.<|im_end|>\n"


def test_a_chat_template_that_refuses_a_conversation_excludes_it():
    strict = ("{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
              "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
              "{% endif %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tokenizer = make_tokenizer()  # its own: the shared fixture keeps the plain template
    tokenizer.chat_template = strict
    samples = [chat(("user", "Hi"), ("assistant", "Hello."), sample_id="ok"),
               chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), sample_id="system-first")]
    result = tokenize_samples(samples, tokenizer, max_length=512)
    assert result.ids == ["ok"]
    ((sample_id, reason),) = result.excluded
    assert sample_id == "system-first" and reason.startswith("the chat template refused it (")
    assert "roles must alternate" in reason


# Generated conversations as users hold them: any roles in any order (ShareGPT speakers too), empty, null and
# list-of-parts contents, system turns. Reading and rendering never fail on a well-formed record: each is either
# excluded with the reason an independent reading of the rules gives, or trains on exactly its assistant turns that
# follow a user turn, rendered as the template writes them.
TEXT = st.text(alphabet="abc XYZ.?\n", max_size=12)
PART = st.one_of(TEXT, st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
                 st.fixed_dictionaries({"type": st.sampled_from(["image_url", "input_audio"])}))
CONTENT = st.one_of(TEXT, st.none(), st.lists(PART, max_size=3))
ROLES = {"messages": ["user", "assistant", "system", "tool"], "conversations": ["human", "gpt", "system", "chatgpt"]}


def expected_outcome(turns: list[tuple[str, object]]) -> tuple[str | None, list[str]]:
    """(exclusion reason, texts of the trained assistant turns), from the documented rules."""
    texts, seen_user, trained = [], False, []
    for role, content in turns:
        parts = [] if content is None else [content] if isinstance(content, str) else content
        images = [p["type"] for p in parts if isinstance(p, dict) and p["type"] != "text"]
        text = "\n".join(p if isinstance(p, str) else p["text"] for p in parts if isinstance(p, str) or
                         p["type"] == "text")
        if images:
            return f"non-text content part ({images[0]})", []
        if role == "assistant" and not text.strip():
            return "empty assistant turn", []
        seen_user = seen_user or role == "user"
        if role == "assistant" and seen_user:
            trained.append(text)
        texts.append(text)
    return (None, trained) if trained else ("no assistant turn after a user turn", [])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.sampled_from(list(ROLES)), data=st.data())
def test_generated_conversations_read_and_render_by_the_rules(tmp_path, tokenizer, shape, data):
    turns = data.draw(st.lists(st.tuples(st.sampled_from(ROLES[shape]), CONTENT), max_size=6))
    role_key, content_key = ("role", "content") if shape == "messages" else ("from", "value")
    record = {shape: [{role_key: role, content_key: content} for role, content in turns]}
    (sample,) = load_samples(write_jsonl(tmp_path / "pool.jsonl", [record]))
    as_chat = [({"human": "user", "gpt": "assistant", "chatgpt": "assistant"}.get(role, role), content)
               for role, content in turns]
    reason, trained = expected_outcome(as_chat)
    result = tokenize_samples([sample], tokenizer, max_length=4096)
    if reason is not None:
        assert result.excluded == [(sample.id, reason)] and not result.examples
    else:
        (example,) = result.examples
        assert labelled_text(tokenizer, example) == "".join(f"{text}<|im_end|>\n" for text in trained)


def test_packed_answer_lengths_count_each_samples_trained_tokens_in_chunks(tmp_path):
    from influence_distillation.data.packed import PackedExamples

    rng = torch.Generator().manual_seed(4)
    packed = PackedExamples(tmp_path)
    for i in range(23):
        length = int(torch.randint(1, 12, (1,), generator=rng))
        ids = torch.randint(0, 500, (length,), generator=rng)
        # some rows trained from their very first position, which no loss can predict
        labels = torch.where(torch.rand(length, generator=rng) < 0.5, torch.full_like(ids, IGNORE_INDEX), ids)
        packed.append(f"s{i}", ids.tolist(), labels.tolist(), False)
    packed.save()
    expected = [sum(1 for label in e.labels.tolist()[1:] if label != IGNORE_INDEX) for e in packed]
    assert any(e.labels[0] != IGNORE_INDEX for e in packed) and len(set(expected)) > 3
    for reader in (packed, PackedExamples.open(tmp_path)):
        assert reader.answer_lengths(chunk_rows=4).tolist() == expected
        assert reader.answer_lengths().tolist() == expected
