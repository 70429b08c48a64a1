"""SMS encoding and segment counting on known vectors."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from dispatcher.templates.segments import GSM7_BASIC, GSM7_EXTENDED, SegmentInfo, sms_segments

CJK = "还"  # one BMP character outside GSM-7
EMOJI = "\U0001f600"  # outside the BMP: a surrogate pair, 2 UTF-16 units


def test_the_gsm7_tables_have_the_standard_sizes() -> None:
    assert len(GSM7_BASIC) == 127  # 128 code points minus the escape
    assert set("^{}\\[~]|€\f") == GSM7_EXTENDED
    assert not GSM7_BASIC & GSM7_EXTENDED


def test_160_gsm_characters_are_one_segment_161_are_two() -> None:
    assert sms_segments("a" * 160) == SegmentInfo("GSM-7", 160, 1)
    assert sms_segments("a" * 161) == SegmentInfo("GSM-7", 161, 2)


def test_concatenated_gsm_parts_hold_153() -> None:
    assert sms_segments("a" * 306) == SegmentInfo("GSM-7", 306, 2)
    assert sms_segments("a" * 307) == SegmentInfo("GSM-7", 307, 3)
    assert sms_segments("a" * 459).segments == 3
    assert sms_segments("a" * 460).segments == 4


def test_euro_and_the_other_extension_characters_count_double() -> None:
    assert sms_segments("€") == SegmentInfo("GSM-7", 2, 1)
    assert sms_segments("€" * 80) == SegmentInfo("GSM-7", 160, 1)
    assert sms_segments("a" * 159 + "€") == SegmentInfo("GSM-7", 161, 2)
    for ch in "^{}\\[~]|€\f":
        assert sms_segments(ch).units == 2, repr(ch)


def test_basic_set_characters_that_look_exotic_count_once() -> None:
    text = "£¥§¿¡ÄÖÑÜäöñüàèéùìòÇØøÅåÆæßÉΔΦΓΛΩΠΨΣΘΞ@$_!\"#%&'()*+,-./:;<=>?\n\r"
    assert sms_segments(text) == SegmentInfo("GSM-7", len(text), 1)


def test_an_extension_character_is_not_split_across_parts() -> None:
    # 306 septets would fill two 153-septet parts exactly, but the escape pair cannot
    # straddle the boundary, so the third part is needed.
    text = "a" * 152 + "€" + "a" * 152
    assert sms_segments(text) == SegmentInfo("GSM-7", 306, 3)


def test_70_chinese_characters_are_one_segment_71_are_two() -> None:
    assert sms_segments(CJK * 70) == SegmentInfo("UCS-2", 70, 1)
    assert sms_segments(CJK * 71) == SegmentInfo("UCS-2", 71, 2)


def test_concatenated_ucs2_parts_hold_67() -> None:
    assert sms_segments(CJK * 134) == SegmentInfo("UCS-2", 134, 2)
    assert sms_segments(CJK * 135) == SegmentInfo("UCS-2", 135, 3)
    assert sms_segments(CJK * 201) == SegmentInfo("UCS-2", 201, 3)
    assert sms_segments(CJK * 202) == SegmentInfo("UCS-2", 202, 4)


def test_one_non_gsm_character_turns_the_whole_message_into_ucs2() -> None:
    assert sms_segments("a" * 70) == SegmentInfo("GSM-7", 70, 1)
    assert sms_segments("a" * 69 + "×") == SegmentInfo("UCS-2", 70, 1)
    assert sms_segments("a" * 70 + "×") == SegmentInfo("UCS-2", 71, 2)
    assert sms_segments("It’s due").encoding == "UCS-2"  # a typographic apostrophe


def test_an_emoji_counts_two_units() -> None:
    assert sms_segments(EMOJI) == SegmentInfo("UCS-2", 2, 1)
    assert sms_segments(CJK * 68 + EMOJI) == SegmentInfo("UCS-2", 70, 1)
    assert sms_segments(CJK * 69 + EMOJI) == SegmentInfo("UCS-2", 71, 2)


def test_an_emoji_at_the_part_boundary_is_not_split() -> None:
    # 134 units would be exactly two 67-unit parts; the surrogate pair at units 67-68
    # moves to the second part, and the last character spills into a third.
    text = CJK * 66 + EMOJI + CJK * 66
    assert sms_segments(text) == SegmentInfo("UCS-2", 134, 3)
    # Shifted by one, the pair fits inside the first part and two parts suffice.
    assert sms_segments(CJK * 65 + EMOJI + CJK * 67) == SegmentInfo("UCS-2", 134, 2)


def test_empty_text_is_one_empty_message() -> None:
    assert sms_segments("") == SegmentInfo("GSM-7", 0, 1)


@given(st.text(max_size=700))
def test_segment_count_bounds(text: str) -> None:
    info = sms_segments(text)
    single, part = (160, 153) if info.encoding == "GSM-7" else (70, 67)
    if info.units <= single:
        assert info.segments == 1
    else:
        # Greedy packing wastes at most one unit per part (a 2-unit character).
        assert math.ceil(info.units / part) <= info.segments <= math.ceil(info.units / (part - 1))
    assert info.encoding == ("UCS-2" if any(c not in GSM7_BASIC | GSM7_EXTENDED for c in text) else "GSM-7")
