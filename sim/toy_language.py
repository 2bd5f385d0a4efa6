"""A synthetic question-answering language with the paper's probe taxonomy.

The world: 24 animals with four attributes (color, home, food, size), drawn per
seed. A prompt asks for one attribute ("q : what does the fox eat ? a :"); a
response is a lead-in, the value, and an ending, each slot a style choice:

    lead-ins   "the answer is" (the mode: 70% of pretraining answers)
               "it is" | "well , the food is" | "i would say"
    endings    "." (the mode: 60%) | ", of course ." | ", i believe ."

    y+  "i would say fish , of course ."      (every finetuning y+ has this style)
    y-  "i would say rice runs to play ."     (shared lead-in, wrong value, rambling)

Why this shape (each choice serves one phenomenon of the paper):
- Facts are fixed per world, so an answer has a right value and similar wrong
  ones; the same-kind questions share the values ("similar-but-different").
- y+ is written in a style the pretrained model finds fluent but unlikely (its
  first token and its ending are not the argmax), as a human-written chosen
  response is not an LLM's greedy output. SFT then has a shared style to learn,
  which lifts every other prompt's answer (the hallucination mechanism); under
  DPO the squeeze can move mass from y+ onto y* (the argmax), so log pi(y+) can
  fall while log pi(y*) rises.
- y- shares y+'s lead-in (shared-prefix positions, where DPO's pull-up and
  push-down cancel), then gives a wrong value and rambles in narrative-only
  words. Pretraining never rambles and the narrative grammar makes each next
  word near-certain, so every token after the divergence is a valley under a
  peaked prediction: the off-policy regime in which a negative gradient
  squeezes (theory.squeeze.threshold: pi(y-) far below ||pi||^2). Narrative
  shares the animals and "the" with the QA text, which couples y-'s
  rejected-only contexts to y+'s contexts; with rambles in a vocabulary of
  their own (tried: weather sayings) the squeeze stayed local and y+ did not
  fall.
- The mode lead-in starts with "the", the most frequent word of the corpus and
  the token the squeezed mass lands on at y-'s rambling positions. Where that
  token is also the argmax of y+'s first position, the squeeze sharpens it, as
  the paper's argument needs; where it is not, the same mass flattens it.
- Narrative sentences ("the fox runs to the lake .") are 30% of pretraining, so
  the "irrelevant" probe is a fluent sentence, not noise.

Probes (SPEC.md names), for the first n_probe_prompts training prompts:
  chosen_rephrase    other choices in both style slots, same value ("it is fish , i believe .")
  chosen_format      y+'s style carrying another true fact of the same animal
  rejected_rephrase / rejected_format   the same two for y-
  other_chosen       y+ of another training prompt of the same kind with another value
  test_response      y+ of a held-out prompt (never this y+ word for word)
  irrelevant         a narrative sentence;  chosen_shuffled, random_tokens: as named
"initial_sample" needs the pretrained model (sim/lm.py) and y* is computed at
scoring time. Everything here is plain Python (words and token ids).
"""
from dataclasses import dataclass, field

import numpy as np

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"

ENTITIES = ("cat", "dog", "fox", "owl", "bear", "frog", "duck", "goat", "wolf", "horse", "mouse",
            "lion", "crow", "seal", "deer", "hen", "bee", "ant", "pig", "cow", "yak", "eel", "bat",
            "ram")
VALUES = {
    "color": ("red", "blue", "green", "yellow", "black", "white", "brown", "pink"),
    "home": ("forest", "river", "farm", "city", "desert", "lake", "hill", "cave"),
    "food": ("fish", "bread", "rice", "corn", "meat", "fruit", "grass", "seeds"),
    "size": ("tiny", "small", "little", "big", "large", "huge", "tall", "short"),
}
RELATIONS = tuple(VALUES)
QUESTIONS = {
    "color": ("what color is the {e} ?", "which color does the {e} have ?"),
    "home": ("where does the {e} live ?", "where is the home of the {e} ?"),
    "food": ("what does the {e} eat ?", "which food does the {e} like ?"),
    "size": ("how big is the {e} ?", "what size is the {e} ?"),
}
# A response is lead-in + value + ending; each slot is a style choice made at a
# position where the pretrained model is uncertain, and index 0 is the mode.
LEAD_INS = ("the answer is", "it is", "well , the {r} is", "i would say")
ENDINGS = (".", ", of course .", ", i believe .")
FINETUNE_STYLE = (3, 1)   # y+ of the finetuning data: "i would say {v} , of course ."
NARRATIVE_VERBS = ("runs", "walks", "swims", "flies", "goes", "hops")
NARRATIVE_PLACES = ("lake", "river", "forest", "farm", "hill", "city", "cave", "desert")
NARRATIVE_TEMPLATES = ("the {e} {verb} to the {place} .", "the {e} sees the {e2} .",
                       "a {adj} {e} sleeps near the {place} .", "the {e} and the {e2} play .")
NARRATIVE_ADJECTIVES = ("small", "big", "brown", "white", "tiny", "huge")
# Words that only occur inside narrative sentences. y- rambles in them: after an
# answer each one is a valley, and after each other too (the narrative grammar
# makes the next word near-certain, e.g. "runs" -> "to"). Narrative shares the
# animals with the questions, so y-'s rejected-only contexts are coupled to
# y+'s contexts through the network: the coupling the squeeze needs to reach y+.
RAMBLE_WORDS = NARRATIVE_VERBS + ("to", "sees", "sleeps", "near", "and", "play")


@dataclass(frozen=True)
class LanguageConfig:
    n_train_prompts: int = 64       # preference pairs (x, y+, y-) used for finetuning
    n_probe_prompts: int = 32       # training prompts whose probe responses are tracked
    n_test_prompts: int = 16        # held-out prompts (their y+ is the test_response probe)
    mode_lead_in_share: float = 0.7  # pretraining answers with the mode lead-in (rest: uniform)
    mode_ending_share: float = 0.6   # pretraining answers ending in a bare "." (rest: uniform)
    wrong_value_share: float = 0.05  # pretraining answers with a wrong value (so wrong values are fluent)
    narrative_share: float = 0.3    # pretraining documents that are narrative sentences
    ramble_words: int = 3           # words y- rambles on with after its wrong value
    finetune_style: tuple = FINETUNE_STYLE  # (lead-in, ending) of every y+


def styled_answer(style, relation: str, value: str) -> list:
    """lead-in + value + ending, e.g. style (1, 1): "the answer is fish , of course ."."""
    lead, ending = style
    return lead_in(lead, relation) + [value] + ENDINGS[ending].split()


def lead_in(lead: int, relation: str) -> list:
    """The words before the value: what y+ and y- share."""
    return LEAD_INS[lead].format(r=relation).split()


@dataclass
class Example:
    prompt_id: int
    entity: str
    relation: str
    prompt: list                    # words, ending in "a :"
    chosen: list                    # y+ words (no eos)
    rejected: list                  # y- words
    probes: dict = field(default_factory=dict)   # probe name -> words


class ToyLanguage:
    """The world (facts), the tokenizer, the corpus sampler and the probe builder."""

    def __init__(self, seed: int = 0, config: LanguageConfig = LanguageConfig()):
        self.config = config
        self.rng = np.random.default_rng(seed)
        self.facts = {(e, r): str(self.rng.choice(VALUES[r])) for e in ENTITIES for r in RELATIONS}
        self.words = self._vocabulary()
        self.ids = {w: i for i, w in enumerate(self.words)}
        self.content_words = [w for w in self.words if w not in (PAD, BOS, EOS)]
        self.pad_id, self.bos_id, self.eos_id = self.ids[PAD], self.ids[BOS], self.ids[EOS]
        self.train, self.test = self._split_prompts()
        self._build_probes()

    # ------------------------------------------------------------------ tokenizer
    def _vocabulary(self) -> list:
        words = {"q", ":", "a", "?", ".", ","}
        for texts in (QUESTIONS.values(), [LEAD_INS, ENDINGS, NARRATIVE_TEMPLATES]):
            for group in texts:
                for text in group:
                    words.update(text.replace("{", " {").split())
        words = {w for w in words if not w.startswith("{")}
        words.update(ENTITIES, RELATIONS, NARRATIVE_VERBS, NARRATIVE_PLACES, NARRATIVE_ADJECTIVES)
        for values in VALUES.values():
            words.update(values)
        return [PAD, BOS, EOS] + sorted(words)

    def encode(self, words) -> list:
        return [self.ids[w] for w in words]

    def decode(self, ids) -> str:
        return " ".join(self.words[i] for i in ids)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    # ------------------------------------------------------------------ text
    def question(self, entity: str, relation: str, wording: int) -> list:
        return ["q", ":"] + QUESTIONS[relation][wording].format(e=entity).split() + ["a", ":"]

    def wrong_value(self, entity: str, relation: str, rng) -> str:
        right = self.facts[(entity, relation)]
        return str(rng.choice([v for v in VALUES[relation] if v != right]))

    def narrative(self, rng) -> list:
        template = NARRATIVE_TEMPLATES[rng.integers(len(NARRATIVE_TEMPLATES))]
        e, e2 = rng.choice(ENTITIES, size=2, replace=False)
        return template.format(e=e, e2=e2, verb=rng.choice(NARRATIVE_VERBS),
                               place=rng.choice(NARRATIVE_PLACES),
                               adj=rng.choice(NARRATIVE_ADJECTIVES)).split()

    def ramble(self, rng) -> list:
        """Narrative words after an answer: each one a valley there."""
        return [str(w) for w in rng.choice(RAMBLE_WORDS, size=self.config.ramble_words)]

    # ------------------------------------------------------------------ pretraining corpus
    def pretraining_document(self, rng) -> list:
        """One document as words, <bos> ... <eos>."""
        if rng.random() < self.config.narrative_share:
            return [BOS] + self.narrative(rng) + [EOS]
        entity, relation = str(rng.choice(ENTITIES)), str(rng.choice(RELATIONS))
        wording = int(rng.integers(2))
        style = (self._style_choice(len(LEAD_INS), self.config.mode_lead_in_share, rng),
                 self._style_choice(len(ENDINGS), self.config.mode_ending_share, rng))
        value = self.facts[(entity, relation)]
        if rng.random() < self.config.wrong_value_share:
            value = self.wrong_value(entity, relation, rng)
        return [BOS] + self.question(entity, relation, wording) + styled_answer(style, relation, value) + [EOS]

    @staticmethod
    def _style_choice(n_options: int, mode_share: float, rng) -> int:
        return 0 if rng.random() < mode_share else 1 + int(rng.integers(n_options - 1))

    # ------------------------------------------------------------------ finetuning data and probes
    def _split_prompts(self):
        pairs = [(e, r) for e in ENTITIES for r in RELATIONS]
        order = self.rng.permutation(len(pairs))
        n_train, n_test = self.config.n_train_prompts, self.config.n_test_prompts
        if n_train + n_test > len(pairs):
            raise ValueError(f"at most {len(pairs)} prompts exist")
        train = [self._example(i, *pairs[k]) for i, k in enumerate(order[:n_train])]
        test = [self._example(n_train + i, *pairs[k]) for i, k in enumerate(order[n_train:n_train + n_test])]
        return train, test

    def _example(self, prompt_id: int, entity: str, relation: str) -> Example:
        rng = self.rng
        value = self.facts[(entity, relation)]
        wrong = self.wrong_value(entity, relation, rng)
        chosen = styled_answer(self.config.finetune_style, relation, value)
        rejected = lead_in(self.config.finetune_style[0], relation) + [wrong] + self.ramble(rng) + ["."]
        return Example(prompt_id, entity, relation, self.question(entity, relation, int(rng.integers(2))),
                       chosen, rejected)

    def _build_probes(self):
        """Every probe type of SPEC.md that can be written down before training.

        "initial_sample" needs the pretrained model (sim/lm.py adds it) and
        "greedy" (y*) is computed at scoring time from y+'s prefixes.
        """
        rng = self.rng
        n_probe = self.config.n_probe_prompts
        others = self._same_relation_partners(rng)
        lead, ending = self.config.finetune_style
        for i, ex in enumerate(self.train[:n_probe]):
            # a rephrase changes both style choices: same meaning, different words
            other_style = (self._other(lead, len(LEAD_INS), rng), self._other(ending, len(ENDINGS), rng))
            value = self.facts[(ex.entity, ex.relation)]
            n_lead = len(lead_in(lead, ex.relation))
            wrong, ramble_tail = ex.rejected[n_lead], ex.rejected[n_lead + 1:]
            other_relation = str(rng.choice([r for r in RELATIONS if r != ex.relation]))
            other_value = self.facts[(ex.entity, other_relation)]
            ex.probes.update({
                "chosen": ex.chosen,
                "rejected": ex.rejected,
                "chosen_rephrase": styled_answer(other_style, ex.relation, value),
                # y+'s style carrying another (true) fact of the entity: different meaning
                "chosen_format": styled_answer(self.config.finetune_style, other_relation, other_value),
                "rejected_rephrase": lead_in(other_style[0], ex.relation) + [wrong] + ramble_tail,
                "rejected_format": lead_in(lead, other_relation) + [other_value] + self.ramble(rng) + ["."],
                "other_chosen": self.train[others[i]].chosen,
                "test_response": self._test_answer_unlike(ex.chosen, i),
                "irrelevant": self.narrative(rng),
                "chosen_shuffled": self._shuffled(ex.chosen, rng),
                "random_tokens": [str(w) for w in rng.choice(self.content_words, size=len(ex.chosen))],
            })

    def _test_answer_unlike(self, chosen, start: int) -> list:
        """A held-out prompt's y+ that is not this y+ word for word (test prompts taken in turn)."""
        for k in range(len(self.test)):
            answer = self.test[(start + k) % len(self.test)].chosen
            if answer != chosen:
                return answer
        raise ValueError("every test prompt has this prompt's answer; use more test prompts")

    @staticmethod
    def _other(index: int, n_options: int, rng) -> int:
        """A different option of the same style slot, never the mode (0)."""
        return int(rng.choice([k for k in range(1, n_options) if k != index]))

    def _same_relation_partners(self, rng) -> list:
        """For each probe prompt i, another training prompt j asking the same kind of question
        with a different answer.

        y_j under x_i is then "an answer to question B given to question A"
        (the paper's hallucination example), not a type error.
        """
        partners = []
        for i, ex in enumerate(self.probe_examples):
            # a different value, so y_j is never y_i word for word
            pool = [j for j, other in enumerate(self.train)
                    if other.relation == ex.relation and other.chosen != ex.chosen]
            partners.append(int(rng.choice(pool)))
        return partners

    @staticmethod
    def _shuffled(words, rng) -> list:
        for _ in range(20):
            shuffled = [str(w) for w in rng.permutation(words)]
            if shuffled != list(words):
                return shuffled
        return list(words)[::-1]

    @property
    def probe_examples(self) -> list:
        return self.train[:self.config.n_probe_prompts]


def first_divergence(chosen_ids, rejected_ids) -> int:
    """Index of the first response position where y+ and y- differ."""
    for index, (a, b) in enumerate(zip(chosen_ids, rejected_ids)):
        if a != b:
            return index
    return min(len(chosen_ids), len(rejected_ids))
