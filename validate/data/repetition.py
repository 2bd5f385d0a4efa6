"""Repetition statistics of generated text (torch-free, so that reports can be rebuilt without a model)."""
import re

# Repetition compared between runs is measured on each natural generation's first words only, so that
# a run whose answers got shorter is not scored as less repetitive (fewer 4-grams can repeat) and no
# continuation is forced past the end of turn. 12 words fit in the cpu preset's 24 generated tokens.
PREFIX_WORDS = 12
WORD = re.compile(r"\w+|[^\w\s]")


def repetition_stats(tokens) -> dict:
    """distinct-2 (unique bigrams / bigrams) and the fraction of 4-grams seen before in the text."""
    bigrams = list(zip(tokens, tokens[1:]))
    fourgrams = [tuple(tokens[i:i + 4]) for i in range(len(tokens) - 3)]
    seen, repeated = set(), 0
    for gram in fourgrams:
        repeated += gram in seen
        seen.add(gram)
    return {"distinct2": len(set(bigrams)) / len(bigrams) if bigrams else 1.0,
            "rep4": repeated / len(fourgrams) if fourgrams else 0.0}


def prefix_repetition(text: str, n_words: int = PREFIX_WORDS) -> float:
    """rep4 of the first n_words words (and punctuation marks) of a text; nan if the text is shorter."""
    words = WORD.findall(text)
    if len(words) < n_words:
        return float("nan")
    return repetition_stats(words[:n_words])["rep4"]
