//! The column headers of the CSV sheets (`report --csv`, `dlq peek --csv`) in English or
//! Chinese (`--lang zh-CN`): the sheets go to the finance and purchasing offices, who read
//! Chinese and not the logs. Only the header line changes; the values (codes, reasons,
//! times) stay as they are, so a sheet reads back the same in either language.

/// The language of a sheet's header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Lang {
    /// The column names of README (`rows_reported`, `return_code`, ...).
    #[default]
    En,
    /// Chinese column names (`上报行数`, `返回码`, ...).
    #[value(name = "zh-CN")]
    ZhCn,
}

/// Every column of every sheet and its Chinese name.
const COLUMNS: &[(&str, &str)] = &[
    ("institution", "机构编码"),
    ("infno", "交易号"),
    ("movement", "业务类型"),
    ("rows_reported", "上报行数"),
    ("distinct_keys", "记录数"),
    ("corrections", "更正数"),
    ("total_quantity", "数量合计"),
    ("total_amount", "金额合计"),
    ("key", "记录键"),
    ("version", "版本"),
    ("quantity", "数量"),
    ("price", "单价"),
    ("movement_time", "出入库时间"),
    ("msgid", "报文ID"),
    ("accepted_at_beijing", "平台接受时间（北京时间）"),
    ("uploads", "上传次数"),
    ("difference", "差异"),
    ("in_file", "导出文件中"),
    ("at_platform", "平台上"),
    ("file_line", "文件行号"),
    ("message_id", "消息ID"),
    ("reason", "死信原因"),
    ("return_code", "返回码"),
    ("meaning", "返回码含义"),
    ("error", "错误信息"),
    ("prov_plaf_prod_code", "省平台产品编码"),
    ("national_code", "国家药品/耗材编码"),
    ("product_name", "产品名称"),
    ("spec", "规格"),
    ("manufacturer", "生产企业"),
    ("distributor", "配送企业"),
    ("attempts", "上传尝试次数"),
    ("first_failed_beijing", "首次失败时间（北京时间）"),
    ("last_failed_beijing", "最近失败时间（北京时间）"),
];

impl Lang {
    /// The header of `column` in this language (the English name when it has no other).
    pub fn column(self, column: &str) -> &str {
        match self {
            Lang::En => column,
            Lang::ZhCn => COLUMNS.iter().find(|(en, _)| *en == column).map_or(column, |(_, zh)| zh),
        }
    }

    /// `csv` with its first line (the header, plain column names) in this language.
    pub fn header_of(self, csv: String) -> String {
        if self == Lang::En {
            return csv;
        }
        let (header, rest) = csv.split_once('\n').unwrap_or((csv.as_str(), ""));
        let translated: Vec<&str> = header.trim_end_matches('\r').split(',').map(|c| self.column(c)).collect();
        format!("{}\n{rest}", translated.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_header_line_is_translated_and_english_is_left_as_it_is() {
        let csv = "institution,infno,rows_reported\nH1,ELS7002,3\n".to_owned();
        assert_eq!(Lang::En.header_of(csv.clone()), csv);
        assert_eq!(Lang::ZhCn.header_of(csv), "机构编码,交易号,上报行数\nH1,ELS7002,3\n");
        assert_eq!(Lang::ZhCn.header_of("key\n".into()), "记录键\n");
        assert_eq!(Lang::ZhCn.column("unheard_of"), "unheard_of");
    }

    #[test]
    fn every_column_has_one_chinese_name_and_no_two_share_one() {
        let mut en: Vec<&str> = COLUMNS.iter().map(|(e, _)| *e).collect();
        let mut zh: Vec<&str> = COLUMNS.iter().map(|(_, z)| *z).collect();
        en.sort_unstable();
        zh.sort_unstable();
        let (n_en, n_zh) = (en.len(), zh.len());
        en.dedup();
        zh.dedup();
        assert_eq!((en.len(), zh.len()), (n_en, n_zh), "a column named twice");
        assert!(zh.iter().all(|z| !z.contains(',') && !z.contains('"')), "a Chinese name would need quoting");
    }
}
