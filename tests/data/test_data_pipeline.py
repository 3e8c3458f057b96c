"""The grain pipeline: packing, padding, length policy, host shards, eval coverage, resuming."""

import collections
import dataclasses

import grain
import ml_collections
import numpy as np
import pytest

from configs import default
from flaxformer_lite.data import ByteTokenizer, DataOptions, pipeline
from flaxformer_lite.data.pipeline import HostLayout
from flaxformer_lite.data.prepared import TextSplit
from flaxformer_lite.data.synthetic import ALPHABET
from flaxformer_lite.special_tokens import BOS_ID, EOS_ID

TOKENIZER = ByteTokenizer()
KEYS = ("inputs", "targets")


def reverse_split(count: int = 2000, seed: int = 0, max_length: int = 12) -> TextSplit:
    """`count` distinct reverse-task pairs, in memory."""
    rng = np.random.default_rng(seed)
    sources = set()
    while len(sources) < count:
        length = rng.integers(1, max_length + 1)
        sources.add("".join(rng.choice(list(ALPHABET[:10]), size=length)))
    return TextSplit(sorted(sources), lambda source: (source, source[::-1]))


def options(**overrides) -> DataOptions:
    """The experiment defaults with room for 32 tokens, 32 rows per device, and `overrides`."""
    sizes = dict(max_source_length=32, max_target_length=32, per_device_batch_size=32)
    sizes["per_device_eval_batch_size"] = None
    config = ml_collections.ConfigDict({**default.get_config().to_dict(), **sizes, **overrides})
    return DataOptions.from_config(config)


def take(split, opts, layout, count):
    stream = iter(pipeline.train_dataset(split, TOKENIZER, opts, layout))
    batches = [next(stream) for _ in range(count)]
    stream.close()  # Stops its prefetch thread.
    return batches


def rows(batch):
    """Each row of a [devices, batch, length] batch, as a dict of [length] arrays."""
    flat = {key: value.reshape(-1, value.shape[-1]) for key, value in batch.items()}
    return [{key: value[i] for key, value in flat.items()} for i in range(len(flat["inputs"]))]


def segments(row) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The (inputs, targets) token ids of each example packed in a row, checking its layout."""
    examples = []
    for key in KEYS:
        ids, segment, position = row[key], row[f"{key}_segmentation"], row[f"{key}_position"]
        count = int(segment.max())
        used = segment > 0
        # Segments 1, 2, ..., count, each contiguous, from the start of the row; then padding.
        assert np.array_equal(
            segment[used], np.repeat(np.arange(1, count + 1), np.bincount(segment[used])[1:])
        )
        assert not used[used.sum() :].any()
        assert not ids[~used].any() and not position[~used].any()
        parts = []
        for number in range(1, count + 1):
            mask = segment == number
            assert np.array_equal(position[mask], np.arange(mask.sum()))
            part = ids[mask]
            assert part[-1] == EOS_ID and EOS_ID not in part[:-1] and BOS_ID not in part
            parts.append(tuple(part))
        examples.append(parts)
    assert len(examples[0]) == len(examples[1])
    return list(zip(*examples, strict=True))


def decoded(example):
    return TOKENIZER.decode(example[0]), TOKENIZER.decode(example[1])


def test_batches_have_the_contract_shapes_and_dtypes():
    layout = HostLayout(num_devices=4)
    for pack in (True, False):
        batch = take(
            reverse_split(), options(per_device_batch_size=3, pack_examples=pack), layout, 1
        )[0]
        assert set(batch) == {f"{k}{s}" for k in KEYS for s in ("", "_segmentation", "_position")}
        for value in batch.values():
            assert value.shape == (4, 3, 32) and value.dtype == np.int32


def test_packed_rows_hold_whole_examples_with_right_segments_and_positions():
    split, layout = reverse_split(), HostLayout(num_devices=2)
    opts = options(per_device_batch_size=4, max_source_length=20, max_target_length=20)
    packed = take(split, opts, layout, 6)
    packed_examples = [
        example for batch in packed for row in rows(batch) for example in segments(row)
    ]
    # Several examples per row: about 2.1 on average, as examples take ~9.5 of 20 tokens
    # (a shuffle order decides whether 6 batches hold a few more or fewer).
    assert len(packed_examples) > 1.5 * 6 * 8
    for source, target in map(decoded, packed_examples):
        assert target == source[::-1]
    # Packing only regroups the stream: the same examples as unpacked, one per row.
    unpacked = take(split, dataclasses.replace(opts, pack_examples=False), layout, 40)
    stream = [example for batch in unpacked for row in rows(batch) for example in segments(row)]
    assert len(stream) >= len(packed_examples)
    counts = collections.Counter(stream[: len(packed_examples)])
    assert collections.Counter(packed_examples) == counts


def test_unpacked_rows_hold_one_example_each():
    batch = take(reverse_split(), options(pack_examples=False), HostLayout(1), 1)[0]
    for row in rows(batch):
        assert len(segments(row)) == 1


def test_evaluation_keeps_every_example_cuts_overlong_ones_and_keeps_full_references():
    split = TextSplit(["a" * 3, "b" * 9, "c" * 5], lambda s: (s, s))  # 4, 10, 6 tokens with EOS
    for policy in ("filter", "truncate"):  # The training policy does not apply here.
        kept, references, report = pipeline.encode_eval_split(
            "test", split, TOKENIZER, options(max_source_length=6, overlong=policy)
        )
        assert (report.examples, report.overlong, report.kept) == (3, 1, 3)
        assert [len(e["inputs"]) for e in kept] == [4, 6, 6]
        assert kept[1]["inputs"][-1] == EOS_ID and TOKENIZER.decode(kept[1]["inputs"]) == "bbbbb"
        assert len(kept[1]["targets"]) == 10  # The target limit (32) was not exceeded.
        assert references == ["aaa", "bbbbbbbbb", "ccccc"]


def test_training_stream_never_holds_overlong_examples():
    split = reverse_split(max_length=12)
    for policy in ("filter", "truncate"):
        opts = options(max_source_length=8, max_target_length=8, overlong=policy)
        for batch in take(split, opts, HostLayout(1), 5):
            for row in rows(batch):
                assert all(len(i) <= 8 and len(t) <= 8 for i, t in segments(row))


def test_host_shards_are_disjoint_and_cover_the_data():
    split = reverse_split(3000)
    opts = options(per_device_batch_size=50, pack_examples=False)
    seen = []
    for host in range(3):
        layout = HostLayout(1, process_index=host, process_count=3)
        epoch = take(split, opts, layout, 1000 // 50)  # Each host's shard holds 1000 examples.
        seen.append({decoded(e) for batch in epoch for row in rows(batch) for e in segments(row)})
    assert [len(shard) for shard in seen] == [1000, 1000, 1000]
    assert set.union(*seen) == {split.to_pair(source) for source in split.records}


def test_hosts_batches_stacked_in_process_order_are_the_single_process_batch():
    # 2 hosts of 2 devices read what 1 host of 4 reads: the global batch does not depend
    # on the process count (unpacked rows; packed rows are packed per host).
    split = reverse_split(500)
    opts = options(per_device_batch_size=8, pack_examples=False)
    single = take(split, opts, HostLayout(4), 40)  # 40 x 32 rows: past the first epoch
    hosts = [take(split, opts, HostLayout(2, process_index=h, process_count=2), 40) for h in (0, 1)]
    for step, expected in enumerate(single):
        for key in expected:
            stacked = np.concatenate([hosts[0][step][key], hosts[1][step][key]])
            np.testing.assert_array_equal(stacked, expected[key], err_msg=f"step {step} {key}")


@pytest.mark.parametrize("pack", [True, False])
def test_restored_state_gives_the_same_next_batches(pack):
    split, layout = reverse_split(), HostLayout(num_devices=2)
    opts = options(per_device_batch_size=16, pack_examples=pack)
    stream = iter(pipeline.train_dataset(split, TOKENIZER, opts, layout))
    for _ in range(70 if pack else 130):  # Into the second epoch of 2000 examples.
        next(stream)
    state = stream.get_state()
    expected = [next(stream) for _ in range(5)]
    stream.close()
    resumed = iter(pipeline.train_dataset(split, TOKENIZER, opts, layout))
    resumed.set_state(state)
    for want, got in zip(expected, (next(resumed) for _ in range(5)), strict=True):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    resumed.close()


@pytest.mark.parametrize(("num_devices", "per_device", "hosts"), [(1, 8, 1), (2, 3, 1), (4, 2, 3)])
def test_eval_batches_hold_every_example_exactly_once(num_devices, per_device, hosts):
    split = reverse_split(101)
    opts = options(per_device_eval_batch_size=per_device)
    examples, _, report = pipeline.encode_eval_split("validation", split, TOKENIZER, opts)
    assert report.examples == 101
    seen, batch_counts = [], []
    for host in range(hosts):
        layout = HostLayout(num_devices, process_index=host, process_count=hosts)
        batches = list(pipeline.eval_dataset(examples, opts, layout))
        batch_counts.append(len(batches))
        for batch in batches:
            for value in batch.values():
                assert value.shape == (num_devices, per_device, 32)
            for row in rows(batch):
                found = segments(row)
                assert len(found) <= 1
                if not found:
                    assert not any(value.any() for value in row.values())  # A padding row.
                seen += map(decoded, found)
    assert len(set(batch_counts)) == 1  # Every host runs the same number of eval steps.
    assert collections.Counter(seen) == collections.Counter(map(split.to_pair, split.records))


def test_first_fit_packing_fills_rows():
    batch = take(reverse_split(), options(per_device_batch_size=16), HostLayout(1), 3)[-1]
    fill = (batch["inputs"] != 0).mean()
    assert fill > 0.85


def test_same_seed_same_batches_other_seed_other_batches():
    split, layout = reverse_split(), HostLayout(1)
    first = take(split, options(seed=1), layout, 2)
    again = take(split, options(seed=1), layout, 2)
    other = take(split, options(seed=2), layout, 2)
    for a, b, c in zip(first, again, other, strict=True):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        assert not np.array_equal(a["inputs"], c["inputs"])


# 300 elements: the NumPy branch; with the bar lowered to 100, grain's (cheap at 300).
@pytest.mark.parametrize("grain_from", [pipeline.GRAIN_SHUFFLE_MIN_LENGTH, 100])
def test_shuffled_epochs_hold_every_element_once_in_a_new_seeded_order(grain_from, monkeypatch):
    monkeypatch.setattr(pipeline, "GRAIN_SHUFFLE_MIN_LENGTH", grain_from)
    length = 300
    elements = range(100, 100 + length)

    def epochs(seed, count=2):  # One epoch a batch: read in one call.
        batches = pipeline.shuffled_epochs(elements, seed).batch(length)
        return [batches[epoch].tolist() for epoch in range(count)]

    first, second = epochs(seed=7)
    assert sorted(first) == sorted(second) == list(elements)
    assert first != list(elements) and first != second
    assert epochs(seed=7) == [first, second]  # What a resumed run reads again.
    assert epochs(seed=8, count=1) != [first]


def test_a_tiny_split_stays_off_grains_slow_shuffle(monkeypatch):
    """grain's shuffle enciphers within at least 2**16 values, so it costs ~2**16 / length
    cipher passes an index: ~10 ms here, ~10 s for each block of records read."""
    shuffled_lengths = []
    grain_shuffle = grain.MapDataset.shuffle

    def recording_shuffle(dataset, *args, **kwargs):
        shuffled_lengths.append(len(dataset))
        return grain_shuffle(dataset, *args, **kwargs)

    monkeypatch.setattr(grain.MapDataset, "shuffle", recording_shuffle)
    split = TextSplit(["ab", "cde"], lambda source: (source, source[::-1]))
    batch = take(split, options(per_device_batch_size=2), HostLayout(1), 1)[0]
    examples = [decoded(e) for row in rows(batch) for e in segments(row)]
    assert set(examples) == {("ab", "ba"), ("cde", "edc")}
    assert [length for length in shuffled_lengths if length < 2**16] == []
