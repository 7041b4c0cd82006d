//! Small HTML helpers shared by the displays: escaping, tables, number formatting.

/// Escapes `&`, `<`, `>`, `"` and `'` for HTML text and attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1234567` → `1,234,567`.
pub fn group(n: u64) -> String {
    tunelab::memory::group_digits(n)
}

/// Bytes in a human unit (decimal: kB, MB, GB, as the seminar's tables).
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..=999 => format!("{bytes} B"),
        1_000..=999_999 => format!("{:.1} kB", b / 1e3),
        1_000_000..=999_999_999 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}

/// A table with a header row; every cell is escaped. Numeric-looking cells align right.
pub fn table(caption: Option<&str>, header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table class=\"tunelab\" style=\"border-collapse:collapse\">");
    if let Some(c) = caption {
        s.push_str(&format!(
            "<caption style=\"text-align:left;font-weight:bold\">{}</caption>",
            escape(c)
        ));
    }
    s.push_str("<thead><tr>");
    for h in header {
        s.push_str(&format!(
            "<th style=\"text-align:left;padding:2px 8px\">{}</th>",
            escape(h)
        ));
    }
    s.push_str("</tr></thead><tbody>");
    for row in rows {
        s.push_str("<tr>");
        for cell in row {
            let numeric = !cell.is_empty()
                && cell
                    .chars()
                    .all(|c| c.is_ascii_digit() || ",.% -+eEkMGB".contains(c))
                && cell.chars().any(|c| c.is_ascii_digit());
            let align = if numeric { "right" } else { "left" };
            s.push_str(&format!(
                "<td style=\"text-align:{align};padding:2px 8px\">{}</td>",
                escape(cell)
            ));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_units() {
        assert_eq!(
            escape("<a href='x'>&</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(human_bytes(538_060_032), "538.1 MB");
        assert_eq!(human_bytes(32_000_000_000), "32.00 GB");
        assert_eq!(group(134_515_008), "134,515,008");
        let t = table(
            Some("cap"),
            &["a", "b"],
            &[vec!["x<y".into(), "1,234".into()]],
        );
        assert!(t.contains("x&lt;y") && t.contains("text-align:right;padding:2px 8px\">1,234"));
    }
}
