"""Claim (issue 38, acceptance 2): ``vlmsteer score chair`` equals the CHAIR reference.

1. Singularization equals ``pattern.en.singularize`` word for word, quirks included. Pattern no
   longer installs, so this loads its ``inflect.py`` alone (the rest of Pattern stubbed:
   singularize needs none of it) and compares on every word of the CHAIR tables, on crafted
   quirks, and on random words built on every suffix rule.
2. With ``--chair-reference`` (the reference's ``chair.py``): random COCO-format annotations
   (instances and reference captions) and random captions full of synonyms, plurals, two-word
   objects and the reference's special cases are scored by the reference's own ``CHAIR`` class
   (with Pattern's singularize, and NLTK's tokenizer: its English Punkt data cannot be
   installed here, so ``nltk.word_tokenize`` is given vlmsteer's split, see
   ``vlmsteer.evaluate.chair``) and by vlmsteer: per caption the same named and hallucinated
   objects, and the three figures equal to 1e-9.

    git clone https://github.com/clips/pattern /tmp/pattern-src
    git clone https://github.com/Maxlinn/CHAIR-metric-standalone /tmp/chair-src
    python benchmarks/chair_parity.py --pattern-inflect /tmp/pattern-src/pattern/text/en/inflect.py \\
        --chair-reference /tmp/chair-src/chair.py
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import string
import sys
import types

from vlmsteer.evaluate.chair import coco_vocabulary
from vlmsteer.evaluate.singular import singularize

CRAFTED = ["bus", "buses", "glass", "glasses", "people", "women", "four", "your", "taxi", "taxes", "pi", "dogs'",
           "'", "mothers-in-law", "children", "knives", "leaves", "wolves", "skis", "scissors", "ice", "advice",
           "s", "'s", "n't", ".", ",", "``", "series", "movies", "zombies", "cookies", "pies", "ties", "oxen",
           "oxenford", "matrices", "indices", "analyses", "theses", "diagnoses", "doses", "roses", "bacteria",
           "news", "data", "criteria", "shoes", "heroes", "mice", "lice", "boxes", "benches", "dishes", "kisses",
           "cacti", "octopi", "viri", "lives", "halves", "scarves", "nerves", "wives", "olives", "archives",
           "sheaves", "Dogs", "BUSES", "Women", "teeth", "feet", "geese", "sheep", "fish", "2", "3.5", "a.m.",
           "hot-dogs", "cross-roads", "t-shirts", "sandwiches", "pizzas", "kites", "giraffes", "elephants"]


def load_pattern(path: str):
    """Pattern's inflect module from its source file, with ``pattern.text`` stubbed."""
    text = types.ModuleType("pattern.text")

    class Verbs:  # what inflect.py subclasses and calls at import; singularize never uses it
        def __init__(self, *args, **kwargs):
            pass

        conjugate = lemma = lexeme = tenses = find_lemma = find_lexeme = None

    text.Verbs = Verbs
    for name in ("INFINITIVE", "PRESENT", "PAST", "FUTURE", "FIRST", "SECOND", "THIRD", "SINGULAR", "PLURAL",
                 "SG", "PL", "PROGRESSIVE", "PARTICIPLE"):
        setattr(text, name, name.lower())
    sys.modules.setdefault("pattern", types.ModuleType("pattern"))
    sys.modules["pattern.text"] = text
    spec = importlib.util.spec_from_file_location("pattern_inflect", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def words_to_check(module, seed: int, n_random: int) -> list[str]:
    vocab = coco_vocabulary()
    words = set(CRAFTED)
    for line in vocab.synonyms:
        for w in line:
            words.update({w, w + "s", w + "es"})
            words.update(w.split())
    words.update(module.singular_uninflected | module.singular_uncountable)
    words.update(x + "s" for x in module.singular_ie)
    words.update(module.singular_irregular)
    rng = random.Random(seed)
    endings = ["s", "es", "ies", "ves", "ses", "oses", "ae", "i", "a", "en", "men", "ices", "eaux", "itis", "zes",
               "ouse", "ice", "ews", "eries", "ombies", "ovies", "'", "-of-s", "-in-laws", "our", "ia"]
    endings += [p for p, _ in module.singular_irregular.items()]
    for _ in range(n_random):
        stem = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(0, 6)))
        words.add(stem + rng.choice(endings))
    return sorted(words)


def synthetic_coco(folder, seed: int, n_images: int, n_captions: int):
    """Random COCO-format annotations in ``folder`` (val filled, train empty: the reference
    wants both) and random captions; returns the captions as (image_id, text)."""
    import json

    vocab = coco_vocabulary()
    rng = random.Random(seed)
    words = sorted({w.strip() for line in vocab.synonyms for w in line if w.strip()})
    words += ["baby bird", "adult dog", "passenger jet", "toilet seat", "wine glasses", "hot dogs", "motor bike",
              "teddy bears", "bow tie", "buses", "people", "women", "children", "knives", "skis", "glasses", "seat"]
    fillers = ["a", "the", "two", "with", "on", "next to", "and", "in front of", "some", "is", "are", "near"]
    punct = ["", "", "", ",", ".", "!", "?", "'s", "s", ";", " ...", " (", ")"]

    def sentence():
        parts = []
        for _ in range(rng.randint(1, 8)):
            parts.append(rng.choice(fillers))
            parts.append(rng.choice(words) + rng.choice(punct))
        text = " ".join(parts)
        return text[0].upper() + text[1:] + rng.choice([".", ".", "", "!", ". It is nice."])

    categories = [{"id": i + 1, "name": line[0]} for i, line in enumerate(vocab.synonyms)]
    images = [{"id": 1000 + i, "file_name": f"COCO_val2014_{1000 + i:012d}.jpg"} for i in range(n_images)]
    instances = [{"id": k, "image_id": im["id"], "category_id": rng.choice(categories)["id"]}
                 for k, im in enumerate(rng.choices(images, k=3 * n_images))]
    refs = [{"id": k, "image_id": im["id"], "caption": sentence()} for k, im in enumerate(images * 2)]
    meta = {"info": {}, "licenses": []}
    (folder / "instances_val2014.json").write_text(json.dumps({**meta, "images": images, "categories": categories,
                                                               "annotations": instances}))
    (folder / "captions_val2014.json").write_text(json.dumps({**meta, "images": images, "annotations": refs}))
    (folder / "instances_train2014.json").write_text(json.dumps({**meta, "images": [], "categories": categories,
                                                                 "annotations": []}))
    (folder / "captions_train2014.json").write_text(json.dumps({**meta, "images": [], "annotations": []}))
    return [(rng.choice(images)["id"], " ".join(sentence() for _ in range(rng.randint(1, 3))))
            for _ in range(n_captions)]


def compare_with_reference(reference: str, pattern_module, seed: int, n_images: int, n_captions: int) -> int:
    """Score the same random captions with the reference's CHAIR class and with vlmsteer;
    returns the number of captions (or figures) that differ."""
    import json
    import tempfile
    from pathlib import Path

    import nltk

    from vlmsteer.evaluate.chair import chair_scores, ground_truth
    from vlmsteer.runs.scoring import read_chair_annotations

    en = types.ModuleType("pattern.en")
    en.singularize = pattern_module.singularize
    sys.modules["pattern.en"] = en
    sentences, word_tokenizer = __import__("vlmsteer.evaluate.chair", fromlist=["_tokenizers"])._tokenizers()
    nltk.word_tokenize = lambda text: [w for s in sentences.tokenize(text) for w in word_tokenizer.tokenize(s)]
    spec = importlib.util.spec_from_file_location("chair_reference", reference)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        caps = synthetic_coco(folder, seed, n_images, n_captions)
        (folder / "caps.jsonl").write_text("".join(json.dumps({"image_id": i, "caption": c}) + "\n" for i, c in caps))
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            theirs = ref.CHAIR(str(folder)).compute_chair(str(folder / "caps.jsonl"), "image_id", "caption")
        vocab = coco_vocabulary()
        instances, coco_captions, _ = read_chair_annotations(folder)
        ours = chair_scores(caps, ground_truth(instances, coco_captions, vocab, {i for i, _ in caps}), vocab)
    differ = 0
    for row, sent in zip(ours.rows, theirs["sentences"]):
        same = (row.mentioned == sent["mscoco_generated_words"]
                and row.hallucinated == [list(p) for p in sent["mscoco_hallucinated_words"]]
                and set(row.truth) == set(sent["mscoco_gt_words"])
                and abs(row.chair_i - sent["metrics"]["CHAIRi"]) <= 1e-9
                and abs(row.recall - sent["metrics"]["Recall"]) <= 1e-9 and row.chair_s == sent["metrics"]["CHAIRs"])
        if not same and differ < 5:
            print(f"  differs: {row.caption!r}: ours {row.mentioned} {row.hallucinated}, reference "
                  f"{sent['mscoco_generated_words']} {sent['mscoco_hallucinated_words']}")
        differ += not same
    overall = theirs["overall_metrics"]
    figures = {"CHAIRs": ours.chair_s, "CHAIRi": ours.chair_i, "Recall": ours.recall}
    for name, value in figures.items():
        ok = abs(value - overall[name]) <= 1e-9
        differ += not ok
        print(f"  {name}: reference {overall[name]:.12f}, vlmsteer {value:.12f} {'equal' if ok else 'DIFFER'}")
    hallucinating = sum(r.chair_s for r in ours.rows)
    print(f"{len(caps)} captions over {n_images} images (seed {seed}; {hallucinating} hallucinate, "
          f"{ours.mentions} objects named): {len(caps) - min(differ, len(caps))} equal to the reference")
    return differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pattern-inflect", required=True, help="Pattern's pattern/text/en/inflect.py")
    parser.add_argument("--random", type=int, default=50000, help="random words built on the suffix rules")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chair-reference", help="the reference's chair.py (Maxlinn/CHAIR-metric-standalone)")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--captions", type=int, default=1000)
    args = parser.parse_args()
    module = load_pattern(args.pattern_inflect)
    words = words_to_check(module, args.seed, args.random)
    differ = [(w, module.singularize(w), singularize(w)) for w in words if module.singularize(w) != singularize(w)]
    print(f"{len(words)} words (seed {args.seed}): {len(words) - len(differ)} equal, {len(differ)} differ")
    for w, theirs, ours in differ[:20]:
        print(f"  {w!r}: pattern {theirs!r}, vlmsteer {ours!r}")
    failed = bool(differ)
    if args.chair_reference:
        failed |= bool(compare_with_reference(args.chair_reference, module, args.seed, args.images, args.captions))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
