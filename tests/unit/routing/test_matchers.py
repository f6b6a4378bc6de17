"""Path, string, header and query-parameter matchers.

The header and query-parameter tables are what Envoy 1.40 answered to the same matchers and requests
(one route per matcher, HTTP/1.1 requests, direct_response bodies telling hit from miss)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.routing import matchers as m
from tests.unit.routing.request import JoinedReq, Req

# --- path matchers -----------------------------------------------------------------------------------

PATH_CASES = [
    # (matcher, path, expected)
    (m.PrefixPathMatcher("/api"), "/api", True),
    (m.PrefixPathMatcher("/api"), "/apix", True),
    (m.PrefixPathMatcher("/api"), "/ap", False),
    (m.PrefixPathMatcher("/api"), "/API", False),
    (m.PrefixPathMatcher("/api", case_sensitive=False), "/API/x", True),
    (m.PrefixPathMatcher("/api", case_sensitive=False), "/AP?i", False),
    (m.PrefixPathMatcher("/a?b"), "/a?b", False),  # the query is never part of the matched path
    (m.PrefixPathMatcher(""), "/anything", True),
    (m.PrefixPathMatcher("/x"), "/?x", False),
    (m.ExactPathMatcher("/exact"), "/exact", True),
    (m.ExactPathMatcher("/exact"), "/exact?param=val", True),
    (m.ExactPathMatcher("/exact"), "/exact#fragment", True),
    (m.ExactPathMatcher("/exact"), "/exact#fragment?param=val", True),
    (m.ExactPathMatcher("/exact"), "/EXACT", False),
    (m.ExactPathMatcher("/exact"), "/exacz", False),
    (m.ExactPathMatcher("/exact"), "/exact-abc", False),
    (m.ExactPathMatcher("/exact"), "/exacz?/exact", False),
    (m.ExactPathMatcher("/exact"), "/exacz#/exact", False),
    (m.ExactPathMatcher("/exact"), "/exac", False),
    (m.ExactPathMatcher("/Exact", case_sensitive=False), "/EXACT?x", True),
    (m.ExactPathMatcher("/Exact", case_sensitive=False), "/exact/", False),
    (m.ExactPathMatcher(""), "?q", True),
    (m.ExactPathMatcher(""), "/", False),
    (m.SeparatedPrefixPathMatcher("/api"), "/api", True),
    (m.SeparatedPrefixPathMatcher("/api"), "/api/", True),
    (m.SeparatedPrefixPathMatcher("/api"), "/api?x", True),
    (m.SeparatedPrefixPathMatcher("/api"), "/api#x", True),
    (m.SeparatedPrefixPathMatcher("/api"), "/api/x", True),
    (m.SeparatedPrefixPathMatcher("/api"), "/apix", False),
    (m.SeparatedPrefixPathMatcher("/api"), "/API", False),
    (m.SeparatedPrefixPathMatcher("/Psp", case_sensitive=False), "/PSP/x", True),
    (m.SeparatedPrefixPathMatcher("/Psp", case_sensitive=False), "/pspx", False),
    (m.RegexPathMatcher("/rx/[a-z]+"), "/rx/abc?x=1", True),
    (m.RegexPathMatcher("/rx/[a-z]+"), "/rx/abc1", False),  # full match, not search
    (m.RegexPathMatcher("/rx"), "/RX", False),  # Envoy ignores case_sensitive on regex routes
    (m.RegexPathMatcher(".*"), "/a#b", True),
    (m.RegexPathMatcher("/a"), "/a#b", True),
]


@pytest.mark.parametrize(("matcher", "path", "expected"), PATH_CASES)
def test_path_matcher(matcher: m.PrefixPathMatcher, path: str, expected: bool) -> None:
    assert matcher.matches(path) is expected


def _stripped(path: str) -> str:
    return re.split(r"[?#]", path, maxsplit=1)[0]


_path_text = st.text(alphabet="/aAbB?#-", max_size=12)


@given(prefix=_path_text, path=_path_text)
def test_prefix_agrees_with_startswith_on_stripped_path(prefix: str, path: str) -> None:
    assert m.PrefixPathMatcher(prefix).matches(path) == _stripped(path).startswith(prefix)
    ci = m.PrefixPathMatcher(prefix, case_sensitive=False).matches(path)
    assert ci == _stripped(path).lower().startswith(prefix.lower())


@given(value=_path_text, path=_path_text)
def test_exact_agrees_with_equality_on_stripped_path(value: str, path: str) -> None:
    assert m.ExactPathMatcher(value).matches(path) == (_stripped(path) == value)
    ci = m.ExactPathMatcher(value, case_sensitive=False).matches(path)
    assert ci == (_stripped(path).lower() == value.lower())


@given(prefix=st.text(alphabet="/aA-", min_size=1, max_size=6), path=_path_text)
def test_separated_prefix_definition(prefix: str, path: str) -> None:
    s = _stripped(path)
    expected = s == prefix or s.startswith(prefix + "/")
    assert m.SeparatedPrefixPathMatcher(prefix).matches(path) == expected


def test_path_end() -> None:
    assert [m.path_end(p) for p in ("/a", "/a?b", "/a#b", "/a#b?c", "/a?b#c", "")] == [2, 2, 2, 2, 2, 0]


def test_ascii_lower_folds_ascii_only() -> None:
    assert m.ascii_lower("AbC") == "abc"
    # U+212A KELVIN SIGN and U+00C4 lower to 'k'/'ä' in Python, but not in absl::AsciiStrToLower.
    assert m.ascii_lower("\u212aA\u00c4") == "\u212aa\u00c4"


# --- string matchers -----------------------------------------------------------------------------

STRING_CASES = [
    (m.ExactMatcher("abc"), "abc", True),
    (m.ExactMatcher("abc"), "ABC", False),
    (m.ExactMatcher("abc", ignore_case=True), "aBc", True),
    (m.ExactMatcher("abc", ignore_case=True), "abcd", False),
    (m.ExactMatcher(""), "", True),
    (m.ExactMatcher(""), "x", False),
    (m.ExactMatcher("k", ignore_case=True), "\u212a", False),
    (m.PrefixMatcher("ab"), "abc", True),
    (m.PrefixMatcher("ab"), "Abc", False),
    (m.PrefixMatcher("ab", ignore_case=True), "ABc", True),
    (m.PrefixMatcher("ab", ignore_case=True), "a", False),
    (m.SuffixMatcher("bc"), "abc", True),
    (m.SuffixMatcher("bc"), "aBC", False),
    (m.SuffixMatcher("bc", ignore_case=True), "aBC", True),
    (m.SuffixMatcher("bc", ignore_case=True), "c", False),
    (m.ContainsMatcher("b"), "abc", True),
    (m.ContainsMatcher("B", ignore_case=True), "abc", True),
    (m.ContainsMatcher("x"), "abc", False),
    (m.RegexMatcher("a.c"), "abc", True),
    (m.RegexMatcher("b"), "abc", False),  # full match
    (m.RegexMatcher("ABC"), "abc", False),
    (m.RangeMatcher(-5, 10), "-5", True),
    (m.RangeMatcher(-5, 10), "10", False),
    (m.RangeMatcher(-5, 10), " 3 ", True),
    (m.RangeMatcher(-5, 10), "+3", True),
    (m.RangeMatcher(-5, 10), "3.0", False),
    (m.RangeMatcher(-5, 10), "", False),
    (m.RangeMatcher(-5, 10), "1_0", False),
    (m.RangeMatcher(-5, 10), "\u0663", False),  # ARABIC-INDIC DIGIT THREE: int() would take it
    (m.RangeMatcher(5, 1), "3", False),
    (m.AnyValueMatcher(), "", True),
]


@pytest.mark.parametrize(("matcher", "value", "expected"), STRING_CASES)
def test_string_matcher(matcher: m.ValueMatcher, value: str, expected: bool) -> None:
    assert matcher.match(value) is expected


@given(st.text(alphabet=" \t+-0123456789x_", max_size=25))
def test_parse_int64_is_simple_atoi(text: str) -> None:
    found = re.fullmatch(r"[ \t]*([+-]?[0-9]+)[ \t]*", text)
    expected = int(found.group(1)) if found else None
    if expected is not None and not -(2**63) <= expected < 2**63:
        expected = None
    assert m.parse_int64(text) == expected


@given(
    regex=st.sampled_from(["", "a*", "(a|b)c", "[^/]+", ".", "..", "\\x{e9}", "\\pL+", "a$", "^$"]),
    text=st.text(alphabet=["a", "b", "c", "/", "\u00e9", "\u212a", "\n"], max_size=6),
)
def test_fast_full_match_agrees_with_re2(regex: str, text: str) -> None:
    compiled = m.compile_regex(regex, max_program_size=10_000)
    assert m.full_matcher(compiled)(text) == (compiled.fullmatch(text) is not None)


def test_compile_regex_refuses_like_envoy() -> None:
    with pytest.raises(ValueError, match=r"missing \)"):
        m.compile_regex("(")
    # Envoy 1.40: "RE2 program size of 102 > max program size of 100"; 94 is accepted.
    with pytest.raises(ValueError, match="program size of 102 > max program size of 100"):
        m.compile_regex("a{32}b{33}c{33}")
    assert m.compile_regex("a{30}b{30}c{30}").programsize == 94
    assert m.compile_regex("a{32}b{33}c{33}", max_program_size=200) is not None


# --- header matchers: Envoy 1.40's answers ---------------------------------------------------------

HEADER_REQUESTS = [None, "v", "", "w", "3", "-5", "10", " 3", "+3"]
HEADER_CASES = {
    # name: (matcher, hits for HEADER_REQUESTS as a 0/1 string)
    "exact_inverted": (m.HeaderMatcher("x-a", m.ExactMatcher("v"), invert=True), "001111111"),
    "present": (m.HeaderMatcher("x-a", None, present=True), "011111111"),
    "absent": (m.HeaderMatcher("x-a", None, present=False), "100000000"),
    "present_inverted": (m.HeaderMatcher("x-a", None, present=True, invert=True), "100000000"),
    "absent_inverted": (m.HeaderMatcher("x-a", None, present=False, invert=True), "011111111"),
    "tm_exact_empty": (m.HeaderMatcher("x-a", m.ExactMatcher(""), treat_missing_as_empty=True), "101000000"),
    "tm_exact_inverted": (
        m.HeaderMatcher("x-a", m.ExactMatcher("v"), invert=True, treat_missing_as_empty=True),
        "101111111",
    ),
    "tm_present": (m.HeaderMatcher("x-a", None, present=True, treat_missing_as_empty=True), "111111111"),
    "tm_absent": (m.HeaderMatcher("x-a", None, present=False, treat_missing_as_empty=True), "000000000"),
    "tm_present_inverted": (
        m.HeaderMatcher("x-a", None, present=True, invert=True, treat_missing_as_empty=True),
        "000000000",
    ),
    "tm_absent_inverted": (
        m.HeaderMatcher("x-a", None, present=False, invert=True, treat_missing_as_empty=True),
        "111111111",
    ),
    "deprecated_exact_empty": (m.HeaderMatcher("x-a", m.AnyValueMatcher()), "011111111"),
    "range": (m.HeaderMatcher("x-a", m.RangeMatcher(-5, 10)), "000011011"),
    "tm_range": (m.HeaderMatcher("x-a", m.RangeMatcher(-5, 10), treat_missing_as_empty=True), "000011011"),
    "string_exact_empty": (m.HeaderMatcher("x-a", m.ExactMatcher("")), "001000000"),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_header_matcher_as_envoy(case: str) -> None:
    matcher, hits = HEADER_CASES[case]
    got = "".join(
        str(int(matcher.matches(Req({} if v is None else {"x-a": v}), "/"))) for v in HEADER_REQUESTS
    )
    assert got == hits


def test_header_matcher_reads_pseudo_headers() -> None:
    req = Req({"x-a": ["a", "b"]}, authority="h", method="GET", path="/p?q=1")
    assert m.HeaderMatcher(":authority", m.ExactMatcher("h")).matches(req, "/p?q=1")
    assert m.HeaderMatcher(":method", m.ExactMatcher("GET")).matches(req, "/p?q=1")
    assert m.HeaderMatcher(":path", m.ExactMatcher("/p?q=1")).matches(req, "/p?q=1")


# A header sent twice (x-a: a, x-a: b) or once with a comma (x-a: a,b), as Envoy 1.40 matched them.
MULTI_CASES = [
    # (matcher, hit for [a|b], hit for [a,b], hit for [1|9])
    (m.HeaderMatcher("x-a", m.ExactMatcher("a,b")), False, True, False),
    (m.HeaderMatcher("x-a", m.ExactMatcher("a")), True, False, False),
    (m.HeaderMatcher("x-a", m.ExactMatcher("b")), True, False, False),
    (m.HeaderMatcher("x-a", m.ExactMatcher("a"), invert=True), False, True, True),
    (m.HeaderMatcher("x-a", m.ExactMatcher("c"), invert=True), True, True, True),
    (m.HeaderMatcher("x-a", m.ContainsMatcher(",")), False, True, False),
    (m.HeaderMatcher("x-a", m.SuffixMatcher("a")), True, False, False),
    (m.HeaderMatcher("x-a", m.RangeMatcher(0, 5)), False, False, True),
    (m.HeaderMatcher("x-a", m.RegexMatcher("a,b")), False, True, False),
    (m.HeaderMatcher("x-a", m.RegexMatcher(".*,.*")), False, True, False),
    (m.HeaderMatcher("x-a", None), True, True, True),
]


@pytest.mark.parametrize(("matcher", "twice", "comma", "numbers"), MULTI_CASES)
def test_repeated_header_matched_value_by_value(
    matcher: m.HeaderMatcher, twice: bool, comma: bool, numbers: bool
) -> None:
    assert matcher.matches(Req({"x-a": ["a", "b"]}), "/") is twice
    assert matcher.matches(Req({"x-a": "a,b"}), "/") is comma
    assert matcher.matches(Req({"x-a": ["1", "9"]}), "/") is numbers
    # Without header_values() the joined value is all a matcher can see.
    assert matcher.matches(JoinedReq({"x-a": ["a", "b"]}), "/") is comma


# --- query parameters: Envoy 1.40's answers -----------------------------------------------------------

QUERIES = ["", "?", "?a", "?a=", "?a=1", "?b=1", "?a=2&a=1", "?a=1&a=2", "?a=x%20y", "?a=x+y", "?a%20b=1"]
QUERIES += ["?a=abc", "?&a=1", "?A=1"]
QUERY_CASES = {
    "present": (m.QueryParameterMatcher("a", present_match=True), "00111011110110"),
    "absent": (m.QueryParameterMatcher("a", present_match=False), "11000100001001"),
    "no_specifier": (m.QueryParameterMatcher("a"), "00111011110110"),
    "exact_1": (m.QueryParameterMatcher("a", m.ExactMatcher("1")), "00001001000010"),
    "exact_space": (m.QueryParameterMatcher("a", m.ExactMatcher("x y")), "00000000000000"),
    "exact_percent": (m.QueryParameterMatcher("a", m.ExactMatcher("x%20y")), "00000000100000"),
    "exact_plus": (m.QueryParameterMatcher("a", m.ExactMatcher("x+y")), "00000000010000"),
    "exact_empty": (m.QueryParameterMatcher("a", m.ExactMatcher("")), "00110000000000"),
    "decoded_name": (m.QueryParameterMatcher("a b", present_match=True), "00000000000000"),
    "encoded_name": (m.QueryParameterMatcher("a%20b", present_match=True), "00000000001000"),
    "ignore_case": (m.QueryParameterMatcher("a", m.ExactMatcher("ABC", ignore_case=True)), "00000000000100"),
    "upper_name": (m.QueryParameterMatcher("A", present_match=True), "00000000000001"),
}


@pytest.mark.parametrize("case", sorted(QUERY_CASES))
def test_query_parameter_matcher_as_envoy(case: str) -> None:
    matcher, hits = QUERY_CASES[case]
    got = "".join(str(int(matcher.matches(Req(), "/p" + q))) for q in QUERIES)
    assert got == hits


def _reference_first_value(path: str, name: str) -> str | None:
    if "?" not in path:
        return None
    params = path.split("?", 1)[1].split("&")
    if params[-1] == "":
        params.pop()  # Envoy stops at the end of the string: no empty parameter after a final '&'
    for param in params:
        key, eq, value = param.partition("=")
        if key == name:
            return value if eq else ""
    return None


@given(path=st.text(alphabet="/?&=ab#", max_size=16), name=st.sampled_from(["", "a", "ab", "b"]))
def test_first_query_value_agrees_with_split(path: str, name: str) -> None:
    assert m.first_query_value(path, name) == _reference_first_value(path, name)


GRPC_CASES = [
    ("application/grpc", True),
    ("application/grpc+proto", True),
    ("application/grpc-web", False),
    ("application/grpc;x", False),
    ("Application/grpc", False),
    (None, False),
]


@pytest.mark.parametrize(("content_type", "expected"), GRPC_CASES)
def test_grpc_matcher_as_envoy(content_type: str | None, expected: bool) -> None:
    req = Req({} if content_type is None else {"content-type": content_type})
    assert m.GrpcMatcher().matches(req, "/g") is expected


def test_matchers_compare_by_configuration() -> None:
    assert m.RegexMatcher("a+") == m.RegexMatcher("a+")
    assert m.PrefixPathMatcher("/a", False) != m.PrefixPathMatcher("/a", True)
    assert m.HeaderMatcher("x", m.ExactMatcher("v")) == m.HeaderMatcher("x", m.ExactMatcher("v"))
