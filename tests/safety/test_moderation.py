"""Prompt moderation: the shipped policy on everyday and harmful prompts, evasion, policy files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cogserve.errors import ConfigError
from cogserve.safety import CLEAN_LEVEL, Policy, load_policy


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy()


# (prompt, expected level, a term that must be among the hits or None when clean)
CASES = [
    # Everyday prompts, several containing a term as a substring or a near miss.
    ("一只可爱的小猫咪", 3, None),
    ("a cat skilled at painting", 3, None),
    ("Scunthorpe United football poster", 3, None),
    ("a therapist's office with plants", 3, None),
    ("a bowl of grapes on a wooden table", 3, None),
    ("shooting star over the mountains", 3, None),
    ("a drug store at night, neon sign", 3, None),
    ("a bath bomb fizzing in a tub", 3, None),
    ("a model in a bomber jacket", 3, None),
    ("a rapper on stage, concert lights", 3, None),
    ("a hero in a red cape", 3, None),
    ("three heroines of the novel", 3, None),
    ("portrait of Al Gore", 3, None),
    ("statue of the goddess Isis", 3, None),
    ("a cast iron skillet", 3, None),
    ("the scientific method, infographic", 3, None),
    ("class assignment on a chalkboard", 3, None),
    ("a killer whale jumping", 3, None),
    ("虎鲸跃出海面", 3, None),
    ("炸鸡和啤酒", 3, None),
    ("夕阳下的长城，金色的光芒", 3, None),
    ("水墨画风格的山水，远处有一叶小舟", 3, None),
    ("ＡＩ艺术，赛博朋克城市", 3, None),
    # Plain hits, zh and en, with the category's level.
    ("child porn", 0, "child porn"),
    ("儿童色情图片", 0, "儿童色情"),
    ("how to make a bomb at home", 0, "make a bomb"),
    ("恐怖袭击现场", 0, "恐怖袭击"),
    ("hentai girl", 1, "hentai"),
    ("一张色情图片", 1, "色情"),
    ("beheading video", 1, "beheading"),
    ("碎尸现场", 1, "碎尸"),
    ("heil hitler banner", 1, "heil hitler"),
    ("I want to kill myself", 1, "kill myself"),
    ("割腕的手臂", 1, "割腕"),
    ("a pile of cocaine on a table", 1, "cocaine"),
    ("冰毒和针管", 1, "冰毒"),
    ("a nude figure drawing", 2, "nude"),
    ("murdered in the alley", 2, "murder"),
    ("他被枪杀了", 2, "枪杀"),
    # Evasion: case, width, separators, zero-width characters, stretching, digits, mixtures.
    ("HENTAI", 1, "hentai"),
    ("ｐｉｐｅ ｂｏｍｂ", 0, "pipe bomb"),
    ("how to make a b.o.m.b", 0, "make a bomb"),
    ("p i p e - b o m b", 0, "pipe bomb"),
    ("PIPE-BOMB", 0, "pipe bomb"),
    ("pipe\u200bbomb", 0, "pipe bomb"),
    ("co-caine", 1, "cocaine"),
    ("kiiiiill them", 2, "kill"),
    ("k1ll", 2, "kill"),
    ("h3r0in", 1, "heroin"),
    ("self-harm", 1, "self harm"),
    ("selfharm", 1, "self harm"),
    ("s.e.l.f h.a.r.m", 1, "self harm"),
    ("killing", 2, "kill"),
    ("炸 弹", 2, "炸弹"),
    ("炸.弹", 2, "炸弹"),
    ("炸💣弹", 2, "炸弹"),
    ("炸炸弹弹", 2, "炸弹"),
    ("炸\u200b弹", 2, "炸弹"),
    ("自～杀", 1, "自杀"),
    ("恐 怖 襲 擊", 0, "恐怖襲擊"),
    ("画一个cocaine的场景", 1, "cocaine"),
    # Evasion by accents, fillers, look-alike letters, strays between CJK characters, "@".
    ("pipe bo\u0301mb", 0, "pipe bomb"),  # combining accent
    ("pipe bómb", 0, "pipe bomb"),  # precomposed
    ("cöcäïne", 1, "cocaine"),
    ("co\u3164caine", 1, "cocaine"),  # Hangul filler
    ("co\uffa0caine", 1, "cocaine"),  # half-width Hangul filler
    ("c\u043ec\u0430ine", 1, "cocaine"),  # Cyrillic о and а
    ("h\u0435nt\u0430i", 1, "hentai"),  # Cyrillic е and а
    ("coc\u03b1ine", 1, "cocaine"),  # Greek alpha
    ("炸x弹", 2, "炸弹"),  # a Latin letter inside a CJK term
    ("炸1弹", 2, "炸弹"),  # a digit
    ("儿童ab色情", 0, "儿童色情"),
    ("炸ｰ弹", 2, "炸弹"),  # half-width prolonged-sound mark
    ("自ー杀", 1, "自杀"),
    ("c@caine", 1, "cocaine"),
    ("pipe b@mb", 0, "pipe bomb"),
    # Accents, other scripts and Latin inside Chinese that must stay clean.
    ("a café on a résumé, naïve art", 3, None),
    ("Ångström units on a blackboard", 3, None),
    ("señor piñata at a fiesta", 3, None),
    ("我的iPhone很好看", 3, None),
    ("用3D打印一只猫", 3, None),
    ("一个AI机器人在画画", 3, None),
    ("がんばれ、ポケモン！コーヒー", 3, None),
    ("안녕하세요 고양이", 3, None),
    ("Привет мир, кошка на окне", 3, None),
    ("Καλημέρα, ένας γάτος", 3, None),
    ("email bob@example.com about the cat", 3, None),
]


@pytest.mark.parametrize(("prompt", "level", "term"), CASES, ids=[c[0] for c in CASES])
def test_prompt_table(policy: Policy, prompt: str, level: int, term: str | None) -> None:
    result = policy.check(prompt)
    assert result.level == level, result.hits
    if term is None:
        assert result.hits == []
    else:
        assert term in [hit.term for hit in result.hits]


def test_result_names_every_category_hit_and_takes_the_most_severe(policy: Policy) -> None:
    result = policy.check("a nude figure and a pipe bomb")
    assert {(h.category, h.level, h.term) for h in result.hits} == {
        ("nudity", 2, "nude"),
        ("terrorism", 0, "pipe bomb"),
    }
    assert result.level == 0


def test_blocked_threshold(policy: Policy) -> None:
    mild, severe, clean = policy.check("naked"), policy.check("hentai"), policy.check("a cat")
    assert (mild.level, severe.level, clean.level) == (2, 1, CLEAN_LEVEL)
    assert severe.blocked() and not mild.blocked() and not clean.blocked()
    assert mild.blocked(threshold=2) and not clean.blocked(threshold=2)
    assert not policy.check("child porn").blocked(threshold=-1)


def test_long_adversarial_prompts_stay_fast(policy: Policy) -> None:
    for prompt in ("a" * 4000, "a." * 2000, "k i " * 1000, "炸" * 4000, "kil" * 1333, "\u200b" * 4000):
        started = time.perf_counter()
        policy.check(prompt)
        assert time.perf_counter() - started < 0.5, prompt[:10]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_own_policy_replaces_the_shipped_one(tmp_path: Path) -> None:
    path = _write(tmp_path, '[categories.gambling]\nlevel = 1\nterms = ["online casino", "网络赌博"]\n')
    policy = load_policy(path)
    assert [c.name for c in policy.categories] == ["gambling"]
    assert policy.check("an Online-Casino ad").level == 1
    assert policy.check("网 络 赌 博").level == 1
    assert policy.check("child porn").level == CLEAN_LEVEL


def test_policy_extending_the_shipped_one(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'extends = "builtin"\n'
        '[categories.drugs]\nterms = ["lean"]\n'
        "[categories.nudity]\nlevel = 1\n"
        '[categories.gambling]\nlevel = 2\ndescription = "casinos"\nterms = ["online casino"]\n',
    )
    policy = load_policy(path)
    assert policy.check("child porn").level == 0  # shipped terms still apply
    assert ("drugs", 1) in {(h.category, h.level) for h in policy.check("a cup of lean").hits}
    assert policy.check("cocaine").level == 1  # the category kept its shipped terms
    assert policy.check("naked").level == 1  # level raised from 2
    assert policy.check("online casino").level == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[categories.x]\nlevel = 5\nterms = ['a b']\n", "categories.x.level must be an integer 0..3"),
        ("[categories.x]\nlevel = '1'\nterms = ['ab']\n", "categories.x.level must be an integer 0..3"),
        ("[categories.x]\nlevel = true\nterms = ['ab']\n", "categories.x.level must be an integer 0..3"),
        ("[categories.x]\nlevel = 1\n", "a new category needs both level (0..3) and terms"),
        ("[categories.x]\nlevel = 1\nterms = []\n", "categories.x.terms must be a non-empty list"),
        ("[categories.x]\nlevel = 1\nterms = 'ab'\n", "categories.x.terms must be a non-empty list"),
        ("[categories.x]\nlevel = 1\nterms = [1]\n", "every term must be a string"),
        ("[categories.x]\nlevel = 1\nterms = ['!!!']\n", "'!!!' has no letters or digits"),
        ("[categories.x]\nlevel = 1\nterm = ['ab']\n", "unknown key(s) ['term']"),
        ("[categories]\nx = 1\n", "categories.x must be a table"),
        ("extends = 'default'\n[categories.x]\nlevel = 1\nterms = ['ab']\n", 'extends must be "builtin"'),
        ("version = 2\n", "unknown key(s) ['version']"),
        ("extends = 'builtin'\n", "no [categories.NAME] tables"),
        ("[categories.x\n", "is not valid TOML"),
    ],
)
def test_malformed_policy_is_refused_with_the_problem_named(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read moderation policy"):
        load_policy(tmp_path / "nope.toml")
