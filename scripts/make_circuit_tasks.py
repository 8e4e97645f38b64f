#!/usr/bin/env python3
"""Writes the circuit tasks of `exemplar circuits` (data/circuits/*.jsonl): one JSON object per
line with `prompt`, `answer`, `corrupted_prompt`, `wrong_answer`. Deterministic (seeded); the
token checks (answers one token, clean and corrupted prompts of one length) are made by
`exemplar circuits` itself, with the model's tokenizer.

    make_circuit_tasks.py OUT_DIR [N]

* ioi: "When Mary and John went to the store, John gave a drink to" → " Mary" (the indirect
  object), wrong answer " John"; corrupted: the second mention of the subject is replaced by
  the indirect object ("..., Mary gave a drink to"), so the name to predict flips.
* induction: a list of random words, then its first half again; the answer is the word that
  followed the last repeated word; corrupted: the first occurrence of the list is other words,
  so there is nothing to copy; wrong answer: the word at that place in the corrupted list.
* greater-than: "The war lasted from the year 1743 to the year 17" → the tens digit of the end
  year (Gemma's tokenizer splits numbers into digits): "4" (an end year 174x can follow 1743),
  wrong answer "3" (173x cannot); corrupted: the start year's tens digit is 0 ("1703"), so
  both are possible.
"""

import json
import random
import sys
from pathlib import Path

NAMES = [
    "Mary", "John", "Alice", "Bob", "Tom", "Sarah", "James", "Anna", "David", "Emma",
    "Paul", "Laura", "Mark", "Lisa", "Peter", "Kate", "Michael", "Jane", "Chris", "Amy",
]
PLACES = ["store", "park", "school", "office", "market", "beach", "library", "station"]
OBJECTS = ["drink", "book", "letter", "ball", "gift", "key", "ticket", "flower"]
TEMPLATES = [
    "When {A} and {B} went to the {P}, {C} gave a {O} to",
    "After {A} and {B} arrived at the {P}, {C} handed a {O} to",
    "Then {A} and {B} walked to the {P}, and {C} gave a {O} to",
]
WORDS = [
    "apple", "river", "table", "green", "window", "music", "horse", "paper", "summer", "light",
    "stone", "garden", "silver", "doctor", "winter", "bread", "cloud", "forest", "chair", "ocean",
    "tiger", "money", "glass", "island", "castle", "letter", "pocket", "button", "camera", "dragon",
]
EVENTS = ["war", "drought", "strike", "festival", "expedition", "famine", "reign", "campaign"]


def ioi(rng, n):
    out = []
    for i in range(n):
        a, b = rng.sample(NAMES, 2)
        t = TEMPLATES[i % len(TEMPLATES)]
        p, o = rng.choice(PLACES), rng.choice(OBJECTS)
        # The indirect object is the name not repeated; alternate its place (ABB / BAB).
        first, second = (a, b) if i % 2 == 0 else (b, a)
        io, s = a, b
        clean = t.format(A=first, B=second, P=p, C=s, O=o)
        corrupted = t.format(A=first, B=second, P=p, C=io, O=o)
        out.append(
            dict(prompt=clean, answer=" " + io, corrupted_prompt=corrupted, wrong_answer=" " + s)
        )
    return out


def induction(rng, n, length=6, keep=3):
    out = []
    for _ in range(n):
        ws = rng.sample(WORDS, length + length)
        seq, other = ws[:length], ws[length:]
        clean = " ".join(seq) + ". " + " ".join(seq[:keep])
        corrupted = " ".join(other) + ". " + " ".join(seq[:keep])
        out.append(
            dict(
                prompt=clean,
                answer=" " + seq[keep],
                corrupted_prompt=corrupted,
                wrong_answer=" " + other[keep],
            )
        )
    return out


def greater_than(rng, n):
    out = []
    for _ in range(n):
        tens = rng.randint(2, 7)
        ones = rng.randint(2, 9)
        century = rng.choice(["15", "16", "17", "18"])
        ev = rng.choice(EVENTS)
        clean = f"The {ev} lasted from the year {century}{tens}{ones} to the year {century}"
        corrupted = f"The {ev} lasted from the year {century}0{ones} to the year {century}"
        out.append(
            dict(
                prompt=clean,
                answer=str(tens),
                corrupted_prompt=corrupted,
                wrong_answer=str(tens - 1),
            )
        )
    return out


def main():
    out_dir = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, f in [("ioi", ioi), ("induction", induction), ("greater-than", greater_than)]:
        rng = random.Random(17)
        rows = f(rng, n)
        with open(out_dir / f"{name}.jsonl", "w") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
        print(f"{out_dir / (name + '.jsonl')}: {len(rows)} prompts")


if __name__ == "__main__":
    main()
