#!/usr/bin/env python3
"""Writes a JSON Lines file of mixed events for measuring `els-bridge validate` (issue 19).

    python3 bench/events.py COUNT > events.jsonl          (e.g. 20000)
    python3 bench/events.py --hostile COUNT > hostile.jsonl

The default file cycles through the six upload transactions (the rows of
tests/common/records.rs), with a version on every other event; one event in ten is
invalid in one of the ways operators meet (a negative quantity, a missing or unknown field,
a field of the other product kind, a bad time, an over-long name, a field named twice, a
truncated line). `--hostile` mixes many more kinds of broken input, with escapes, numbers
in odd notations, nesting and control characters: a file for comparing two builds'
messages line by line (`diff` of their `validate` output), not for timing.
"""

import json
import random
import sys

DRUG = {"drug_code": "XJ01CAA040A001010101445", "drug_genname": "阿莫西林胶囊", "dosform": "胶囊剂",
        "convrat": "24", "pacunt": "盒"}
CONSUMABLE = {"mcs_code": "C14010205200000000000000012", "prod_name": "一次性使用无菌注射器", "mol": "5ml",
              "unt": "支", "regcert": "苏械注准20152150001"}
SUPPLY = {"prov_plaf_prod_code": "0", "spec": "0.25g*24粒", "prodentp_name": "江苏某某药业有限公司",
          "prodentp_code": "91320000134567890A", "delventp_name": "国药控股江苏有限公司",
          "delventp_code": "91320000134567891B", "purc_pric": "12.3400", "stroom_name": "药库"}
UPLOADS = ["ELS7002", "ELS7003", "ELS7004", "ELS7005", "ELS7006", "ELS7007"]


def row(infno, key, quantity):
    """A valid data row of `infno`, as tests/common/records.rs makes it."""
    drug = infno in ("ELS7002", "ELS7003", "ELS7006")
    ret = infno in ("ELS7006", "ELS7007")
    r = {("hosp_retn_mgt_detl" if ret else "hosp_purc_mgt_detl"): key}
    r.update(DRUG if drug else CONSUMABLE)
    r.update(SUPPLY)
    qty, time = {"ELS7002": ("stoin_cnt", "stoin_time"), "ELS7004": ("stoin_cnt", "stoin_time"),
                 "ELS7003": ("stoout_cnt", "stoout_time"), "ELS7005": ("stoout_cnt", "stoout_time")}.get(
        infno, ("retn_cnt", "retn_time"))
    r[qty] = quantity
    r[time] = "2026-11-25 09:30:00"
    if ret:
        r["prov_plaf_retn_det_id"] = "0"
    else:
        r["er_flag"] = "0"
        r["prov_plaf_purc_ord_det_id"] = "0"
    return r, qty, time


def event(n):
    infno = UPLOADS[n % 6]
    data, qty, time = row(infno, f"K-{n:07d}", str(1 + n % 50))
    ev = {"infno": infno, "fixmedins_code": "H32128200338", "data": data}
    if n % 2:
        ev["version"] = n
    return ev, qty, time


def broken(n, ev, qty, time):
    """One of the ordinary ways an event is invalid, as a line of text."""
    kind = (n // 10) % 8
    data = ev["data"]
    if kind == 0:
        data[qty] = "-5"
    elif kind == 1:
        del data["spec"]
    elif kind == 2:
        data["remark"] = "x"
    elif kind == 3:
        data["mcs_code" if "drug_code" in data else "drug_code"] = "X1"
    elif kind == 4:
        data[time] = "2026-02-30 10:00:00"
    elif kind == 5:
        data["prodentp_name"] = "某" * 200
    elif kind == 6:
        text = json.dumps(ev, ensure_ascii=False)
        return text[:-1] + ', "infno": "ELS7002"}'
    else:
        return json.dumps(ev, ensure_ascii=False)[:-20]
    return json.dumps(ev, ensure_ascii=False)


HOSTILE_VALUES = [None, True, False, 0, -1, 1.5, "1e2", "", " ", "\t", "\u0000", "a\nb", "\u001b[31m", "靖" * 130,
                  "x" * 70, [], [1, {"a": 2}], {}, {"b": [None]}, "2016-12-31 23:59:60", "1899-12-31",
                  "2026-11-25", "12.34567", "99999999.9999", "0012.50", "1.", ".5", "NaN", " 7 ", "1", "0"]
HOSTILE_TOKENS = ["1e2", "1E2", "-0", "1.00000000000000001", "12.3400", "0.0", "123456789", "1.5e-3",
                  "18446744073709551615", "18446744073709551616", "-3", "3.0"]


def hostile(n, rnd):
    """An event broken in one or several random ways, as a line of text."""
    ev, qty, time = event(n)
    data = ev["data"]
    tokens = {}
    for _ in range(rnd.randrange(0, 4)):
        target = ev if rnd.random() < 0.3 else data
        name = rnd.choice(list(target) + ["extra", "mcs_code", "drug_code", "$serde_json::private::Number", "a\nb"])
        choice = rnd.random()
        if choice < 0.15:
            target.pop(name, None)
        elif choice < 0.35:
            placeholder = f"@@TOKEN{len(tokens)}@@"
            tokens[placeholder] = rnd.choice(HOSTILE_TOKENS)
            target[name] = placeholder
        else:
            target[name] = rnd.choice(HOSTILE_VALUES)
    if rnd.random() < 0.05:
        ev["data"] = rnd.choice(HOSTILE_VALUES)
    if rnd.random() < 0.05:
        ev["infno"] = rnd.choice(["ELS7001", "els7003", " ELS7004 ", "ELS7099", 7002, None])
    text = json.dumps(ev, ensure_ascii=rnd.random() < 0.2, indent=rnd.choice([None, None, 1]))
    for placeholder, token in tokens.items():
        text = text.replace(f'"{placeholder}"', token)
    text = text.replace("\n", " ")
    shape = rnd.random()
    if shape < 0.04:
        text = text[: rnd.randrange(len(text))]
    elif shape < 0.07:
        text = text[:-1] + ', "infno": 1}'
    elif shape < 0.09:
        text = text.replace('"data": {', '"data": {"spec": 1, ', 1)
    elif shape < 0.10:
        text = "[" + text + "]"
    elif shape < 0.11:
        text = "\ufeff" + text
    elif shape < 0.12:
        text = text + " x"
    elif shape < 0.13:
        text = text.replace('"data": {', '"data": {"n": ' + "[" * 130 + "]" * 130 + ", ", 1)
    elif shape < 0.14:
        text = text.replace('"data": {', '"data": {"s": "\\ud800", ', 1)
    return text


def main():
    args = sys.argv[1:]
    hostile_mode = args[:1] == ["--hostile"]
    count = int(args[-1])
    rnd = random.Random(19)
    out = sys.stdout
    for n in range(count):
        if hostile_mode:
            line = hostile(n, rnd)
        else:
            ev, qty, time = event(n)
            line = broken(n, ev, qty, time) if n % 10 == 9 else json.dumps(ev, ensure_ascii=False)
        out.write(line + "\n")


if __name__ == "__main__":
    main()
