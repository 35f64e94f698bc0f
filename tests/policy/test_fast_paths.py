"""The fast paths agree with the plain ones: checksums, list files, the rule index, the ledger.

Loading and evaluation take shortcuts for speed (a reusable keccak state and no
cache for list files, base58 without a per-digit loop, large lists probed as
sets, the rest of a rule tested by a precomputed check, fixed decisions
shared).  Each test here pins one shortcut to the definition it replaces.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import base58
import pytest
from Crypto.Hash import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from cosigner.decide import decide
from cosigner.errors import PolicyError
from cosigner.models import Action, PendingItem
from cosigner.policy import Approval, CompiledPolicy, Ledger, evaluate, load_policy
from cosigner.policy import addresses as addr
from cosigner.policy.engine import first_match, item_facts
from cosigner.policy.loader import _EXPAND_AT_MOST

from .conftest import HEADER, HOT, NOW, T_HOT, evm, item, tron

B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _typo(text: str, at: int) -> str:
    """*text* with the base58 character at *at* replaced by the next one of the alphabet."""
    return text[:at] + B58[(B58.index(text[at]) + 1) % len(B58)] + text[at + 1:]


def _reference_tron(address: str) -> bool:
    """The definition: base58check decoding to 21 bytes that start with 0x41."""
    if addr.TRON_SHAPE.fullmatch(address) is None:
        return False
    try:
        raw = base58.b58decode_check(address)
    except ValueError:
        return False
    return len(raw) == 21 and raw[0] == 0x41


def _reference_eip55(hex_part: str) -> str:
    """EIP-55 as the EIP writes it, over pycryptodome's keccak (independent of the code)."""
    lower = hex_part.lower()
    digest = keccak.new(data=lower.encode("ascii"), digest_bits=256).hexdigest()
    return "".join(c.upper() if int(d, 16) >= 8 else c
                   for c, d in zip(lower, digest[:40], strict=True))


def _reference_evm_checksum(hex_part: str) -> bool:
    """The definition: the address equals its EIP-55 spelling."""
    return _reference_eip55(hex_part) == hex_part


class TestTronChecksum:
    @given(st.binary(min_size=20, max_size=20), st.integers(0, 33), st.sampled_from(B58))
    @settings(max_examples=300, deadline=None)
    def test_agrees_with_base58(self, payload: bytes, at: int, char: str) -> None:
        """Valid addresses, and each one with a character changed, get base58's verdict."""
        good = addr.tron_from_bytes(payload)
        assert addr.tron_checksum_ok(good)
        changed = good[:at] + char + good[at + 1:]
        assert addr.tron_checksum_ok(changed) == _reference_tron(changed)

    @given(st.text(alphabet=B58, min_size=33, max_size=33))
    @settings(max_examples=300, deadline=None)
    def test_random_shapes(self, tail: str) -> None:
        """Any T + 33 base58 characters: the same verdict (almost always a refusal)."""
        assert addr.tron_checksum_ok("T" + tail) == _reference_tron("T" + tail)

    @pytest.mark.parametrize("version", [0x00, 0x40, 0x42, 0xFF])
    def test_other_version_bytes(self, version: int) -> None:
        """A correct checksum over another version byte is refused."""
        text = base58.b58encode_check(bytes([version]) + bytes(range(20))).decode()
        assert not addr.tron_checksum_ok(text)
        assert not addr.is_tron(text)

    def test_longer_payload_refused(self) -> None:
        """A 26-byte payload (checksum correct) does not pass as 21 bytes."""
        text = base58.b58encode_check(b"\x41" + bytes(21)).decode()
        assert not addr.tron_checksum_ok(text)
        assert not _reference_tron(text)

    @pytest.mark.parametrize("bad", ["", "T", "T" + "1" * 32, "T" + "0" * 33, "t" + "1" * 33,
                                     tron("x") + "1", " " + tron("x")])
    def test_shapes_refused(self, bad: str) -> None:
        """Wrong shapes are refused before any arithmetic."""
        assert not addr.tron_checksum_ok(bad)


class TestEvmChecksum:
    @given(st.binary(min_size=20, max_size=20), st.randoms(use_true_random=False))
    @settings(max_examples=300, deadline=None)
    def test_checker_agrees_with_eip55(self, payload: bytes, rnd: random.Random) -> None:
        """Random letter cases get the same verdict as comparing with the EIP-55 spelling."""
        check = addr.checksum_checker()
        good = addr.eip55("0x" + payload.hex())[2:]
        flipped = "".join(c.swapcase() if rnd.random() < 0.2 else c for c in good)
        for hex_part in (good, flipped):
            if hex_part.islower() or hex_part.isupper() or hex_part.isdigit():
                continue  # single case needs no checksum: callers never ask
            assert check(hex_part) == _reference_evm_checksum(hex_part)
            assert addr.is_evm("0x" + hex_part) == _reference_evm_checksum(hex_part)

    @pytest.mark.parametrize("bad", ["", "ab" * 19, "ab" * 21, "gg" * 20, "\u0661" * 40])
    def test_checker_is_total(self, bad: str) -> None:
        """Text that is not 40 hex digits is refused, never an exception."""
        assert not addr.checksum_checker()(bad)

    @given(st.binary(max_size=400))
    @settings(max_examples=300, deadline=None)
    def test_keccak_agrees_with_pycryptodome(self, message: bytes) -> None:
        """safe-pysha3's keccak-256 is pycryptodome's (what the checks used before)."""
        assert addr._keccak256(message) == keccak.new(data=message, digest_bits=256).digest()

    @given(st.binary(min_size=20, max_size=20))
    @settings(max_examples=200, deadline=None)
    def test_eip55_spelling(self, payload: bytes) -> None:
        """eip55() spells every account as the reference does, and that spelling passes."""
        spelled = addr.eip55("0x" + payload.hex())
        assert spelled == "0x" + _reference_eip55(payload.hex())
        assert addr.is_evm(spelled)
        assert addr.evm_validator(addr.checksum_checker())(spelled)

    def test_wrong_hasher_fails_the_import_check(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A hasher that is not keccak-256 (SHA3-256 pads differently) is refused, loudly."""
        monkeypatch.setattr(addr, "_KECCAK256", hashlib.sha3_256)
        with pytest.raises(ImportError, match="not the known answer"):
            addr._check_known_answers()

    def test_known_answers_pass(self) -> None:
        addr._check_known_answers()


class TestListEntryKey:
    """``list_entry_key`` (the list file's one-call check) gives the verdicts and keys of
    ``is_evm`` / ``is_tron`` and ``key``."""

    @staticmethod
    def _plain(entry: str) -> tuple[str, str] | None:
        if addr.evm_validator(addr.checksum_checker())(entry):
            return "evm", addr.key(entry, "evm")
        if addr.tron_validator(addr.tron_checksum_ok)(entry):
            return "tron", addr.key(entry, "tron")
        return None

    @given(st.binary(min_size=20, max_size=20), st.randoms(use_true_random=False),
           st.sampled_from(["as is", "lower", "upper", "0X", "short", "long", "space", "g"]))
    @settings(max_examples=400, deadline=None)
    def test_evm_entries(self, payload: bytes, rnd: random.Random, how: str) -> None:
        good = addr.eip55("0x" + payload.hex())
        flipped = "0x" + "".join(c.swapcase() if rnd.random() < 0.2 else c for c in good[2:])
        for entry in (good, flipped):
            entry = {"lower": entry.lower(), "upper": "0x" + entry[2:].upper(),
                     "0X": "0X" + entry[2:], "short": entry[:-1], "long": entry + "a",
                     "space": entry + " ", "g": entry[:-1] + "g"}.get(how, entry)
            assert addr.list_entry_key(entry) == self._plain(entry), entry

    @pytest.mark.parametrize("seed", range(8))
    def test_every_single_case_flip_is_refused(self, seed: int) -> None:
        """Each letter of a checksummed address flipped alone breaks its checksum."""
        good = addr.eip55("0x" + random.Random(seed).randbytes(20).hex())
        assert addr.list_entry_key(good) == ("evm", good.lower())
        for at in range(2, 42):
            if good[at].isalpha():
                entry = good[:at] + good[at].swapcase() + good[at + 1:]
                assert addr.list_entry_key(entry) is None, entry
                assert self._plain(entry) is None

    @given(st.binary(min_size=20, max_size=20), st.integers(0, 33), st.sampled_from(B58),
           st.booleans())
    @settings(max_examples=300, deadline=None)
    def test_tron_entries(self, payload: bytes, at: int, char: str, change: bool) -> None:
        good = addr.tron_from_bytes(payload)
        entry = good[:at] + char + good[at + 1:] if change else good
        assert addr.list_entry_key(entry) == self._plain(entry), entry

    @given(st.integers(0, 255), st.binary(min_size=19, max_size=22))
    @settings(max_examples=300, deadline=None)
    def test_base58check_of_any_version_and_length(self, version: int, payload: bytes) -> None:
        """A valid base58check of another version byte or length is no tron address."""
        entry = base58.b58encode_check(bytes([version]) + payload).decode("ascii")
        assert addr.list_entry_key(entry) == self._plain(entry), entry

    @pytest.mark.parametrize("version", [0x40, 0x42, 0x41])
    def test_tron_version_byte(self, version: int) -> None:
        entry = base58.b58encode_check(bytes([version]) + bytes(range(20))).decode("ascii")
        want = ("tron", entry) if version == 0x41 else None
        assert addr.list_entry_key(entry) == self._plain(entry) == want

    @pytest.mark.parametrize("entry", ["", "0x" + "0" * 40, "0x" + "A" * 40, "0x" + "1" * 39,
                                       "T" * 34, "T" + "1" * 33, "bc1qxyz", "١" * 42,
                                       "0x" + "a" * 40 + "\n"])
    def test_other_entries(self, entry: str) -> None:
        assert addr.list_entry_key(entry) == self._plain(entry)


def _listed(payload: bytes, kind: str, at: int) -> str:
    """One list entry of *kind*, made from 20 bytes (*at* picks what a typo changes)."""
    good = addr.eip55("0x" + payload.hex())
    tron_good = addr.tron_from_bytes(payload)
    return {"eip55": good, "lower": good.lower(), "upper": "0x" + good[2:].upper(),
            "flip": good[:2 + at] + good[2 + at].swapcase() + good[3 + at:],
            "evm-typo": good[:2 + at] + "%x" % ((int(good[2 + at], 16) + 1) % 16) + good[3 + at:],
            "tron": tron_good,
            "tron-typo": _typo(tron_good, 1 + at % 33), "max-tron": "T" + "z" * 33,
            "two-lines": good + "\n" + good, "short": good[:-1], "other": "bc1q" + payload.hex(),
            "empty": "", "0X": "0X" + good[2:]}[kind]


KINDS = ["eip55", "lower", "upper", "flip", "evm-typo", "tron", "tron-typo", "max-tron",
         "two-lines", "short", "other", "empty", "0X"]


class TestListVerdicts:
    """``list_verdicts`` (a list file's entries checked in bulk) gives, entry by entry,
    the verdicts of ``list_entry_verdict``; its bulk checks vouch only for groups that
    are valid through and through."""

    @staticmethod
    def _one_by_one(entries: list[str]) -> bytes:
        return b"".join(addr.list_entry_verdict(entry) for entry in entries)

    @given(st.lists(st.tuples(st.binary(min_size=20, max_size=20), st.sampled_from(KINDS),
                              st.integers(0, 39)), max_size=40),
           st.sampled_from(["eip55", "tron", "lower"]), st.integers(0, 700))
    @settings(max_examples=60, deadline=None)
    def test_same_verdicts_as_one_by_one(self, odd: list[tuple[bytes, str, int]],
                                         common: str, count: int) -> None:
        """Many entries of one common kind (whole bulk groups) with odd ones strewn among
        them (groups the bulk checks must refuse), in any order."""
        entries = [_listed(i.to_bytes(20, "big"), common, 0) for i in range(count)]
        for n, (payload, kind, at) in enumerate(odd):
            entries.insert((n * 7919 + at) % (len(entries) + 1), _listed(payload, kind, at))
        assert addr.list_verdicts(entries) == self._one_by_one(entries)

    def test_bulk_checks_vouch_for_valid_groups(self) -> None:
        payloads = [bytes([i]) * 20 for i in range(1, 200)]
        assert addr._evm_bulk([_listed(p, "eip55", 0) for p in payloads])
        assert addr._evm_bulk([_listed(p, "lower", 0) for p in payloads])
        assert addr._tron_bulk([_listed(p, "tron", 0) for p in payloads])

    @pytest.mark.parametrize("seed", range(4))
    def test_one_bad_entry_fails_its_group(self, seed: int) -> None:
        """Every single case flip of any letter, and every tron typo, in a group of valid
        entries: the bulk check refuses the group (the entry is then checked alone)."""
        rnd = random.Random(seed)
        evms = [addr.eip55("0x" + rnd.randbytes(20).hex()) for _ in range(64)]
        trons = [addr.tron_from_bytes(rnd.randbytes(20)) for _ in range(64)]
        victim = rnd.randrange(64)
        good = evms[victim]
        for at in range(2, 42):
            if good[at].isalpha():
                evms[victim] = good[:at] + good[at].swapcase() + good[at + 1:]
                assert not addr._evm_bulk(evms), evms[victim]
        evms[victim] = good[:-1] + ("0" if good[-1] != "0" else "1")
        assert not addr._evm_bulk(evms)
        good = trons[victim]
        for at in range(1, 34):
            trons[victim] = _typo(good, at)
            if not _reference_tron(trons[victim]):
                assert not addr._tron_bulk(trons), trons[victim]

    def test_mixed_case_styles_in_one_group_are_not_vouched_for(self) -> None:
        """A lower-case entry among checksummed ones: valid alone, but not by the bulk
        checksum test (it then gets the one-by-one check, which accepts it)."""
        rnd = random.Random(7)
        evms = [addr.eip55("0x" + rnd.randbytes(20).hex()) for _ in range(60)]
        evms.append(next(e for e in evms if not e[2:].islower()).lower())
        assert not addr._evm_bulk(evms)
        assert addr.list_verdicts(evms) == b"e" * len(evms)

    @pytest.mark.parametrize("version", [0x40, 0x42])
    def test_a_tron_shape_of_another_version_fails_its_group(self, version: int) -> None:
        """A valid base58check of version 0x40 or 0x42 that looks like a tron address (T
        and 33 base58 digits): its checksum holds, its version byte does not."""
        other = base58.b58encode_check(bytes([version]) + b"\xff" * 20).decode("ascii")
        assert addr.TRON_SHAPE.fullmatch(other) is not None
        group = [addr.tron_from_bytes(bytes([i]) * 20) for i in range(1, 40)]
        group.insert(5, other)
        assert not addr._tron_bulk(group)
        assert addr.list_verdicts(group) == self._one_by_one(group)
        assert addr.list_verdicts(group)[5:6] == b"-"

    @pytest.mark.parametrize("bad", ["two-lines", "max-tron", "short", "0X", "empty"])
    def test_shapes_the_bulk_checks_refuse(self, bad: str) -> None:
        """An entry holding a line break (two valid lines in one entry), a tron shape too
        large for 25 bytes, a short or 0X one: refused in bulk, and alone."""
        payloads = [bytes([i]) * 20 for i in range(1, 40)]
        for kind, bulk in (("eip55", addr._evm_bulk), ("tron", addr._tron_bulk)):
            group = [_listed(p, kind, 0) for p in payloads]
            group.insert(17, _listed(payloads[3], bad, 0) if bad != "two-lines"
                         else _listed(payloads[3], kind, 0) + "\n" + group[0])
            assert not bulk(group)
            assert addr.list_verdicts(group) == self._one_by_one(group)
            assert addr.list_verdicts(group)[17:18] == b"-"


class TestListFile:
    @pytest.fixture
    def load(self, tmp_path: Path) -> Callable[[str, str], CompiledPolicy]:
        def _load(entries: str, header: str = HEADER) -> CompiledPolicy:
            (tmp_path / "l.txt").write_text(entries, encoding="utf-8")
            (tmp_path / "p.yaml").write_text(header + "lists:\n  s: {file: l.txt}\n",
                                             encoding="utf-8")
            return load_policy(tmp_path / "p.yaml")
        return _load

    def test_bad_eip55_in_list_file(self, problems: Callable[..., list[str]]) -> None:
        """A mixed-case evm address with a wrong checksum in a list file: refused at its line."""
        good = evm("x")
        bad = "0x" + good[2:].swapcase()
        assert not addr.is_evm(bad)
        found = problems("lists:\n  s: {file: lists/s.txt}\n",
                         files={"lists/s.txt": f"{good}\n# c\n{bad} # typo\n{tron('y')}\n"})
        assert len(found) == 1
        assert found[0].startswith("lists/s.txt:3:")
        assert "not a valid evm address" in found[0]

    @pytest.mark.parametrize(("entry", "fragment"), [
        ("0X" + "ab" * 20, "not a valid evm address"),
        ("0x" + "ab" * 19, "not a valid evm address"),
        ("0x" + "gg" * 20, "not a valid evm address"),
        ("T" + "1" * 33, "fails its tron base58check checksum"),
        ("a\u200bb", "zero-width"),
        ("bc1qxyz", "no chain uses the other address format"),
    ])
    def test_refusals_keep_their_line(self, problems: Callable[..., list[str]], entry: str,
                                      fragment: str) -> None:
        """Every refusal of the slow path still comes with the list file's line."""
        found = problems("lists:\n  s: {file: lists/s.txt}\n",
                         files={"lists/s.txt": f"# h\n{evm('ok')}\n{entry}\n"})
        assert len(found) == 1
        assert found[0].startswith("lists/s.txt:3:")
        assert fragment in found[0]

    def test_problems_in_line_order(self, problems: Callable[..., list[str]]) -> None:
        """Several bad entries are reported in file order."""
        bad_evm = "0x" + evm("q")[2:].swapcase()
        bad_tron = "T" + "1" * 33
        found = problems("lists:\n  s: {file: lists/s.txt}\n",
                         files={"lists/s.txt": f"{bad_tron}\n{evm('a')}\n{bad_evm}\nbc1q\n"})
        assert [p.split(":")[1] for p in found] == ["1", "3", "4"]

    @given(st.lists(st.tuples(st.binary(min_size=20, max_size=20),
                              st.sampled_from(["eip55", "lower", "upper", "flip", "tron",
                                               "tron-typo", "comment", "blank"]),
                              st.integers(0, 39)), min_size=1, max_size=25))
    @settings(max_examples=60, deadline=None)
    def test_list_file_verdicts(self, tmp_path_factory: pytest.TempPathFactory,
                                entries: list[tuple[bytes, str, int]]) -> None:
        """Generated list files: exactly the lines the reference refuses fail, each with its
        file:line; every accepted evm entry is keyed in lowercase, tron exactly."""
        lines, bad_lines, want_evm, want_tron = [], [], set(), set()
        for number, (payload, kind, at) in enumerate(entries, start=1):
            spelled = "0x" + _reference_eip55(payload.hex())
            if kind == "flip":  # one hex digit's case swapped: valid only if it is a digit
                spelled = spelled[:2 + at] + spelled[2 + at].swapcase() + spelled[3 + at:]
            text = {"eip55": spelled, "flip": spelled, "lower": spelled.lower(),
                    "upper": "0x" + spelled[2:].upper(), "tron": addr.tron_from_bytes(payload),
                    "tron-typo": _typo(addr.tron_from_bytes(payload), at % 33 + 1),
                    "comment": "# " + spelled, "blank": "  "}[kind]
            lines.append(text)
            if kind in ("comment", "blank"):
                continue
            if kind.startswith("tron"):
                if _reference_tron(text):
                    want_tron.add(text)
                else:
                    bad_lines.append(number)
                continue
            single = text[2:].islower() or text[2:].isupper() or text[2:].isdigit()
            if single or _reference_evm_checksum(text[2:]):
                want_evm.add(text.lower())
            else:
                bad_lines.append(number)
        root = tmp_path_factory.mktemp("gen")
        (root / "l.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (root / "p.yaml").write_text(HEADER + "lists:\n  s: {file: l.txt}\n", encoding="utf-8")
        if not bad_lines:
            keys = load_policy(root / "p.yaml").lists["s"].by_format
            assert keys["evm"] == want_evm
            assert keys["tron"] == want_tron
            return
        with pytest.raises(PolicyError) as info:
            load_policy(root / "p.yaml")
        where = [p.split(": ", 1)[0] for p in info.value.problems]
        assert where == [f"{root / 'l.txt'}:{n}" for n in bad_lines]

    def test_entries_and_keys(self, load: Callable[..., CompiledPolicy]) -> None:
        """Single-case evm needs no checksum, evm keys are lowercase, tron kept exactly."""
        a, b, c = evm("a"), evm("b"), tron("c")
        policy = load(f"{a}\n{b.lower()}\n0x{evm('d')[2:].upper()}  # upper\n\n  {c}  \n{a}\n")
        lst = policy.lists["s"]
        assert lst.by_format["evm"] == {a.lower(), b.lower(), evm("d").lower()}
        assert lst.by_format["tron"] == {c}
        assert lst.size == 4

    def test_other_chain_gets_every_entry_exactly(self,
                                                  load: Callable[..., CompiledPolicy]) -> None:
        """With an other-format chain, evm and tron entries also compare exactly there."""
        header = HEADER + '  "9": {name: x, address: other, decimals: 0}\n'
        a, c = evm("a"), tron("c")
        policy = load(f"{a}\n{c}\nbc1qxyz\n", header)
        lst = policy.lists["s"]
        assert lst.by_format["other"] == {a, c, "bc1qxyz"}
        assert lst.by_format["evm"] == {a.lower()}
        assert lst.size == 3


BIG = 3 * _EXPAND_AT_MOST


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> CompiledPolicy:
    root = tmp_path_factory.mktemp("big")
    (root / "a.txt").write_text("\n".join(evm(f"a{i}") for i in range(BIG))
                                + "\n" + "\n".join(tron(f"a{i}") for i in range(BIG)))
    (root / "b.txt").write_text("\n".join(evm(f"b{i}") for i in range(BIG)))
    (root / "p.yaml").write_text(HEADER + f"""\
lists:
  a: {{file: a.txt}}
  b: {{file: b.txt}}
  few: ["{evm('a1')}", "{evm('f1')}"]
rules:
  - {{name: small-a, to: {{in: [a], not_in: [few]}}, amount: {{max: "10"}}, action: approve}}
  - {{name: lit, to: {{in: ["{evm('a5')}", "{evm('b7')}", few]}}, action: hold}}
  - {{name: g1, chain: "195", amount: {{min: "500"}}, action: reject}}
  - {{name: a-or-b, to: {{in: [a, b, "{evm('x')}"]}}, amount: {{max: "100"}}, action: approve}}
  - {{name: from-hot, from: {{in: ["{HOT}"]}}, to: {{not_in: [b]}}, amount: {{max: "50"}},
      action: approve}}
  - {{name: b-again, chain: "56", to: {{in: [b]}}, action: reject}}
  - {{name: rest, amount: {{min: "1000"}}, action: hold}}
""")
    return load_policy(root / "p.yaml")


class TestIndexWithLargeLists:
    """Rules naming large lists are probed as sets; the result is still the linear scan."""

    def test_lists_are_probed_not_expanded(self, big: CompiledPolicy) -> None:
        """The large lists stay out of by_to; the small ones are indexed by key."""
        index = big.index["56"]
        assert len(index.listed) == 2
        assert evm("a3").lower() not in index.by_to
        assert index.by_to[evm("a1").lower()] == (1,)
        assert index.by_to[evm("a5").lower()] == (1,)

    @given(st.integers(0, BIG + 5), st.sampled_from("abfx"), st.sampled_from(["56", "195"]),
           st.sampled_from(["1", "10", "11", "50", "99", "100", "101", "600", "1500"]),
           st.booleans())
    @settings(max_examples=400, deadline=None)
    def test_first_match_is_the_linear_scan(self, big: CompiledPolicy, n: int, tag: str,
                                            chain: str, amount: str, hot: bool) -> None:
        policy = big
        """Whatever the destination, chain, amount and source: the first rule in order."""
        to = evm(f"{tag}{n}") if chain == "56" else tron(f"{tag}{n}")
        source = (HOT if chain == "56" else T_HOT) if hot else (
            evm("cold") if chain == "56" else tron("cold"))
        it = item(to=to, amount=amount, chain=chain, source=source)
        facts = item_facts(policy, it)
        assert not isinstance(facts, str)
        scanned = next((r for r in policy.rules if r.why_not(facts, NOW) is None), None)
        assert first_match(policy, facts, NOW) is scanned
        for r in policy.rules:
            assert r.holds(facts, NOW) == (r.why_not(facts, NOW) is None)
        decision = evaluate(policy, it, Ledger(policy), NOW)
        assert decision.rule == (scanned.name if scanned else "<default>")
        outcome = decide(it, None, policy, Ledger(policy), NOW, explain=True)
        assert (outcome.action, outcome.rule, outcome.reasons) == (
            decision.action, decision.rule, decision.reasons)


class TestSharedDecisions:
    def test_equal_to_fresh_values(self, compile_: Callable[..., CompiledPolicy]) -> None:
        """Decisions without limits are shared, and equal what a fresh one would be."""
        policy = compile_(f"""\
            rules:
              - {{name: deny, to: {{in: ["{evm('bad')}"]}}, action: reject}}
            """)
        ledger = Ledger(policy)
        first = evaluate(policy, item(to=evm("bad")), ledger, NOW)
        again = evaluate(policy, item(to=evm("bad"), amount="7"), ledger, NOW)
        assert first == again
        assert (first.action, first.rule, first.reasons, first.limit_effects) == (
            Action.REJECT, "deny", ("rule:deny",), ())
        default = evaluate(policy, item(), ledger, NOW)
        assert (default.action, default.rule, default.reasons) == (Action.HOLD, "<default>",
                                                                   ("default",))
        invalid = evaluate(policy, item(amount="-1"), ledger, NOW)
        assert (invalid.rule, invalid.reasons, invalid.invalid_reason) == (
            "<invalid>", ("invalid:amount_not_positive",), "amount_not_positive")

    def test_non_dict_mapping_item(self, compile_: Callable[..., CompiledPolicy]) -> None:
        """An item whose raw is another Mapping is read the same way as a dict."""
        from types import MappingProxyType

        policy = compile_("rules:\n  - {name: all, action: approve}\n")
        raw = dict(item().raw)
        assert evaluate(policy, PendingItem(MappingProxyType(raw)), Ledger(policy), NOW) == \
            evaluate(policy, PendingItem(raw), Ledger(policy), NOW)
        del raw["amount"]
        assert evaluate(policy, PendingItem(MappingProxyType(raw)), Ledger(policy),
                        NOW).invalid_reason == "missing_field"


class TestLedgerPlans:
    @pytest.fixture
    def policy(self, compile_: Callable[..., CompiledPolicy]) -> CompiledPolicy:
        return compile_(f"""\
            limits:
              - {{name: all, window: 1h, max_count: 100}}
              - {{name: bsc, chain: "56", window: 1h, max_count: 100, per: to}}
              - {{name: to-x, to: {{in: ["{evm('x')}"]}}, window: 1h, max_count: 100}}
              - {{name: from-hot, from: {{in: ["{HOT}"]}}, window: 1h, max_count: 100,
                  per: from}}
            rules:
              - {{name: all, action: approve}}
            """)

    def test_scopes_and_buckets(self, policy: CompiledPolicy) -> None:
        """Each approval counts in exactly the limits whose scope it is in, in its bucket."""
        x = evm("x")
        ledger = Ledger(policy, [
            Approval("56", HOT, x, Decimal(1), NOW),
            Approval("56", evm("cold"), evm("y"), Decimal(2), NOW),
            Approval("195", T_HOT, tron("y"), Decimal(4), NOW),
            Approval("77", HOT, x, Decimal(8), NOW),  # unknown chain
        ])
        later = NOW + timedelta(minutes=1)
        assert ledger.usage("all", "56", later)[1] == 2
        assert ledger.usage("all", "195", later)[1] == 1
        assert ledger.usage("all", "77", later)[1] == 1
        assert ledger.usage("bsc", f"56/{x.lower()}", later)[1] == 1
        assert ledger.usage("bsc", "77/" + x, later)[1] == 0
        assert ledger.usage("to-x", "56", later)[1] == 1
        assert ledger.usage("to-x", "77", later)[1] == 0  # unknown chain compares exactly
        assert ledger.usage("from-hot", f"56/{HOT.lower()}", later)[1] == 1
        assert ledger.usage("from-hot", f"77/{HOT}", later)[1] == 0  # likewise
