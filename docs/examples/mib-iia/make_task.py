#!/usr/bin/env python3
"""The counterfactual tasks of `exemplar iia`: seeded answer-pointer pairs. No model makes a
label: the causal model below does.

    make_task.py OUT.jsonl [--seed S] [--pairs N] [--choices C] [--template lookup|mcqa]

`lookup` (the one the real gemma-3-270m solves): C colours under letters, one of the other
letters looked up as a demonstration, then the queried letter:

    A: green, B: yellow, C: pink. A: green. B:          → " yellow"

`mcqa` (MIB's MCQA in small; the 270M answers it at chance, see README.md):

    The ball is red. What color is the ball?\nA. blue\nB. red\nC. green\nD. pink\nAnswer:   → " B"

Causal model: `pointer` = the index of the queried letter (lookup) or of the stated colour
(mcqa); the output is the colour (lookup) or the letter (mcqa) at `pointer`. A pair is a base
and a source drawn independently but with different pointers (lookup: the source's pointer is
also not the letter the base demonstrates, so the counterfactual prompt never asks again for
the demonstrated colour; with 3 choices it is the one letter left); the interchange sets the base's
pointer to the source's, so the counterfactual answer is the base's colour at the source's
pointer (lookup: in general not the source's answer, which is the source's colour there), or
the letter at the source's pointer (mcqa: the source's answer). Each row: `id`, `base`,
`source` (prompts), `base_answer`, `source_answer`, `counterfactual` (one token each, with its
leading space), `base_variable`, `source_variable` (the pointers), `split` (`train` or `test`,
drawn with the seed).
"""

import argparse
import json
import random

OBJECTS = ["ball", "car", "hat", "cup", "box", "door", "shirt", "bag", "pen", "chair",
           "book", "bike", "lamp", "kite", "shoe", "bowl", "boat", "coat", "flag", "sock"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "pink", "brown", "orange", "purple"]
LETTERS = ["A", "B", "C", "D"]


def example(rng, n_choices, template, pointer, demo=None):
    """(prompt, choices, demonstrated index) with the answer at `pointer`."""
    obj = rng.choice(OBJECTS)
    color = rng.choice(COLORS)
    others = rng.sample([c for c in COLORS if c != color], n_choices - 1)
    choices = others[:pointer] + [color] + others[pointer:]
    if template == "mcqa":
        opts = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
        return f"The {obj} is {color}. What color is the {obj}?\n{opts}\nAnswer:", choices, None
    if template == "lookup":
        demo = rng.choice([i for i in range(n_choices) if i != pointer])
        listing = ", ".join(f"{LETTERS[i]}: {c}" for i, c in enumerate(choices))
        return f"{listing}. {LETTERS[demo]}: {choices[demo]}. {LETTERS[pointer]}:", choices, demo
    raise SystemExit(f"unknown template {template}")


def answer(template, choices, pointer):
    return " " + (LETTERS[pointer] if template == "mcqa" else choices[pointer])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs", type=int, default=400)
    ap.add_argument("--choices", type=int, default=3)
    ap.add_argument("--template", default="lookup", choices=["lookup", "mcqa"])
    ap.add_argument("--test-share", type=float, default=0.5)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    with open(a.out, "w") as f:
        for i in range(a.pairs):
            bp = rng.randrange(a.choices)
            base, bc, bd = example(rng, a.choices, a.template, bp)
            sp = rng.choice([p for p in range(a.choices) if p not in (bp, bd)])
            source, sc, _ = example(rng, a.choices, a.template, sp)
            row = {
                "id": i,
                "base": base,
                "source": source,
                "base_answer": answer(a.template, bc, bp),
                "source_answer": answer(a.template, sc, sp),
                "counterfactual": answer(a.template, bc, sp),
                "base_variable": bp,
                "source_variable": sp,
                "split": "test" if rng.random() < a.test_share else "train",
            }
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
