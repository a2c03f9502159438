#!/usr/bin/env python3
"""Generate a realistic day of stock-movement events for the docker-compose demo.

    python3 scripts/sample_day.py > deploy/compose/sample-day.jsonl
    python3 scripts/sample_day.py --invalid-lines     # the line numbers meant to be invalid

Two hospitals of Jingjiang (靖江市人民医院 H32128200338, 靖江市中医院 H32128200561) report
one Beijing day of drug and consumable movements: deliveries in the morning and early
afternoon (ELS7002 / ELS7004), issues to wards and pharmacies all day (ELS7003 /
ELS7005), a few returns to suppliers (ELS7006 / ELS7007). Late in the day the warehouse
corrects some rows (same record key, higher `version`), and a handful of events are
broken on purpose (negative quantity, missing required field, a drug field on a
consumable row, a bad time, an unknown institution, too many decimals), so that the
demo shows what happens to bad input.

Every event follows contract §1: {"infno", "fixmedins_code", "version", "data"}, where
`version` is the event's time in epoch milliseconds, so corrections carry a higher one.
The output is deterministic (fixed seed): the committed file is this script's output,
and scripts/check-deploy.sh checks that it still is. Standard library only.
"""

import argparse
import datetime as dt
import json
import random
import sys

BEIJING = dt.timezone(dt.timedelta(hours=8))
DEFAULT_DATE = "2026-11-25"
SEED = 20261125

INSTITUTIONS = {
    # code: (short prefix of record keys, share of the day's volume)
    "H32128200338": ("RM", 1.0),  # 靖江市人民医院, the larger one
    "H32128200561": ("ZY", 0.55),  # 靖江市中医院
}

# Distributors (配送企业) with made-up but well-formed unified social credit codes.
DISTRIBUTORS = [
    ("国药控股江苏有限公司", "91320000134756129D"),
    ("华润江苏医药有限公司", "91320100302489114R"),
    ("南京医药股份有限公司", "91320100134918273K"),
    ("上药控股江苏股份有限公司", "91320200703580412M"),
    ("泰州医药集团有限公司", "91321200141312870X"),
]

# Drugs: generic name, dosage form, specification, conversion ratio, packaging unit,
# manufacturer, manufacturer USCC, unit price (yuan per packaging unit), ATC-like part of
# the national drug code.
DRUGS = [
    ("阿莫西林胶囊", "胶囊剂", "0.25g*24粒", "24", "盒", "珠海联邦制药股份有限公司", "91440400617488861C", "9.80", "J01CA"),
    ("头孢呋辛酯片", "片剂", "0.25g*12片", "12", "盒", "深圳致君制药有限公司", "91440300192178123H", "28.50", "J01DC"),
    ("硝苯地平控释片", "片剂", "30mg*7片", "7", "盒", "拜耳医药保健有限公司", "91110000600040325Y", "32.86", "C08CA"),
    ("盐酸二甲双胍片", "片剂", "0.5g*20片", "20", "盒", "中美上海施贵宝制药有限公司", "91310000607207911P", "12.45", "A10BA"),
    ("注射用头孢曲松钠", "注射剂", "1.0g", "1", "瓶", "上海罗氏制药有限公司", "91310000607200263E", "6.93", "J01DD"),
    ("0.9%氯化钠注射液", "注射剂", "250ml:2.25g", "1", "瓶", "四川科伦药业股份有限公司", "91510000201981370N", "2.58", "B05XA"),
    ("阿托伐他汀钙片", "片剂", "20mg*7片", "7", "盒", "辉瑞制药有限公司", "91210200604868282T", "18.90", "C10AA"),
    ("奥美拉唑肠溶胶囊", "胶囊剂", "20mg*14粒", "14", "盒", "常州四药制药有限公司", "91320400137172650B", "7.62", "A02BC"),
    ("布洛芬缓释胶囊", "胶囊剂", "0.3g*20粒", "20", "盒", "中美天津史克制药有限公司", "91120000600516587L", "15.20", "M01AE"),
    ("胰岛素注射液", "注射剂", "3ml:300单位", "1", "支", "江苏万邦生化医药集团有限责任公司", "91320300134782560W", "46.35", "A10AB"),
    ("复方丹参滴丸", "滴丸剂", "27mg*180丸", "180", "瓶", "天士力医药集团股份有限公司", "91120000103071899G", "26.80", "C01EB"),
    ("蒲地蓝消炎片", "片剂", "0.3g*48片", "48", "盒", "济川药业集团有限公司", "91321200141415876F", "24.60", "J01XX"),
]

# Consumables: product name, model, specification, unit, registration certificate,
# manufacturer, manufacturer USCC, unit price.
CONSUMABLES = [
    ("一次性使用无菌注射器", "带针", "5ml", "支", "苏械注准20152150001", "江苏治宇医疗器材有限公司", "91321200768296553U", "0.32"),
    ("一次性使用输液器", "带针", "0.7mm", "套", "苏械注准20162140226", "江苏康友医用器械有限公司", "91321282141334562A", "1.15"),
    ("医用外科口罩", "平面耳挂式", "17.5cm*9.5cm", "只", "苏械注准20172140431", "江苏省华星医疗器械实业有限公司", "91321000141263745Q", "0.45"),
    ("医用脱脂纱布块", "8层", "8cm*10cm", "块", "苏械注准20182140158", "江苏阳光医用敷料有限公司", "91321283141452716J", "0.28"),
    ("一次性使用静脉留置针", "Y型", "24G", "支", "国械注准20173150210", "苏州林华医疗器械股份有限公司", "91320500608221785S", "6.80"),
    ("一次性使用医用橡胶检查手套", "无粉", "M", "副", "苏械注准20182140377", "江苏康捷医疗器械有限公司", "91321204690248135V", "0.36"),
    ("一次性使用无菌导尿包", "双腔", "16Fr", "包", "苏械注准20192140085", "扬州市华康医疗器械有限公司", "91321000703905521K", "12.50"),
    ("中心静脉导管包", "单腔", "7Fr 20cm", "套", "国械注准20163660452", "广东百合医疗科技股份有限公司", "91440700617657843N", "168.00"),
]

def drug_warehouse(name):
    if name in ("复方丹参滴丸", "蒲地蓝消炎片"):
        return "中成药库"
    return "输液库" if "氯化钠" in name else "西药库"


def mcs_warehouse(price):
    return "高值耗材库" if float(price) >= 100 else "耗材库"


def drug_code(atc, n):
    """A 23-character national drug code shaped like XJ01CAA040A001010101445."""
    return f"X{atc}A{40 + n:03d}A{n + 1:03d}{10101445 + n * 37:09d}"[:23]


def mcs_code(n):
    """A 27-character national consumable code: C + 26 digits."""
    return f"C{14010205200000000000000012 + n * 1_000_003:026d}"


class Day:
    def __init__(self, date):
        self.date = date
        self.rng = random.Random(SEED)
        self.events = []  # (beijing datetime, event dict)
        self.seq = {}

    def at(self, start_hour, end_hour):
        """A random time of the day between the two hours, to the second."""
        secs = self.rng.randint(int(start_hour * 3600), int(end_hour * 3600) - 1)
        return dt.datetime.combine(self.date, dt.time(0), BEIJING) + dt.timedelta(seconds=secs)

    def key(self, code, kind):
        """A hospital-side row key, e.g. RMYPRK202611250007 (drug stock-in of 人民医院)."""
        prefix = INSTITUTIONS[code][0]
        n = self.seq[(code, kind)] = self.seq.get((code, kind), 0) + 1
        return f"{prefix}{kind}{self.date:%Y%m%d}{n:04d}"

    def add(self, when, infno, code, data):
        version = int(when.timestamp() * 1000)
        self.events.append((when, {"infno": infno, "fixmedins_code": code, "version": version, "data": data}))
        return self.events[-1][1]

    def common(self, product_index, supplier, price):
        return {
            "prov_plaf_prod_code": f"{320000100000 + product_index * 7919}",
            "delventp_name": supplier[0],
            "delventp_code": supplier[1],
            "purc_pric": price,
        }

    def drug_row(self, key_field, key, i, qty_field, qty, time_field, when):
        name, form, spec, convrat, unit, maker, maker_code, price, atc = DRUGS[i]
        row = {key_field: key, "drug_code": drug_code(atc, i), "drug_genname": name, "dosform": form,
               "spec": spec, "convrat": convrat, "pacunt": unit, "prodentp_name": maker, "prodentp_code": maker_code}
        row.update(self.common(i, DISTRIBUTORS[i % len(DISTRIBUTORS)], price))
        row.update({qty_field: qty, time_field: f"{when:%Y-%m-%d %H:%M:%S}", "stroom_name": drug_warehouse(name)})
        return row

    def mcs_row(self, key_field, key, i, qty_field, qty, time_field, when):
        name, model, spec, unit, regcert, maker, maker_code, price = CONSUMABLES[i]
        row = {key_field: key, "mcs_code": mcs_code(i), "prod_name": name, "mol": model, "spec": spec, "unt": unit,
               "regcert": regcert, "prodentp_name": maker, "prodentp_code": maker_code}
        row.update(self.common(100 + i, DISTRIBUTORS[(i + 2) % len(DISTRIBUTORS)], price))
        row.update({qty_field: qty, time_field: f"{when:%Y-%m-%d %H:%M:%S}", "stroom_name": mcs_warehouse(price)})
        return row

    def order_line(self, code):
        """A provincial order line id, or "0" for the few purchases outside the platform."""
        if self.rng.random() < 0.1:
            return "0", "1" if self.rng.random() < 0.5 else "0"
        return f"DD{code[-6:]}{self.date:%y%m%d}{self.rng.randint(100000, 999999)}", "0"

    def stock_in(self, code, drug):
        when = self.at(8.5, 11.5) if self.rng.random() < 0.7 else self.at(14, 16.5)
        if drug:
            i = self.rng.randrange(len(DRUGS))
            row = self.drug_row("hosp_purc_mgt_detl", self.key(code, "YPRK"), i, "stoin_cnt",
                                str(self.rng.choice([20, 30, 50, 60, 100, 120, 200, 300])), "stoin_time", when)
        else:
            i = self.rng.randrange(len(CONSUMABLES))
            qty = self.rng.choice([5, 10, 20]) if price_of(CONSUMABLES[i]) >= 10 else self.rng.choice([500, 1000, 2000, 3000])
            row = self.mcs_row("hosp_purc_mgt_detl", self.key(code, "HCRK"), i, "stoin_cnt", str(qty), "stoin_time", when)
        order, emergency = self.order_line(code)
        row["er_flag"] = emergency
        row["prov_plaf_purc_ord_det_id"] = order
        if order != "0":
            row["prov_plaf_prod_id"] = f"P{row['prov_plaf_prod_code'][-8:]}"
        return self.add(when, "ELS7002" if drug else "ELS7004", code, row)

    def stock_out(self, code, drug):
        when = self.at(8, 17.5)
        if drug:
            i = self.rng.randrange(len(DRUGS))
            row = self.drug_row("hosp_purc_mgt_detl", self.key(code, "YPCK"), i, "stoout_cnt",
                                str(self.rng.randint(1, 40)), "stoout_time", when)
        else:
            i = self.rng.randrange(len(CONSUMABLES))
            qty = self.rng.randint(1, 4) if price_of(CONSUMABLES[i]) >= 10 else self.rng.choice([50, 100, 200, 300])
            row = self.mcs_row("hosp_purc_mgt_detl", self.key(code, "HCCK"), i, "stoout_cnt", str(qty), "stoout_time", when)
        row["er_flag"] = "0"
        if self.rng.random() < 0.5:  # optional in stock-outs
            row["prov_plaf_purc_ord_det_id"] = "0"
        return self.add(when, "ELS7003" if drug else "ELS7005", code, row)

    def ret(self, code, drug):
        when = self.at(13.5, 16)
        if drug:
            i = self.rng.randrange(len(DRUGS))
            row = self.drug_row("hosp_retn_mgt_detl", self.key(code, "YPTH"), i, "retn_cnt",
                                str(self.rng.randint(1, 10)), "retn_time", when)
        else:
            i = self.rng.randrange(len(CONSUMABLES))
            row = self.mcs_row("hosp_retn_mgt_detl", self.key(code, "HCTH"), i, "retn_cnt",
                               str(self.rng.randint(1, 20)), "retn_time", when)
        row["prov_plaf_retn_det_id"] = f"TH{code[-6:]}{self.date:%y%m%d}{self.rng.randint(1000, 9999)}" if self.rng.random() < 0.7 else "0"
        return self.add(when, "ELS7006" if drug else "ELS7007", code, row)

    def correct(self, original, change):
        """The warehouse fixes a row late in the day: same key, later version."""
        when = self.at(17, 18.5)
        data = dict(original["data"])
        change(data)
        return self.add(when, original["infno"], original["fixmedins_code"], data)


def price_of(consumable):
    return float(consumable[7])


def generate(date):
    day = Day(date)
    kept = {}
    for code, (_, share) in INSTITUTIONS.items():
        def n(count):
            return max(1, round(count * share))
        kept[code] = {
            "drug_in": [day.stock_in(code, True) for _ in range(n(36))],
            "mcs_in": [day.stock_in(code, False) for _ in range(n(20))],
            "drug_out": [day.stock_out(code, True) for _ in range(n(60))],
            "mcs_out": [day.stock_out(code, False) for _ in range(n(40))],
            "drug_ret": [day.ret(code, True) for _ in range(2)],
            "mcs_ret": [day.ret(code, False) for _ in range(2)],
        }

    # Corrections: same record key, higher version.
    big, small = "H32128200338", "H32128200561"
    day.correct(kept[big]["drug_in"][3], lambda d: d.update(stoin_cnt=str(int(d["stoin_cnt"]) - 10)))  # short delivery
    day.correct(kept[big]["drug_out"][7], lambda d: d.update(stoout_cnt="0"))  # issue cancelled
    day.correct(kept[big]["mcs_in"][2], lambda d: d.update(purc_pric=f"{float(d['purc_pric']) * 0.95:.2f}"))  # price per contract
    day.correct(kept[big]["drug_ret"][0], lambda d: d.update(retn_cnt=str(int(d["retn_cnt"]) + 1)))
    day.correct(kept[small]["mcs_out"][4], lambda d: d.update(stoout_time=d["stoout_time"][:11] + "16:45:00"))
    day.correct(kept[small]["drug_in"][1], lambda d: d.update(prov_plaf_purc_ord_det_id="0", er_flag="1"))  # emergency buy

    # Broken on purpose: each stands for a kind of mistake a warehouse system makes.
    def broken(source, change, code=None):
        data = dict(source["data"])
        change(data)
        event = day.add(day.at(9, 17), source["infno"], code or source["fixmedins_code"], data)
        event["_invalid"] = True

    broken(kept[big]["drug_out"][11], lambda d: d.update(stoout_cnt="-3"))  # negative quantity
    broken(kept[small]["drug_in"][5], lambda d: d.pop("delventp_code"))  # missing required field
    broken(kept[big]["mcs_in"][6], lambda d: d.update(drug_genname="一次性使用无菌注射器"))  # drug field on a consumable row
    broken(kept[big]["mcs_out"][9], lambda d: d.update(stoout_time=d["stoout_time"].replace("-", "/")[:16]))  # bad time
    broken(kept[small]["mcs_ret"][0], lambda d: d.update(purc_pric="3.14159"))  # too many decimals
    broken(kept[big]["drug_in"][8], lambda d: None, code="H32128200999")  # institution not configured

    day.events.sort(key=lambda e: (e[0], e[1]["version"]))
    events = [e for _, e in day.events]
    # Number the row keys in the order the rows happened, as a warehouse system would.
    renumbered, counters = {}, {}
    for event in events:
        data = event["data"]
        field = "hosp_retn_mgt_detl" if "hosp_retn_mgt_detl" in data else "hosp_purc_mgt_detl"
        old = data[field]
        if old not in renumbered:
            stem = old[:-4]
            counters[stem] = counters.get(stem, 0) + 1
            renumbered[old] = f"{stem}{counters[stem]:04d}"
        data[field] = renumbered[old]
    return events


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--date", default=DEFAULT_DATE, help=f"the Beijing day (default {DEFAULT_DATE})")
    parser.add_argument("--invalid-lines", action="store_true",
                        help="print the line numbers of the events that are invalid on purpose, not the events")
    args = parser.parse_args()
    events = generate(dt.date.fromisoformat(args.date))
    if args.invalid_lines:
        print(" ".join(str(n) for n, e in enumerate(events, 1) if e.get("_invalid")))
        return
    out = sys.stdout
    for event in events:
        event.pop("_invalid", None)
        out.write(json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
