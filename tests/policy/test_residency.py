"""Tests for relay.policy.residency (DESIGN §7) and relay.protocol.iso3166: one table of
decisions at every enforcement point, then expansion, hashing and properties."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import BadRequest
from relay.policy import residency as r
from relay.policy.residency import Decision, Policy, Rule
from relay.protocol.iso3166 import ISO_3166_ALPHA2, is_country

EAEU = frozenset({"AM", "BY", "KG", "KZ", "RU"})
EU = frozenset({"DE", "FR", "NL"})

RULES = (
    Rule("block-mallory", "deny", senders=("mallory",)),
    Rule("pdf-ru-only", "limit", ctypes=("application/pdf",), residency=frozenset({"RU"})),
    Rule("kz-partner", "limit", dest_nodes=("*.example.kz",), residency=frozenset({"KZ", "RU"})),
    Rule(
        "no-secret-to-by",
        "deny",
        dest_jurisdictions=("BY",),
        ctypes=("application/x-secret",),
    ),
    Rule("images-am", "limit", ctypes=("image/*",), residency=frozenset({"AM"})),
)

# The origin: a Russian node.
RU_NODE = Policy(
    jurisdiction="RU",
    default_residency=frozenset({"RU"}),
    allowed_residency=EAEU,
    export_to=EAEU,
    import_from=EAEU,
    groups={"EAEU": EAEU, "EU": EU},
    rules=RULES,
)
RU_AUDIT = replace(RU_NODE, mode="audit")
RU_NO_EXPORT = replace(RU_NODE, export_to=frozenset(), import_from=frozenset())
RU_WIDE = replace(RU_NODE, allowed_residency=EAEU | EU)

# A Kazakh receiving node that imports only from KZ and RU.
KZ_NODE = Policy(
    jurisdiction="KZ",
    default_residency=frozenset({"KZ"}),
    allowed_residency=EAEU,
    export_to=EAEU,
    import_from=frozenset({"KZ", "RU"}),
)
KZ_AUDIT = replace(KZ_NODE, mode="audit")


def stamp(
    p: Policy,
    requested: list[str] | None,
    *,
    sender: str = "alice",
    dest_node: str = "spb.example.ru",
    dest_jurisdiction: str | None = "RU",
    ctype: str = "text/plain; charset=utf-8",
) -> Callable[[], Decision]:
    return lambda: r.stamp(
        p,
        requested,
        sender=sender,
        dest_node=dest_node,
        dest_jurisdiction=dest_jurisdiction,
        ctype=ctype,
    )


def submit(
    p: Policy,
    residency: list[str],
    dest: tuple[str, str | None] = ("ala.example.kz", "KZ"),
    hops: tuple[tuple[str, str | None], ...] = (),
) -> Callable[[], Decision]:
    return lambda: r.check_submit(
        p, residency, dest_node=dest[0], dest_jurisdiction=dest[1], hops=hops
    )


def accept(
    p: Policy, residency: list[str], *holders: tuple[str, str | None]
) -> Callable[[], Decision]:
    return lambda: r.check_accept(p, residency, holders=holders)


def forward(
    p: Policy, residency: list[str], peer: str, jurisdiction: str | None
) -> Callable[[], Decision]:
    return lambda: r.check_forward(p, residency, peer=peer, peer_jurisdiction=jurisdiction)


@dataclass(frozen=True)
class Case:
    id: str
    run: Callable[[], Decision]
    outcome: str
    rule: str
    residency: tuple[str, ...] | None = None  # None: not checked
    mentions: tuple[str, ...] = ()  # words the reason must contain


ALLOW, DENY, AUDIT = "allow", "deny", "audit"
ALL_EAEU = ("AM", "BY", "KG", "KZ", "RU")

CASES = [
    # --- stamp: defaults, groups, allowed_residency ---
    Case("stamp default", stamp(RU_NODE, None), ALLOW, "", ("RU",)),
    Case("stamp code", stamp(RU_NODE, ["KZ"]), ALLOW, "", ("KZ",)),
    Case("stamp group", stamp(RU_NODE, ["EAEU"]), ALLOW, "", ALL_EAEU),
    Case("stamp group and code", stamp(RU_WIDE, ["EU", "RU"]), ALLOW, "", ("DE", "FR", "NL", "RU")),
    Case("stamp partly allowed", stamp(RU_NODE, ["RU", "DE"]), ALLOW, "", ("RU",)),
    Case(
        "stamp nothing allowed",
        stamp(RU_NODE, ["EU"]),
        DENY,
        r.RULE_ALLOWED,
        (),
        ("DE, FR, NL", "allowed_residency"),
    ),
    Case("stamp empty request", stamp(RU_NODE, []), DENY, r.RULE_EMPTY),
    Case(
        "stamp empty default",
        stamp(replace(RU_NODE, default_residency=frozenset()), None),
        DENY,
        r.RULE_EMPTY,
    ),
    Case("stamp empty even in audit", stamp(RU_AUDIT, []), DENY, r.RULE_EMPTY),
    Case(
        "stamp audit lets disallowed set pass",
        stamp(RU_AUDIT, ["EU"]),
        AUDIT,
        r.RULE_ALLOWED,
        ("DE", "FR", "NL"),
    ),
    # --- stamp: rules ---
    Case(
        "deny by sender",
        stamp(RU_NODE, None, sender="mallory"),
        DENY,
        "block-mallory",
        (),
        ("mallory",),
    ),
    Case("deny in audit", stamp(RU_AUDIT, None, sender="mallory"), AUDIT, "block-mallory", ("RU",)),
    Case(
        "deny overrides limit",
        stamp(RU_NODE, ["EAEU"], sender="mallory", ctype="application/pdf"),
        DENY,
        "block-mallory",
    ),
    Case("deny on sender only", stamp(RU_NODE, None, sender="mallory2"), ALLOW, "", ("RU",)),
    Case(
        "limit by ctype with params",
        stamp(RU_NODE, ["EAEU"], ctype="Application/PDF; name=x.pdf"),
        ALLOW,
        "pdf-ru-only",
        ("RU",),
    ),
    Case(
        "limit leaves nothing",
        stamp(RU_NODE, ["KZ"], ctype="application/pdf"),
        DENY,
        "pdf-ru-only",
        (),
        ("pdf-ru-only", "KZ"),
    ),
    Case(
        "limit leaves nothing, audit",
        stamp(RU_AUDIT, ["KZ"], ctype="application/pdf"),
        AUDIT,
        "pdf-ru-only",
        ("KZ",),
    ),
    Case(
        "limit by dest wildcard",
        stamp(RU_NODE, ["EAEU"], dest_node="ala.example.kz", dest_jurisdiction="KZ"),
        ALLOW,
        "kz-partner",
        ("KZ", "RU"),
    ),
    Case(
        "wildcard needs a subdomain",
        stamp(RU_NODE, ["EAEU"], dest_node="example.kz"),
        ALLOW,
        "",
        ALL_EAEU,
    ),
    Case(
        "two limits, first narrows",
        stamp(RU_NODE, ["EAEU"], dest_node="ala.example.kz", ctype="application/pdf"),
        ALLOW,
        "pdf-ru-only",
        ("RU",),
    ),
    Case(
        "limit that changes nothing is not named",
        stamp(RU_NODE, ["RU"], dest_node="ala.example.kz"),
        ALLOW,
        "",
        ("RU",),
    ),
    Case(
        "second limit leaves nothing",
        stamp(RU_NODE, ["EAEU"], dest_node="ala.example.kz", ctype="IMAGE/PNG"),
        DENY,
        "images-am",
        (),
        ("images-am", "{AM}", "{KZ, RU}"),
    ),
    Case(
        "ctype wildcard alone",
        stamp(RU_NODE, ["EAEU"], ctype="image/png"),
        ALLOW,
        "images-am",
        ("AM",),
    ),
    Case(
        "deny needs every condition",
        stamp(RU_NODE, None, dest_jurisdiction="BY", ctype="application/x-secret"),
        DENY,
        "no-secret-to-by",
    ),
    Case(
        "deny condition unmet",
        stamp(RU_NODE, None, dest_jurisdiction="KZ", ctype="application/x-secret"),
        ALLOW,
        "",
        ("RU",),
    ),
    Case(
        "unknown dest jurisdiction matches no jurisdiction rule",
        stamp(RU_NODE, None, dest_jurisdiction=None, ctype="application/x-secret"),
        ALLOW,
        "",
    ),
    # --- submit ---
    Case("submit inside", submit(RU_NODE, ["KZ", "RU"]), ALLOW, "", ("KZ", "RU")),
    Case("submit own outside", submit(RU_NODE, ["KZ"]), DENY, r.RULE_OWN, ("KZ",), ("RU", "{KZ}")),
    Case(
        "submit dest unknown",
        submit(RU_NODE, ["KZ", "RU"], dest=("new.example.kz", None)),
        DENY,
        r.RULE_UNKNOWN,
        ("KZ", "RU"),
        ("new.example.kz",),
    ),
    Case(
        "submit dest outside",
        submit(RU_NODE, ["KZ", "RU"], dest=("minsk.example.by", "BY")),
        DENY,
        r.RULE_DEST,
        None,
        ("minsk.example.by", "BY", "{KZ, RU}"),
    ),
    Case(
        "submit dest not in export_to",
        submit(RU_WIDE, ["DE", "RU"], dest=("b.example.de", "DE")),
        DENY,
        r.RULE_EXPORT,
        None,
        ("b.example.de", "export_to"),
    ),
    Case(
        "submit via hop",
        submit(RU_NODE, ["KZ", "RU"], hops=(("gw.example.ru", "RU"),)),
        ALLOW,
        "",
    ),
    Case(
        "submit hop unknown",
        submit(RU_NODE, ["KZ", "RU"], hops=(("gw.example.ru", "RU"), ("x.example", None))),
        DENY,
        r.RULE_UNKNOWN,
        None,
        ("x.example",),
    ),
    Case(
        "submit hop outside",
        submit(RU_NODE, ["KZ", "RU"], hops=(("gw.example.by", "BY"),)),
        DENY,
        r.RULE_HOP,
        None,
        ("gw.example.by", "BY"),
    ),
    Case(
        "submit local, export_to empty",
        submit(RU_NO_EXPORT, ["RU"], dest=("msk.example.ru", "RU")),
        ALLOW,
        "",
    ),
    Case(
        "submit abroad, export_to empty",
        submit(RU_NO_EXPORT, ["KZ", "RU"]),
        DENY,
        r.RULE_EXPORT,
    ),
    Case(
        "submit unknown code never matches",
        submit(RU_NODE, ["RU", "XX"], dest=("x.example", "XX")),
        DENY,
        r.RULE_UNKNOWN,
        ("RU", "XX"),
    ),
    Case(
        "submit audit",
        submit(RU_AUDIT, ["KZ", "RU"], dest=("new.example.kz", None)),
        AUDIT,
        r.RULE_UNKNOWN,
    ),
    # --- accept (at the Kazakh node) ---
    Case(
        "accept direct",
        accept(KZ_NODE, ["KZ", "RU"], ("msk.example.ru", "RU")),
        ALLOW,
        "",
        ("KZ", "RU"),
    ),
    Case(
        "accept own outside",
        accept(KZ_NODE, ["RU"], ("msk.example.ru", "RU")),
        DENY,
        r.RULE_OWN,
        None,
        ("KZ",),
    ),
    Case(
        "accept trace node outside",
        accept(
            KZ_NODE,
            ["KZ", "RU"],
            ("msk.example.ru", "RU"),
            ("fra.example.de", "DE"),
            ("spb.example.ru", "RU"),
        ),
        DENY,
        r.RULE_TRACE,
        None,
        ("fra.example.de", "DE"),
    ),
    Case(
        "accept origin outside",
        accept(KZ_NODE, ["KZ", "RU"], ("fra.example.de", "DE"), ("msk.example.ru", "RU")),
        DENY,
        r.RULE_TRACE,
    ),
    Case(
        "accept trace node unknown",
        accept(KZ_NODE, ["KZ", "RU"], ("who.example", None), ("msk.example.ru", "RU")),
        DENY,
        r.RULE_UNKNOWN,
        None,
        ("who.example",),
    ),
    Case(
        "accept sender not in import_from",
        accept(KZ_NODE, ["BY", "KZ"], ("minsk.example.by", "BY")),
        DENY,
        r.RULE_IMPORT,
        None,
        ("minsk.example.by", "import_from"),
    ),
    Case(
        "import_from judges only the sender",
        accept(KZ_NODE, ["BY", "KZ", "RU"], ("minsk.example.by", "BY"), ("msk.example.ru", "RU")),
        ALLOW,
        "",
    ),
    Case(
        "accept from own jurisdiction, import_from empty",
        accept(replace(KZ_NODE, import_from=frozenset()), ["KZ"], ("ast.example.kz", "KZ")),
        ALLOW,
        "",
    ),
    Case(
        "accept ignores unknown codes",
        accept(KZ_NODE, ["KZ", "RU", "XX", "ZZ"], ("msk.example.ru", "RU")),
        ALLOW,
        "",
        ("KZ", "RU", "XX", "ZZ"),
    ),
    Case(
        "accept only unknown codes",
        accept(KZ_NODE, ["XX"], ("msk.example.ru", "RU")),
        DENY,
        r.RULE_OWN,
    ),
    Case(
        "accept audit",
        accept(KZ_AUDIT, ["KZ", "RU"], ("fra.example.de", "DE")),
        AUDIT,
        r.RULE_TRACE,
        ("KZ", "RU"),
    ),
    # --- forward ---
    Case("forward inside", forward(RU_NODE, ["KZ", "RU"], "ala.example.kz", "KZ"), ALLOW, ""),
    Case(
        "forward unknown peer",
        forward(RU_NODE, ["KZ", "RU"], "ala.example.kz", None),
        DENY,
        r.RULE_UNKNOWN,
        None,
        ("ala.example.kz",),
    ),
    Case(
        "forward peer outside",
        forward(RU_NODE, ["KZ", "RU"], "minsk.example.by", "BY"),
        DENY,
        r.RULE_PEER,
        None,
        ("minsk.example.by", "BY", "{KZ, RU}"),
    ),
    Case(
        "forward not in export_to",
        forward(RU_WIDE, ["DE", "RU"], "b.example.de", "DE"),
        DENY,
        r.RULE_EXPORT,
    ),
    Case(
        "forward same jurisdiction",
        forward(RU_NO_EXPORT, ["RU"], "spb.example.ru", "RU"),
        ALLOW,
        "",
    ),
    Case(
        "forward audit",
        forward(RU_AUDIT, ["RU"], "minsk.example.by", "BY"),
        AUDIT,
        r.RULE_PEER,
        ("RU",),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_decision_table(case: Case) -> None:
    d = case.run()
    assert (d.outcome, d.rule) == (case.outcome, case.rule), d.reason
    assert d.allowed is (case.outcome != DENY)
    if case.residency is not None:
        assert d.residency == case.residency
    assert list(d.residency) == sorted(d.residency)
    for word in case.mentions:
        assert word in d.reason
    if case.outcome != ALLOW:
        assert d.reason.strip()


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


def test_builtin_rule_ids() -> None:
    assert all(rule.startswith("builtin:") for rule in r.BUILTIN_RULES)
    used = {c.rule for c in CASES if c.rule.startswith("builtin:")}
    assert used == r.BUILTIN_RULES


def test_check_accept_needs_a_sender() -> None:
    with pytest.raises(ValueError):
        r.check_accept(KZ_NODE, ["KZ"], holders=())


# --- expand --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["RU"], {"RU"}),
        (["EAEU"], EAEU),
        (["EAEU", "DE", "RU"], EAEU | {"DE"}),
        (["EU", "EAEU"], EU | EAEU),
        ([], set()),
    ],
)
def test_expand(names: list[str], expected: set[str]) -> None:
    assert r.expand(names, RU_NODE.groups) == expected


@pytest.mark.parametrize("name", ["XX", "ru", "Eu", "EUR", "", "XK", "UK"])
def test_expand_refuses_unknown_names(name: str) -> None:
    with pytest.raises(BadRequest) as info:
        r.expand(["RU", name], RU_NODE.groups)
    assert repr(name) in info.value.detail


def test_expand_groups_first() -> None:
    assert r.expand(["NORDIC"], {"NORDIC": frozenset({"NO", "SE"})}) == {"NO", "SE"}


# --- policy_hash ---------------------------------------------------------------------


def test_policy_hash_stable() -> None:
    h = r.policy_hash(RU_NODE)
    assert len(h) == 16
    assert int(h, 16) >= 0
    rebuilt = Policy(
        jurisdiction="RU",
        default_residency=frozenset(["RU"]),
        allowed_residency=frozenset(["RU", "KZ", "KG", "BY", "AM"]),
        export_to=frozenset(sorted(EAEU, reverse=True)),
        import_from=EAEU,
        groups={"EU": EU, "EAEU": EAEU},
        rules=RULES,
    )
    assert r.policy_hash(rebuilt) == h
    # Pinned so an accidental change of the encoding shows up.
    assert r.policy_hash(Policy(jurisdiction="RU")) == GOLDEN_EMPTY_RU_HASH


# sha256 of the canonical JSON of Policy(jurisdiction="RU"), first 16 hex chars:
# {"allowed_residency":[],"default_residency":[],"export_to":[],"groups":{},
#  "import_from":[],"jurisdiction":"RU","mode":"enforce","rules":[],"v":1}
GOLDEN_EMPTY_RU_HASH = "c38396c3b8e567d9"


@pytest.mark.parametrize(
    "changed",
    [
        replace(RU_NODE, jurisdiction="KZ"),
        replace(RU_NODE, mode="audit"),
        replace(RU_NODE, default_residency=frozenset({"KZ"})),
        replace(RU_NODE, allowed_residency=EAEU | {"DE"}),
        replace(RU_NODE, export_to=frozenset({"RU"})),
        replace(RU_NODE, import_from=frozenset({"RU"})),
        replace(RU_NODE, groups={"EAEU": EAEU}),
        replace(RU_NODE, groups={"EAEU": EAEU, "EU": EU | {"IT"}}),
        replace(RU_NODE, rules=RULES[1:]),
        replace(RU_NODE, rules=tuple(reversed(RULES))),
        replace(RU_NODE, rules=(replace(RULES[0], senders=("mallory", "eve")), *RULES[1:])),
        replace(RU_NODE, rules=(replace(RULES[0], senders=None), *RULES[1:])),
        replace(RU_NODE, rules=(replace(RULES[0], dest_nodes=()), *RULES[1:])),
        replace(RU_NODE, rules=(replace(RULES[0], id="block-eve"), *RULES[1:])),
        replace(RU_NODE, rules=(replace(RULES[1], residency=frozenset({"KZ"})), *RULES[2:])),
        replace(RU_NODE, rules=(replace(RULES[0], effect="limit"), *RULES[1:])),
    ],
)
def test_policy_hash_changes(changed: Policy) -> None:
    assert r.policy_hash(changed) != r.policy_hash(RU_NODE)


# --- ISO 3166 ------------------------------------------------------------------------


def test_iso_list() -> None:
    assert len(ISO_3166_ALPHA2) == 249
    assert all(len(c) == 2 and c.isascii() and c.isupper() for c in ISO_3166_ALPHA2)
    for code in ("RU", "KZ", "DE", "US", "AX", "BQ", "SS", "SX", "CW", "AQ", "UM"):
        assert is_country(code), code
    for code in ("XK", "EU", "UK", "SU", "AN", "YU", "ZZ", "ru", "", "RUS"):
        assert not is_country(code), code


# --- properties ----------------------------------------------------------------------

CODES = ["AM", "BY", "DE", "KZ", "RU"]
code_sets = st.frozensets(st.sampled_from(CODES))


@settings(max_examples=200, deadline=None)
@given(
    requested=code_sets,
    allowed=code_sets,
    limits=st.lists(code_sets, max_size=3),
    audit=st.booleans(),
)
def test_stamp_never_widens(
    requested: frozenset[str], allowed: frozenset[str], limits: list[frozenset[str]], audit: bool
) -> None:
    rules = tuple(Rule(f"limit-{i}", "limit", residency=s) for i, s in enumerate(limits))
    p = Policy(jurisdiction="RU", allowed_residency=allowed, rules=rules)
    enforce = r.stamp(
        p, sorted(requested), sender="a", dest_node="n", dest_jurisdiction="RU", ctype="t/p"
    )
    if enforce.allowed:
        assert enforce.outcome == ALLOW
        assert enforce.residency
        assert set(enforce.residency) <= requested & allowed
        for s in limits:
            assert set(enforce.residency) <= s
    else:
        assert enforce.outcome == DENY and enforce.residency == ()
    if audit:
        d = r.stamp(
            replace(p, mode="audit"),
            sorted(requested),
            sender="a",
            dest_node="n",
            dest_jurisdiction="RU",
            ctype="t/p",
        )
        # Audit lets through exactly what enforce would refuse, except an empty request.
        assert d.allowed is bool(requested)
        assert d.outcome == (ALLOW if enforce.allowed else AUDIT if requested else DENY)
        assert d.rule == enforce.rule
        if enforce.allowed:
            assert d.residency == enforce.residency
        elif requested:
            assert d.residency and set(d.residency) <= requested
