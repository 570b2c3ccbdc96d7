"""Policy v0: parsing (with exact error positions), evaluation, loading a directory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threezone.errors import PolicyError, PolicyProblem
from threezone.policy import (
    DEFAULT_DENY_REF,
    POLICY_ERROR_REF,
    Condition,
    Policy,
    PolicyDecision,
    Rate,
    could_allow,
    evaluate,
    parse_policy,
)
from threezone.policy.evaluate import glob_match
from threezone.policy.loader import check_policy_dir, load_policy_dir
from threezone.policy.model import Origin
from threezone.protocol.messages import Channel, Trigger

ORIGIN_VALUES: tuple[Origin, ...] = ("trusted", "content", "planner")

FILE = "policy.d/10-test.policy"
LISTS: dict[str, frozenset[str]] = {
    "contacts": frozenset({"alice@example.com", "bob@example.com"}),
    "owner": frozenset({"owner@example.com"}),
}


def trig(
    *,
    channel: Channel = "email",
    sender: str | None = "alice@example.com",
    authenticated: bool = True,
    flagged: bool = False,
) -> Trigger:
    return Trigger(
        channel=channel,
        account="me@example.com",
        sender=sender,
        sender_authenticated=authenticated,
        received_at="2024-01-01T00:00:00Z",
        flagged=flagged,
    )


def decide(
    text: str,
    action: str,
    args: Mapping[str, str | int | bool] | None = None,
    trigger: Trigger | None = None,
    lists: Mapping[str, frozenset[str]] = LISTS,
) -> PolicyDecision:
    policy = Policy(parse_policy(text, FILE))
    return evaluate(policy, action, args or {}, trigger or trig(), lists)


def problems_of(text: str, known_lists: frozenset[str] | None = None) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, FILE, known_lists)
    return [str(p) for p in info.value.problems]


# --- evaluation ---------------------------------------------------------------------------------


def test_first_matching_rule_wins() -> None:
    text = "email.send * ask\nemail.send * allow\n"
    result = decide(text, "email.send")
    assert (result.decision, result.rule) == ("ask", f"{FILE}:1")
    assert result.rule_text == "email.send * ask"


def test_later_rule_decides_when_earlier_conditions_fail() -> None:
    text = "email.send to=@owner allow\nemail.send * ask\n"
    result = decide(text, "email.send", {"to": "alice@example.com"})
    assert (result.decision, result.rule) == ("ask", f"{FILE}:2")


def test_action_case_cannot_slip_past_a_deny() -> None:
    text = "email.send * deny\n* * allow\n"
    assert decide(text, "EMAIL.Send").decision == "deny"


def test_no_matching_rule_denies_by_default() -> None:
    result = decide("email.send * allow\n", "telegram.send_message")
    assert result == PolicyDecision(
        "deny",
        DEFAULT_DENY_REF,
        "",
        "no rule matched 'telegram.send_message'; denied by default",
        None,
    )


def test_default_deny_names_rules_whose_conditions_failed() -> None:
    result = decide("email.send to=@owner allow\n", "email.send", {"to": "x@example.com"})
    assert result.rule == DEFAULT_DENY_REF
    assert f"conditions did not hold at {FILE}:1" in result.reason


def test_empty_policy_denies() -> None:
    result = evaluate(Policy(()), "email.send", {}, trig(), LISTS)
    assert (result.decision, result.rule) == ("deny", DEFAULT_DENY_REF)


def test_star_action_matches_anything() -> None:
    assert decide("* * allow\n", "telegram.send_message").decision == "allow"


@pytest.mark.parametrize(
    ("pattern", "action", "matches"),
    [
        ("email.*", "email.send", True),
        ("email.*", "email.draft.save", True),
        ("email.*", "telegram.send_message", False),
        ("email.*", "emailx.send", False),
        ("*.send", "email.send", True),
        ("*.send", "email.send_later", False),
        ("email.send_*", "email.send_later", True),
        ("email.send", "email.send_later", False),
    ],
)
def test_glob_action(pattern: str, action: str, matches: bool) -> None:
    expected = "allow" if matches else "deny"
    assert decide(f"{pattern} * allow\n", action).decision == expected


def test_matching_reason_names_rule_and_conditions() -> None:
    result = decide(
        "email.* to=@contacts allow rate=5/m\n", "email.send", {"to": "bob@example.com"}
    )
    assert result.reason == f"'email.send' matched 'email.*' at {FILE}:1 (to=@contacts): allow"
    assert result.rate == Rate(5, 60, "5/m")


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        ("alice@example.com", "allow"),
        ("Alice@EXAMPLE.com", "allow"),  # values compare case-insensitively
        ("mallory@evil.example", "deny"),
    ],
)
def test_list_membership(to: str, expected: str) -> None:
    assert decide("email.send to=@contacts allow\n", "email.send", {"to": to}).decision == expected


@pytest.mark.parametrize("op", ["=", "!="])
def test_unknown_list_at_evaluation_is_false(op: str) -> None:
    text = f"email.send to{op}@nobody allow\n"
    assert decide(text, "email.send", {"to": "alice@example.com"}).decision == "deny"


@pytest.mark.parametrize(
    ("to", "expected"), [("alice@example.com", "deny"), ("mallory@evil.example", "allow")]
)
def test_negation(to: str, expected: str) -> None:
    text = "email.send to!=@contacts allow\n"
    assert decide(text, "email.send", {"to": to}).decision == expected


@pytest.mark.parametrize("op", ["=", "!="])
def test_absent_argument_fails_closed(op: str) -> None:
    text = f"email.send to{op}someone@example.com allow\n"
    result = decide(text, "email.send", {"subject": "hi"})
    assert (result.decision, result.rule) == ("deny", DEFAULT_DENY_REF)


@pytest.mark.parametrize(
    ("value", "to", "expected"),
    [
        ("*@example.com", "carol@Example.COM", "allow"),
        ("*@example.com", "carol@example.com.evil", "deny"),
        ("Carol@Example.com", "carol@example.com", "allow"),  # literal, case-insensitive
        ("carol*", "carol", "allow"),
        ("a*b*c", "aXbYc", "allow"),
        ("a*b*c", "acb", "deny"),
    ],
)
def test_glob_and_literal_values(value: str, to: str, expected: str) -> None:
    assert decide(f"email.send to={value} allow\n", "email.send", {"to": to}).decision == expected


@pytest.mark.parametrize(
    ("condition", "args", "expected"),
    [
        ("urgent=true", {"urgent": True}, "allow"),
        ("urgent=true", {"urgent": False}, "deny"),
        ("urgent=false", {"urgent": False}, "allow"),
        ("urgent=true", {"urgent": "TRUE"}, "allow"),
        ("count=3", {"count": 3}, "allow"),
        ("count=3", {"count": 30}, "deny"),
        ("count=1", {"count": True}, "deny"),  # a bool is true/false, never 1
    ],
)
def test_booleans_and_integers(
    condition: str, args: dict[str, str | int | bool], expected: str
) -> None:
    assert decide(f"task.run {condition} allow\n", "task.run", args).decision == expected


def test_huge_integer_argument_is_absent_not_a_crash() -> None:
    result = decide("task.run count!=1 allow\n", "task.run", {"count": 10**5000})
    assert result.decision == "deny"


@pytest.mark.parametrize(
    ("condition", "trigger", "expected"),
    [
        ("trigger.channel=email", trig(channel="email"), "allow"),
        ("trigger.channel=email", trig(channel="telegram"), "deny"),
        ("trigger.channel!=email", trig(channel="slack"), "allow"),
        ("trigger.sender=@contacts", trig(sender="bob@example.com"), "allow"),
        ("trigger.sender=@contacts", trig(sender=None, authenticated=False), "deny"),
        ("trigger.sender!=@contacts", trig(sender=None, authenticated=False), "deny"),
        ("trigger.sender=*", trig(sender=None, authenticated=False), "deny"),
        # Even if a sender were filled in, it only counts once authenticated.
        ("trigger.sender=@contacts", trig(sender="bob@example.com", authenticated=False), "deny"),
        ("trigger.flagged=true", trig(flagged=True), "allow"),
        ("trigger.flagged=true", trig(flagged=False), "deny"),
        ("trigger.flagged=false", trig(flagged=False), "allow"),
        ("trigger.sender_authenticated=false", trig(sender=None, authenticated=False), "allow"),
        ("trigger.account=ME@example.com", trig(), "allow"),
    ],
)
def test_trigger_conditions(condition: str, trigger: Trigger, expected: str) -> None:
    assert (
        decide(f"email.send {condition} allow\n", "email.send", trigger=trigger).decision
        == expected
    )


def test_all_conditions_must_hold() -> None:
    text = "email.reply to=@contacts trigger.sender=@contacts allow\n"
    args = {"to": "alice@example.com"}
    assert decide(text, "email.reply", args, trig(sender="bob@example.com")).decision == "allow"
    assert decide(text, "email.reply", args, trig(sender="eve@example.com")).decision == "deny"


def test_flagged_deny_shadows_later_allow() -> None:
    text = "email.* trigger.flagged=true deny\nemail.draft * allow\n"
    assert decide(text, "email.draft", trigger=trig(flagged=True)).decision == "deny"
    assert decide(text, "email.draft", trigger=trig(flagged=False)).decision == "allow"


def test_broken_policy_denies_naming_the_problems() -> None:
    problems = [PolicyProblem(FILE, 3, 14, "boom"), PolicyProblem(FILE, 4, 1, "bang")]
    result = evaluate(Policy.deny_all(PolicyError(problems)), "email.send", {}, trig(), LISTS)
    assert result == PolicyDecision(
        "deny",
        POLICY_ERROR_REF,
        "",
        f"policy failed to parse: {FILE}:3:14: boom (and 1 more problem)",
        None,
    )


def test_long_reason_is_capped() -> None:
    action = "a." + "b" * 5000
    assert len(decide("* * deny\n", action).reason) <= 1000


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("*", "", True),
        ("", "", True),
        ("", "a", False),
        ("**", "abc", True),
        ("a*a", "a", False),
        ("a*a", "aa", True),
        ("*ab*ab*", "xabyab", True),
        ("*ab*ab*", "xaby", False),
        ("a*b*a", "aba", True),
        ("a*b*a", "aab", False),
    ],
)
def test_glob_match(pattern: str, text: str, matches: bool) -> None:
    assert glob_match(pattern, text) is matches


# --- could_allow --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "action", "expected"),
    [
        ("email.send to=@contacts allow\n", "email.send", True),
        ("email.* * ask\n", "email.send", True),
        ("email.send * deny\n", "email.send", False),
        ("email.send * allow\n", "telegram.send_message", False),
        ("email.* * deny\nemail.send * allow\n", "email.send", False),  # shadowed
        ("email.* trigger.flagged=true deny\nemail.send * allow\n", "email.send", True),
        ("", "email.send", False),
    ],
)
def test_could_allow(text: str, action: str, expected: bool) -> None:
    assert could_allow(Policy(parse_policy(text, FILE)), action) is expected


def test_could_allow_is_false_for_a_broken_policy() -> None:
    broken = Policy.deny_all(PolicyError([PolicyProblem(FILE, 1, 1, "x")]))
    assert could_allow(broken, "email.send") is False


# --- parsing ------------------------------------------------------------------------------------


DESIGN_EXAMPLE = """\
# action               conditions                               decision  limits
email.reply            to=@contacts trigger.sender=@contacts    allow     rate=20/h
email.draft            *                                        allow
email.send             to=@contacts                             ask
email.*                trigger.flagged=true                     deny
*                      *                                        deny
"""


def test_parses_the_example() -> None:
    rules = parse_policy(DESIGN_EXAMPLE, FILE, frozenset({"contacts"}))
    assert [(r.action, r.decision, r.line) for r in rules] == [
        ("email.reply", "allow", 2),
        ("email.draft", "allow", 3),
        ("email.send", "ask", 4),
        ("email.*", "deny", 5),
        ("*", "deny", 6),
    ]
    assert rules[0].conditions == (
        Condition("to", "=", "contacts", "list", 24),
        Condition("trigger.sender", "=", "contacts", "list", 37),
    )
    assert rules[0].rate == Rate(20, 3600, "20/h")
    assert rules[0].ref == f"{FILE}:2"
    assert rules[1].conditions == ()
    assert rules[3].conditions == (Condition("trigger.flagged", "=", "true", "literal", 24),)


def test_condition_kinds_and_negation() -> None:
    (rule,) = parse_policy("x.y a!=@l b=*.com c=lit d=a#b allow\n", FILE)
    assert rule.conditions == (
        Condition("a", "!=", "l", "list", 5),
        Condition("b", "=", "*.com", "glob", 11),
        Condition("c", "=", "lit", "literal", 19),
        Condition("d", "=", "a#b", "literal", 25),  # '#' inside a token is data
    )
    assert [c.text for c in rule.conditions] == ["a!=@l", "b=*.com", "c=lit", "d=a#b"]


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        ("1/s", Rate(1, 1, "1/s")),
        ("30/m", Rate(30, 60, "30/m")),
        ("20/h", Rate(20, 3600, "20/h")),
        ("999999999/d", Rate(999999999, 86400, "999999999/d")),
    ],
)
def test_rate(rate: str, expected: Rate) -> None:
    (rule,) = parse_policy(f"email.send * ask rate={rate}\n", FILE)
    assert rule.rate == expected


def test_comments_and_blank_lines() -> None:
    text = "# only a comment\n\n   \n\t# indented comment\nemail.send * allow # trailing\n"
    (rule,) = parse_policy(text, FILE)
    assert (rule.line, rule.text) == (5, "email.send * allow")


def test_file_of_only_comments_is_valid_and_empty() -> None:
    assert parse_policy("# nothing here\n\n#more\n", FILE) == ()
    assert parse_policy("", FILE) == ()


def test_crlf_line_endings() -> None:
    (rule,) = parse_policy("# c\r\nemail.send * allow\r\n", FILE)
    assert (rule.line, rule.text, rule.decision) == (2, "email.send * allow", "allow")


PARSE_ERRORS = [
    # (line, col, message)
    ("Email.send * allow", 1, "invalid action pattern 'Email.send'"),
    ("email * allow", 1, "invalid action pattern 'email'"),
    ("email.se-nd * allow", 1, "invalid action pattern"),
    ("email.send", 11, "expected conditions ('*' or subject=value) after the action"),
    ("email.send to=x", 16, "expected a decision (allow, deny, ask) after the conditions"),
    ("email.send *", 13, "expected a decision (allow, deny, ask) after the conditions"),
    ("email.send allow", 12, "expected conditions ('*' or subject=value) before 'allow'"),
    (
        "email.send to=x maybe",
        17,
        "expected a condition (subject=value, subject~regex, subject<=N, ...)",
    ),
    ("email.send to=x Allow", 17, "got 'Allow' (decisions are lowercase)"),
    ("email.send to=x alow extra", 17, "got 'alow'"),  # one typo, one problem
    ("email.send * to=x allow", 14, "'*' means no conditions and cannot be combined"),
    ("email.send * maybe", 14, "expected a decision (allow, deny, ask) after the conditions"),
    ("email.send =x allow", 12, "expected a subject"),
    ("email.send !=x allow", 12, "expected a subject"),
    ("email.send To=x allow", 12, "invalid subject 'To'"),
    ("email.send a.b=x allow", 12, "invalid subject 'a.b'"),
    ("email.send trigger.sendr=x allow", 20, "unknown trigger field 'sendr'; expected one of"),
    ("email.send to= allow", 15, "expected a value after '='"),
    ("email.send to!= allow", 16, "expected a value after '!='"),
    ("email.send to=@ allow", 15, "invalid list name '@'"),
    ("email.send to=@Big allow", 15, "invalid list name '@Big'"),
    ("email.send trigger.flagged=yes allow", 28, "expected true or false for trigger.flagged"),
    ("email.send trigger.flagged=t* allow", 28, "expected true or false"),
    ("email.send trigger.sender_authenticated=@l allow", 41, "expected true or false"),
    ("email.send trigger.channel=emial allow", 28, "unknown value 'emial' for trigger.channel"),
    ("email.send * allow 20/h", 20, "expected a limit like rate=20/h after the decision"),
    ("email.send * allow burst=3", 20, "unknown limit 'burst'"),
    ("email.send * deny rate=1/h", 19, "limits are only allowed on allow and ask rules"),
    ("email.send * allow rate=1/h rate=2/h", 29, "duplicate limit 'rate'"),
    ("email.send * allow rate=0/h", 25, "expected a rate like 20/h"),
    ("email.send * allow rate=20/w", 25, "expected a rate like 20/h"),
    ("email.send * allow rate=20", 25, "expected a rate like 20/h"),
    ("email.send * allow rate=1000000000/h", 25, "expected a rate like 20/h"),
    ("email.send * allow rate=", 25, "expected a rate like 20/h"),
]


@pytest.mark.parametrize(("line", "col", "message"), PARSE_ERRORS)
def test_parse_error_position_and_message(line: str, col: int, message: str) -> None:
    (problem,) = problems_of(f"# header\n{line}\n")
    assert problem.startswith(f"{FILE}:2:{col}: ")
    assert message in problem


def test_unknown_list_is_an_error_when_lists_are_known() -> None:
    text = "email.send to=@contacts trigger.sender=@contcts allow\n"
    assert problems_of(text, frozenset({"contacts", "owner"})) == [
        f"{FILE}:1:40: unknown list '@contcts'; known lists: @contacts, @owner"
    ]
    assert problems_of(text, frozenset()) == [
        f"{FILE}:1:15: unknown list '@contacts'; known lists: none are configured",
        f"{FILE}:1:40: unknown list '@contcts'; known lists: none are configured",
    ]
    assert len(parse_policy(text, FILE)) == 1  # without known_lists, any name parses


def test_tab_counts_as_one_column() -> None:
    assert problems_of("email.send\tto=x\tmaybe\n")[0].startswith(f"{FILE}:1:17: ")


def test_all_errors_in_a_file_are_collected_in_order() -> None:
    text = (
        "email.send to=x\n"  # missing decision
        "email.draft * allow\n"  # fine
        "email.send trigger.sendr=x allow burst=3\n"  # two problems on one line
        "# comment\n"
        "* * deny rate=1/h\n"
    )
    problems = problems_of(text)
    assert [p.split(": ")[0] for p in problems] == [
        f"{FILE}:1:16",
        f"{FILE}:3:20",
        f"{FILE}:3:34",
        f"{FILE}:5:10",
    ]


def test_policy_error_carries_structured_problems() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy("\n\nemail.send * allow rate=0/h\n", FILE)
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.col) == (FILE, 3, 25)


# --- loading a directory ------------------------------------------------------------------------


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_files_are_read_in_name_order(tmp_path: Path) -> None:
    write(tmp_path, "20-later.policy", "email.send * deny\n")
    write(tmp_path, "10-first.policy", "# first\nemail.send * allow\n")
    policy = load_policy_dir(tmp_path)
    assert [r.ref for r in policy.rules] == [
        f"{tmp_path / '10-first.policy'}:2",
        f"{tmp_path / '20-later.policy'}:1",
    ]
    assert evaluate(policy, "email.send", {}, trig(), LISTS).decision == "allow"


def test_only_visible_policy_files_are_read(tmp_path: Path) -> None:
    write(tmp_path, "10.policy", "email.send * allow\n")
    write(tmp_path, ".#10.policy", "this is an editor lock file\n")
    write(tmp_path, "10.policy~", "garbage\n")
    write(tmp_path, "README", "garbage\n")
    policy = load_policy_dir(tmp_path)
    assert policy.error is None
    assert len(policy.rules) == 1


def test_broken_file_denies_everything(tmp_path: Path) -> None:
    write(tmp_path, "10-ok.policy", "* * allow\n")
    bad = write(tmp_path, "20-mail.policy", "\n\nemail.send trigger.sendr=x allow\n")
    policy = load_policy_dir(tmp_path)
    assert policy.rules == ()
    result = evaluate(policy, "email.send", {}, trig(), LISTS)
    assert (result.decision, result.rule, result.rule_text) == ("deny", POLICY_ERROR_REF, "")
    assert result.reason.startswith(f"policy failed to parse: {bad}:3:20: unknown trigger field")
    assert could_allow(policy, "email.send") is False


def test_problems_of_all_files_are_reported(tmp_path: Path) -> None:
    first = write(tmp_path, "10.policy", "email.send\n")
    write(tmp_path, "20.policy", "email.send * allow\n")
    third = write(tmp_path, "30.policy", "x.y * deny rate=1/h\n")
    expected = [f"{first}:1:11", f"{third}:1:12"]
    assert [str(p).split(": ")[0] for p in check_policy_dir(tmp_path)] == expected
    error = load_policy_dir(tmp_path).error
    assert error is not None
    assert [str(p).split(": ")[0] for p in error.problems] == expected


def test_known_lists_are_checked_by_the_loader(tmp_path: Path) -> None:
    write(tmp_path, "10.policy", "email.send to=@frends allow\n")
    (problem,) = check_policy_dir(tmp_path, frozenset({"friends"}))
    assert problem.message == "unknown list '@frends'; known lists: @friends"
    assert check_policy_dir(tmp_path) == []


def test_missing_or_empty_directory_has_no_rules(tmp_path: Path) -> None:
    for directory in (tmp_path / "absent", tmp_path):
        policy = load_policy_dir(directory)
        assert policy == Policy(())
        assert evaluate(policy, "email.send", {}, trig(), LISTS).rule == DEFAULT_DENY_REF
        assert check_policy_dir(directory) == []


def test_non_utf8_file_is_a_problem_at_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "10.policy"
    path.write_bytes(b"* * deny\nemail.\xe9send * allow\n")
    (problem,) = check_policy_dir(tmp_path)
    assert (problem.file, problem.line, problem.col) == (str(path), 2, 7)
    assert "UTF-8" in problem.message
    assert load_policy_dir(tmp_path).error is not None


def test_utf8_bom_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "10.policy").write_bytes(b"\xef\xbb\xbfemail.send * allow\n")
    assert [r.action for r in load_policy_dir(tmp_path).rules] == ["email.send"]


def test_unreadable_entries_deny_everything(tmp_path: Path) -> None:
    (tmp_path / "10.policy").mkdir()  # a directory where a file should be
    problems = check_policy_dir(tmp_path)
    assert [(p.file, p.line, p.col) for p in problems] == [(str(tmp_path / "10.policy"), 1, 1)]
    assert "cannot read the policy file" in problems[0].message
    not_a_dir = write(tmp_path, "plain", "")
    policy = load_policy_dir(not_a_dir)
    assert policy.error is not None
    assert "cannot list the policy directory" in str(policy.error)


# --- properties ---------------------------------------------------------------------------------

ARG_NAMES = ("to", "chat", "count", "urgent", "subject")
VALUES: tuple[str, ...] = (
    *("x", "alice@example.com", "*", "*@example.com", "true", "false", "3", "@contacts"),
    *("@owner", "@nobody", "email", "", "a*b", "{a,b*}", "{", "{}", "{a,,b}", "{@x}", "10"),
    *("-3", "content", "trusted", "planner", "[a-", "(x+)+$", ".*@x\\.com", "a{1000}{1000}"),
)
SUBJECTS: tuple[str, ...] = (
    *(*ARG_NAMES, "trigger.channel", "trigger.sender", "trigger.flagged"),
    *("trigger.sender_authenticated", "trigger.account", "trigger.sendr", "To", ""),
    *("len(body)", "origin(to)", "domain(to)", "len()", "size(to)", "origin(To)", "len(x"),
)
VOCABULARY = (
    *("*", "email.*", "email.send", "allow", "deny", "ask", "Allow", "#", "# c", "rate=20/h"),
    *("rate=0/h", "rate=", "burst=1", "=", "!=", "@", "\t", " ", "\n", "\r\n", "\x00", "é"),
)


@st.composite
def token_soup(draw: st.DrawFn) -> str:
    """Text made of policy-ish pieces, so the parser's deeper paths get exercised."""
    pieces = draw(
        st.lists(
            st.one_of(
                st.sampled_from(VOCABULARY),
                st.builds(
                    lambda s, op, v: f"{s}{op}{v}",
                    st.sampled_from(SUBJECTS),
                    st.sampled_from(("=", "!=", "==", "~", "!~", "<", "<=", ">", ">=", "=<")),
                    st.sampled_from(VALUES),
                ),
                st.text(max_size=5),
            ),
            max_size=40,
        )
    )
    separators = draw(st.lists(st.sampled_from((" ", "\t", "\n")), min_size=len(pieces)))
    return "".join(p + s for p, s in zip(pieces, separators, strict=False))


@given(st.one_of(st.text(), token_soup()))
@settings(max_examples=500)
def test_parse_raises_only_policy_error(text: str) -> None:
    known = frozenset({"contacts", "owner"})
    problems: list[PolicyProblem] = []
    try:
        rules = parse_policy(text, FILE, known)
    except PolicyError as exc:
        problems = exc.problems
        assert problems, "a PolicyError must carry at least one problem"
    else:
        assert all(r.decision in ("allow", "deny", "ask") for r in rules)
    line_count = text.count("\n") + 1
    assert all(1 <= p.line <= line_count and p.col >= 1 for p in problems)


# Patterns all start with "email" or "chat", so no action under "zz." can match them.
CLOSED_PATTERNS = ("email.send", "email.*", "email.re*", "chat.post", "chat.*", "email.*.x")


GENERAL_VALUES = ("x", "*", "*@example.com", "@contacts", "@nobody", "3", "true", "email")


def _conditions(subjects: tuple[str, ...], values: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.builds(
        lambda s, op, v: f"{s}{op}{v}",
        st.sampled_from(subjects),
        st.sampled_from(("=", "!=")),
        st.sampled_from(values),
    )


@st.composite
def rule_lines(draw: st.DrawFn, patterns: tuple[str, ...]) -> str:
    """A valid policy text with random rules over ``patterns``."""
    condition = st.one_of(
        _conditions((*ARG_NAMES, "trigger.sender", "trigger.account"), GENERAL_VALUES),
        _conditions(("origin(to)", "origin(body)"), ("content", "{trusted,planner}", "@owner")),
        _conditions(("len(body)", "count"), ("0", "100", "-1")),
        st.builds(
            lambda s, op, v: f"{s}{op}{v}",
            st.sampled_from(("to", "domain(to)", "trigger.sender")),
            st.sampled_from(("~", "!~")),
            st.sampled_from((".*@example\\.com", "a|b", "[0-9]+")),
        ),
        st.builds(
            lambda s, op, v: f"{s}{op}{v}",
            st.sampled_from(("len(to)", "count")),
            st.sampled_from(("<", "<=", ">", ">=")),
            st.sampled_from(("0", "5", "-2")),
        ),
        _conditions(("trigger.channel",), ("email", "slack", "e*", "@contacts")),
        _conditions(("trigger.flagged", "trigger.sender_authenticated"), ("true", "false")),
    )
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        conds = draw(st.lists(condition, max_size=3))
        decision = draw(st.sampled_from(("allow", "deny", "ask")))
        rate = " rate=3/h" if decision != "deny" and draw(st.booleans()) else ""
        lines.append(f"{draw(st.sampled_from(patterns))} {' '.join(conds) or '*'} {decision}{rate}")
    return "\n".join(lines)


arg_values = st.one_of(st.text(max_size=30), st.integers(), st.booleans())
arg_maps = st.dictionaries(st.sampled_from(ARG_NAMES), arg_values, max_size=5)
triggers = st.builds(
    Trigger,
    channel=st.sampled_from(("email", "telegram", "slack")),
    account=st.text(max_size=20),
    sender=st.one_of(st.none(), st.text(max_size=30), st.just("alice@example.com")),
    sender_authenticated=st.booleans(),
    received_at=st.text(max_size=5),
    flagged=st.booleans(),
)
list_maps = st.dictionaries(
    st.sampled_from(("contacts", "owner", "other")),
    st.frozensets(st.text(max_size=20).map(str.lower), max_size=4),
    max_size=3,
)


@given(
    rule_lines(CLOSED_PATTERNS),
    st.from_regex(r"zz(\.[a-z][a-z0-9_]{0,8}){1,3}", fullmatch=True),
    arg_maps,
    triggers,
    list_maps,
)
def test_no_matching_rule_denies(
    text: str,
    action: str,
    args: dict[str, str | int | bool],
    trigger: Trigger,
    lists: dict[str, frozenset[str]],
) -> None:
    policy = Policy(parse_policy(text, FILE))
    result = evaluate(policy, action, args, trigger, lists)
    assert (result.decision, result.rule, result.rate) == ("deny", DEFAULT_DENY_REF, None)
    assert could_allow(policy, action) is False


@given(
    rule_lines((*CLOSED_PATTERNS, "*", "*.send")),
    st.sampled_from(("email.send", "email.reply", "chat.post", "zz.send", "email.a.x")),
    arg_maps,
    triggers,
    list_maps,
    st.one_of(
        st.none(), st.dictionaries(st.sampled_from(ARG_NAMES), st.sampled_from(ORIGIN_VALUES))
    ),
)
def test_evaluate_never_raises(
    text: str,
    action: str,
    args: dict[str, str | int | bool],
    trigger: Trigger,
    lists: dict[str, frozenset[str]],
    origins: dict[str, Origin] | None,
) -> None:
    policy = Policy(parse_policy(text, FILE))
    result = evaluate(policy, action, args, trigger, lists, origins=origins)
    refs = {r.ref for r in policy.rules} | {DEFAULT_DENY_REF}
    assert result.decision in ("allow", "deny", "ask")
    assert result.rule in refs
    if result.decision != "deny":
        assert could_allow(policy, action)
