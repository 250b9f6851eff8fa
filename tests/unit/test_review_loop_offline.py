"""The review loop's offline replica (scripts/bench/review_loop_offline.py) on a real gRPC embedder over the fake
model and a small synthetic dataset: the production ranking and trainer, round by round."""

from __future__ import annotations

import asyncio
import json
import random

from scripts.bench import review_loop_offline

WORDS = {"alpha": ["apple", "avocado", "apricot"], "beta": ["bus", "bike", "boat"], "gamma": ["green", "grey", "gold"]}


def write_dataset(root, n_per_class: int = 150) -> None:
    rng = random.Random(0)
    folder = root / "toy"
    folder.mkdir(parents=True)
    for split, n in (("train", n_per_class), ("test", 40)):
        rows = []
        for label, words in WORDS.items():
            for i in range(n):
                # one class word, two shared fillers: learnable, not trivially
                rows.append({"text": f"{rng.choice(words)} {rng.choice(['red', 'blue', 'soft', 'loud'])} "
                                     f"{rng.choice(['one', 'two', 'three', 'four'])} {split} {i}", "label": label})
        rng.shuffle(rows)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


async def test_the_replica_labels_n_a_round_and_adds_a_new_class_once_it_has_8_examples(embedder, tmp_path, capsys):
    write_dataset(tmp_path)
    out = tmp_path / "runs.json"
    # in a thread: the embedder serves on this test's event loop
    assert await asyncio.to_thread(review_loop_offline.main, [
        "--datasets", "toy", "--datasets-dir", str(tmp_path), "--strategies", "random,balanced,new_label",
        "--seeds", "0-1", "--rounds", "3", "--n", "30", "--stream-per-round", "120", "--seed-fraction", "0.05",
        "--new-class", "gamma", "--new-class-round", "1", "--embedder-target", embedder.target,
        "--cache-dir", str(tmp_path / "cache"), "--ceiling", "--out", str(out)]) == 0
    runs = json.loads(out.read_text())
    ceilings = [r for r in runs if r[0]["strategy"] == review_loop_offline.CEILING]
    runs = [r for r in runs if r[0]["strategy"] != review_loop_offline.CEILING]
    assert len(runs) == 6 and {r[0]["strategy"] for r in runs} == {"random", "balanced", "new_label"}
    # the ceiling: one fit per seed on every train label (the new class known), in the last round's column
    assert [len(c) for c in ceilings] == [1, 1]
    assert all(c[0]["round"] == 3 and c[0]["labels_given"] == 450 and c[0]["new_class_recall"] > 0.5
               for c in ceilings)
    for rounds in runs:
        assert [r["labels_given"] for r in rounds] == [0, 30, 60, 90]
        assert rounds[0]["classes"] == 2 and rounds[0]["new_class_recall"] == 0.0  # gamma left out of the seed
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in rounds)
    # gamma joins the stream in round 1; once 8 of it are labelled, training adds it
    assert any(r["classes"] == 3 for rounds in runs for r in rounds)
    assert "Target 2" in capsys.readouterr().out
    # the vectors were fetched once and kept
    assert len(list((tmp_path / "cache").glob("toy-*.npy"))) == 2


async def test_cached_vectors_belong_to_their_texts_whatever_the_order(embedder, tmp_path):
    from embedder.client import EmbedderClient

    def vectors(texts):
        with EmbedderClient(embedder.target, timeout_s=30) as client:
            return review_loop_offline.Vectors(client, tmp_path, "toy", texts)

    first = await asyncio.to_thread(vectors, ["apple pie", "blue bus", "green tea"])
    again = await asyncio.to_thread(vectors, ["green tea", "apple pie", "blue bus"])  # another seed's order
    for text in ("apple pie", "blue bus", "green tea"):
        assert (first.of([text], "default") == again.of([text], "default")).all()
    assert len(list(tmp_path.glob("toy-default-*.npy"))) == 1
    assert not (first.of(["apple pie"], "default") == first.of(["blue bus"], "default")).all()
