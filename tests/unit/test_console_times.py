"""The console shows the instants inside a decision's reason as it shows every time: in
the debtor's zone, to the minute, with the offset (`web.console_ui.explain`)."""

from __future__ import annotations

from dispatcher.web.console_ui import detail, explain


def test_an_iso_instant_in_a_reason_is_shown_in_the_debtors_zone() -> None:
    shown = explain("DPD 30 (due 2026-11-07), stage dpd30; collector_hold hold active until"
                    " 2026-12-19T16:00:00+00:00", "Asia/Shanghai")
    assert shown == ('DPD 30 (due 2026-11-07), stage dpd30; collector_hold hold active until <time'
                     ' datetime="2026-12-19T16:00:00+00:00" title="Asia/Shanghai">2026-12-20 00:00 +08:00</time>')


def test_a_zone_named_local_time_gets_its_offset_and_keeps_a_foreign_zones_name() -> None:
    text = ("07:00 Mon 2026-12-07 America/Chicago is outside the contact hours 08:00-21:00;"
            " next legal moment Mon 2026-12-07 09:00 America/Chicago; template sms/dpd30/v1")
    shown = str(explain(text, "America/New_York"))
    assert ">2026-12-07 07:00 -06:00</time> (America/Chicago) is outside" in shown
    assert "next legal moment Mon <time" in shown and ">2026-12-07 09:00 -06:00</time> (America/Chicago);" in shown
    same_zone = str(explain("next legal moment Wed 2026-05-06 09:00 Asia/Shanghai", "Asia/Shanghai"))
    assert same_zone.endswith(">2026-05-06 09:00 +08:00</time>")


def test_the_rest_of_a_reason_is_escaped_and_left_as_it_is() -> None:
    assert explain("Sat 2026-05-02 is a public holiday (Labour Day) <b>", "Asia/Shanghai") == (
        "Sat 2026-05-02 is a public holiday (Labour Day) &lt;b&gt;")
    # the hour a summer time ends happens twice: that reading is left as the core wrote it
    ambiguous = "01:30 Sun 2026-11-01 America/New_York is outside the contact hours"
    assert explain(ambiguous, "America/New_York") == ambiguous
    assert explain("", "UTC") == "" and explain(None, "UTC") == ""


def test_a_timeline_detail_with_instants_in_it_is_shown_the_same_way() -> None:
    why = ("collector_hold: DPD 30 (due 2026-11-07), stage dpd30; collector_hold hold active until"
           " 2026-12-19T16:00:00+00:00")
    shown = str(detail(why, "Asia/Shanghai"))
    assert shown.endswith('title="Asia/Shanghai">2026-12-20 00:00 +08:00</time>') and "+00:00<" not in shown
    assert detail("2026-12-19T16:00:00+00:00", "Asia/Shanghai") == "2026-12-20 00:00 +08:00"
    assert detail(3, "Asia/Shanghai") == 3 and detail("<b>", "UTC") == "&lt;b&gt;"
