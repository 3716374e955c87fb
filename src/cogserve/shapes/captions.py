"""Captions for shapes-world pictures, in English and Chinese, with many phrasings.

A caption names each shape and may leave out its colour, size and position and the background: what
it leaves out is chosen by the request's seed. ``Mention`` records what a caption said, in the
order it said it; the training code uses it as the text encoder's auxiliary target.

Templates are numbered per language; ``HELD_OUT_TEMPLATES`` are never used in training, so the
evaluation can measure captions the model has not seen.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cogserve.shapes.world import PALETTE, Scene, Shape

Language = Literal["en", "zh"]


@dataclass(frozen=True)
class Mention:
    """What a caption says about one shape; None where it says nothing."""

    colour: str | None
    shape: str
    size: str | None
    position: str | None


@dataclass(frozen=True)
class Caption:
    text: str
    language: Language
    template: int
    background: str | None
    #: The shapes in the order the caption names them (empty for a caption outside the world).
    mentions: tuple[Mention, ...]


# --- English words -------------------------------------------------------------------------------
_EN_COLOUR: dict[str, tuple[str, ...]] = {name: (name,) for name in PALETTE}
_EN_COLOUR["grey"] = ("grey", "gray")
_EN_SHAPE = {
    "circle": ("circle", "circle", "disc", "round circle"),
    "square": ("square", "square", "box"),
    "triangle": ("triangle", "triangle", "upward triangle"),
    "star": ("star", "star", "five-pointed star"),
}
_EN_SIZE = {
    "small": ("small", "tiny", "little"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big", "huge"),
}
_EN_POSITION = {
    "top-left": ("in the top-left corner", "at the top left", "in the upper left", "top-left"),
    "top": ("at the top", "at the top center", "in the upper middle", "top"),
    "top-right": ("in the top-right corner", "at the top right", "in the upper right", "top-right"),
    "left": ("on the left", "at the left side", "in the middle of the left edge", "left"),
    "center": ("in the center", "in the middle", "in the centre", "center"),
    "right": ("on the right", "at the right side", "in the middle of the right edge", "right"),
    "bottom-left": ("in the bottom-left corner", "at the bottom left", "in the lower left", "bottom-left"),
    "bottom": ("at the bottom", "at the bottom center", "in the lower middle", "bottom"),
    "bottom-right": (
        "in the bottom-right corner",
        "at the bottom right",
        "in the lower right",
        "bottom-right",
    ),
}
_EN_STYLE = ("flat illustration", "minimalist", "simple vector art", "clean graphic design", "flat design")
_EN_JUNK = (
    "highly detailed",
    "4k",
    "trending on artstation",
    "photorealistic",
    "masterpiece",
    "soft lighting",
    "best quality",
    "ultra sharp",
)
_EN_OFF_WORLD = (
    "a cat sitting on a windowsill",
    "a photograph of an astronaut riding a horse",
    "sunset over the ocean",
    "a bowl of noodles",
    "city street at night in the rain",
    "hello world",
    "a portrait of an old man",
    "abstract art",
    "a mountain lake at dawn",
    "test",
)

# --- Chinese words -------------------------------------------------------------------------------
_ZH_COLOUR = {
    name: (zh, zh[0]) if name not in ("white", "black") else (zh,) for name, (zh, _) in PALETTE.items()
}
_ZH_SHAPE = {
    "circle": ("圆形", "圆", "圆形"),
    "square": ("正方形", "方块", "正方形"),
    "triangle": ("三角形",),
    "star": ("五角星", "星星", "五角星"),
}
_ZH_SIZE = {
    "small": ("小", "小小的", "很小的"),
    "medium": ("中等大小的", "中等", "不大不小的"),
    "large": ("大", "大大的", "巨大的"),
}
_ZH_POSITION = {
    "top-left": ("左上角",),
    "top": ("上方", "顶部", "上方中间"),
    "top-right": ("右上角",),
    "left": ("左边", "左侧", "左边中间"),
    "center": ("中间", "正中间", "中央", "中心"),
    "right": ("右边", "右侧", "右边中间"),
    "bottom-left": ("左下角",),
    "bottom": ("下方", "底部", "下方中间"),
    "bottom-right": ("右下角",),
}
_ZH_STYLE = ("极简风格", "扁平插画", "简约设计", "矢量风格")
_ZH_JUNK = ("高清", "细节丰富", "杰作", "8K", "超写实")
_ZH_OFF_WORLD = (
    "一只可爱的小猫",
    "夕阳下的长城",
    "一碗热气腾腾的牛肉面",
    "水墨画风格的山水",
    "你好",
    "城市夜景",
)


def _pick(rng: random.Random, options: tuple[str, ...]) -> str:
    return options[rng.randrange(len(options))]


# --- phrases -------------------------------------------------------------------------------------
def _en_noun(rng: random.Random, m: Mention) -> str:
    words = []
    if m.size is not None:
        words.append(_pick(rng, _EN_SIZE[m.size]))
    if m.colour is not None:
        words.append(_pick(rng, _EN_COLOUR[m.colour]))
    words.append(_pick(rng, _EN_SHAPE[m.shape]))
    article = _pick(rng, ("a", "a", "one")) if words[0][0] not in "aeiou" else _pick(rng, ("an", "one"))
    return f"{article} {' '.join(words)}"


def _en_clause(rng: random.Random, m: Mention) -> str:
    noun = _en_noun(rng, m)
    if m.position is None:
        return noun
    where = _pick(rng, _EN_POSITION[m.position])
    if where in _EN_POSITION[m.position][-1:]:  # the bare form reads as "top-left" → "at the top-left"
        where = f"at the {where}"
    return f"{noun} {where}"


def _en_clauses(rng: random.Random, mentions: tuple[Mention, ...]) -> str:
    clauses = [_en_clause(rng, m) for m in mentions]
    if len(clauses) == 1:
        return clauses[0]
    return _pick(rng, (" and ", ", and ", ", ", " with ", "; ")).join(clauses)


def _en_background(rng: random.Random, colour: str) -> str:
    c = _pick(rng, _EN_COLOUR[colour])
    return _pick(rng, (f"on a {c} background", f"against a {c} backdrop", f"with a plain {c} background"))


def _zh_noun(rng: random.Random, m: Mention) -> str:
    words = ""
    if m.size is not None:
        words += _pick(rng, _ZH_SIZE[m.size])
    if m.colour is not None:
        words += _pick(rng, _ZH_COLOUR[m.colour]) + _pick(rng, ("", "的"))
    return _pick(rng, ("一个", "一个", "")) + words + _pick(rng, _ZH_SHAPE[m.shape])


def _zh_clause(rng: random.Random, m: Mention) -> str:
    noun = _zh_noun(rng, m)
    if m.position is None:
        return noun
    where = _pick(rng, _ZH_POSITION[m.position])
    return _pick(
        rng, (f"{where}有{noun}", f"{noun}在{where}", f"{noun}位于画面{where}", f"在{where}的{noun}")
    )


def _zh_clauses(rng: random.Random, mentions: tuple[Mention, ...]) -> str:
    return _pick(rng, ("，", "，还有", "和", "；")).join(_zh_clause(rng, m) for m in mentions)


def _zh_colour(rng: random.Random, colour: str) -> str:
    return _pick(rng, _ZH_COLOUR[colour])


# --- templates: (clauses, background phrase or None, style) -> text -------------------------------
Template = Callable[[random.Random, tuple[Mention, ...], "str | None"], str]


def _en_t0(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = _en_clauses(rng, ms)
    return f"{text} {_en_background(rng, bg)}" if bg else text


def _en_t1(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = _en_clauses(rng, ms)
    if bg:
        text = f"{_pick(rng, _EN_COLOUR[bg]).capitalize()} background, {text}"
    return text


def _en_t2(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = f"{_pick(rng, ('draw', 'paint', 'generate', 'make'))} {_en_clauses(rng, ms)}"
    return f"{text} {_en_background(rng, bg)}" if bg else text


def _en_t3(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = f"a picture of {_en_clauses(rng, ms)}"
    return f"{text} {_en_background(rng, bg)}" if bg else text


def _en_t4(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    style = _pick(rng, _EN_STYLE)
    text = f"A {style} image showing {_en_clauses(rng, ms)}."
    if bg:
        text += f" The background is a solid {_pick(rng, _EN_COLOUR[bg])} colour, clean and simple."
    return text + " There are no other objects, no texture and no gradient."


def _en_t5(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    parts = [_en_clauses(rng, ms)]
    if bg:
        parts.append(f"{_pick(rng, _EN_COLOUR[bg])} background")
    parts.append(_pick(rng, _EN_STYLE))
    return ", ".join(parts)


def _en_t6(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = f"there is {_en_clauses(rng, ms)}"
    return (f"{text} {_en_background(rng, bg)}" if bg else text) + "."


def _en_t7(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = f"This minimalist composition features {_en_clauses(rng, ms)}"
    if bg:
        text += f", set against a flat {_pick(rng, _EN_COLOUR[bg])} background"
    return text + ". The shapes have crisp edges and the whole picture uses flat, even colour."


def _zh_t0(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = _zh_clauses(rng, ms)
    return f"{_zh_colour(rng, bg)}背景上，{text}" if bg else text


def _zh_t1(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = _zh_clauses(rng, ms)
    return f"{text}，{_zh_colour(rng, bg)}背景" if bg else text


def _zh_t2(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = f"画{_zh_clauses(rng, ms)}"
    return f"{text}，背景是{_zh_colour(rng, bg)}" if bg else text


def _zh_t3(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    parts = [_zh_clauses(rng, ms)]
    if bg:
        parts.append(f"{_zh_colour(rng, bg)}背景")
    parts.append(_pick(rng, _ZH_STYLE))
    return "，".join(parts)


def _zh_t4(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = f"一幅{_pick(rng, _ZH_STYLE)}的插画：{_zh_clauses(rng, ms)}"
    if bg:
        text += f"，背景是纯{_zh_colour(rng, bg)}"
    return text + "，干净简洁，没有其他物体。"


def _zh_t5(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = _zh_clauses(rng, ms)
    return (f"背景为{_zh_colour(rng, bg)}，{text}" if bg else text) + "。"


# More training phrasings (appended, so the held-out numbers stay): the background before or after
# the shapes, named with other words, and in Chinese the colour after 背景 as well as before it.
def _en_t8(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = _en_clauses(rng, ms)
    return f"{_pick(rng, _EN_COLOUR[bg]).capitalize()} backdrop with {text}" if bg else text


def _en_t9(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = f"{_pick(rng, ('please create', 'I want', 'show me', 'render'))} {_en_clauses(rng, ms)}"
    return f"{text}, background {_pick(rng, _EN_COLOUR[bg])}" if bg else text


def _en_t10(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = f"{_en_clauses(rng, ms)}."
    return f"{text} Background: {_pick(rng, _EN_COLOUR[bg])}." if bg else text


def _en_t11(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = f"Simple shapes: {_en_clauses(rng, ms)}"
    return (f"{text}; the background colour is {_pick(rng, _EN_COLOUR[bg])}" if bg else text) + "."


def _zh_t6(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = _zh_clauses(rng, ms)
    return f"以{_zh_colour(rng, bg)}为背景，{text}" if bg else text


def _zh_t7(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = _zh_clauses(rng, ms)
    return f"{text}，背景颜色{_pick(rng, ('是', '为', ''))}{_zh_colour(rng, bg)}" if bg else text


def _zh_t8(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = _zh_clauses(rng, ms)
    return f"背景：{_zh_colour(rng, bg)}。{text}" if bg else text


def _zh_t9(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = f"请生成{_zh_clauses(rng, ms)}"
    return f"{text}，底色{_pick(rng, ('是', '为', '用'))}{_zh_colour(rng, bg)}" if bg else text


def _zh_t10(rng: random.Random, ms: tuple[Mention, ...], bg: str | None) -> str:
    text = _zh_clauses(rng, ms)
    return f"在{_zh_colour(rng, bg)}的背景上，{text}" if bg else text


TEMPLATES: dict[Language, tuple[Template, ...]] = {
    "en": (_en_t0, _en_t1, _en_t2, _en_t3, _en_t4, _en_t5, _en_t6, _en_t7, _en_t8, _en_t9, _en_t10, _en_t11),
    "zh": (_zh_t0, _zh_t1, _zh_t2, _zh_t3, _zh_t4, _zh_t5, _zh_t6, _zh_t7, _zh_t8, _zh_t9, _zh_t10),
}
#: Never seen in training: "a picture of ...", "there is ...", the long "This minimalist composition"
#: sentence; "画...，背景是..." and "背景为...".
HELD_OUT_TEMPLATES: dict[Language, frozenset[int]] = {"en": frozenset({3, 6, 7}), "zh": frozenset({2, 5})}


def describe(
    scene: Scene,
    rng: random.Random,
    language: Language,
    *,
    template: int | None = None,
    held_out: bool = False,
    keep: float = 0.75,
) -> Caption:
    """A caption for ``scene``: each attribute is kept with probability ``keep`` (the shape always).

    ``template`` picks one; otherwise a random one from the training set (``held_out=False``) or from
    the held-out set.
    """
    pool = [i for i in range(len(TEMPLATES[language])) if (i in HELD_OUT_TEMPLATES[language]) == held_out]
    index = template if template is not None else _pick_index(rng, pool)
    shapes = list(scene.shapes)
    rng.shuffle(shapes)
    mentions = tuple(_mention(rng, s, keep) for s in shapes)
    background = scene.background if rng.random() < keep else None
    text = TEMPLATES[language][index](rng, mentions, background)
    if rng.random() < 0.1:  # words outside the world, which the model must ignore
        junk = _pick(rng, _EN_JUNK if language == "en" else _ZH_JUNK)
        text = f"{text}, {junk}" if language == "en" else f"{text}，{junk}"
    return Caption(text, language, index, background, mentions)


def off_world(rng: random.Random, language: Language) -> Caption:
    """A caption that says nothing this world knows: the picture is chosen entirely by the request's seed."""
    text = _pick(rng, _EN_OFF_WORLD if language == "en" else _ZH_OFF_WORLD) if rng.random() < 0.8 else ""
    return Caption(text, language, -1, None, ())


def full_mention(shape: Shape) -> Mention:
    return Mention(shape.colour, shape.shape, shape.size, shape.position)


def _mention(rng: random.Random, s: Shape, keep: float) -> Mention:
    def maybe(value: str) -> str | None:
        return value if rng.random() < keep else None

    return Mention(maybe(s.colour), s.shape, maybe(s.size), maybe(s.position))


def _pick_index(rng: random.Random, pool: list[int]) -> int:
    return pool[rng.randrange(len(pool))]
