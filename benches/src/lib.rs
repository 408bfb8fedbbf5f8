//! ocifs benchmarks.
//!
//! `cargo run --release -p ocifs-benches --bin scenarios -- [--quick]` starts
//! its own loopback registry (the test harness's), pushes its own fixtures with
//! oras, runs each scenario with ocifs and with the tool it is compared to in
//! the same run, and prints one markdown table whose ratios are measured side
//! by side.

use std::fmt::Write as _;

/// One row of the result table.
#[derive(Clone, Debug)]
pub struct Row {
    /// The scenario.
    pub scenario: String,
    /// The tool measured.
    pub tool: String,
    /// The figure.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
    /// The figure of the scenario's reference, for the ratio (None: this row
    /// is the reference).
    pub reference: Option<f64>,
}

impl Row {
    /// A row; `reference` is the figure of the scenario's reference row
    /// (None: this row is the reference).
    pub fn new(
        scenario: impl Into<String>,
        tool: impl Into<String>,
        value: f64,
        unit: &'static str,
        reference: Option<f64>,
    ) -> Self {
        Row {
            scenario: scenario.into(),
            tool: tool.into(),
            value,
            unit,
            reference,
        }
    }
}

/// Renders rows as a markdown table, each scenario's rows together in the
/// order the scenarios first appear.
pub fn table(rows: &[Row]) -> String {
    let mut order: Vec<&str> = Vec::new();
    for r in rows {
        if !order.contains(&r.scenario.as_str()) {
            order.push(&r.scenario);
        }
    }
    let mut rows: Vec<&Row> = rows.iter().collect();
    rows.sort_by_key(|r| order.iter().position(|s| *s == r.scenario));
    let mut s = String::from(
        "| scenario | tool | figure | unit | ratio to reference |\n|---|---|---:|---|---:|\n",
    );
    for r in rows {
        let ratio = match r.reference {
            _ if !r.value.is_finite() => "n/a".to_owned(),
            None => "1.00 (reference)".to_owned(),
            Some(reference) if reference != 0.0 => format!("{:.2}", r.value / reference),
            Some(_) => "n/a".to_owned(),
        };
        let value = if !r.value.is_finite() {
            "did not finish".to_owned()
        } else if r.value >= 100.0 {
            format!("{:.0}", r.value)
        } else {
            format!("{:.3}", r.value)
        };
        let _ = writeln!(
            s,
            "| {} | {} | {value} | {} | {ratio} |",
            r.scenario, r.tool, r.unit
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_ratios_to_the_reference() {
        let rows = [
            Row {
                scenario: "s".into(),
                tool: "curl".into(),
                value: 200.0,
                unit: "MB/s",
                reference: None,
            },
            Row {
                scenario: "s".into(),
                tool: "ocifs".into(),
                value: 100.0,
                unit: "MB/s",
                reference: Some(200.0),
            },
        ];
        let t = table(&rows);
        assert!(
            t.contains("| s | curl | 200 | MB/s | 1.00 (reference) |"),
            "{t}"
        );
        assert!(t.contains("| s | ocifs | 100 | MB/s | 0.50 |"), "{t}");
        let mut interleaved = rows.to_vec();
        interleaved.insert(
            1,
            Row {
                scenario: "t".into(),
                tool: "other".into(),
                value: 1.0,
                unit: "s",
                reference: None,
            },
        );
        let t = table(&interleaved);
        let (s_curl, s_ocifs, t_other) = (
            t.find("| s | curl").expect("curl row"),
            t.find("| s | ocifs").expect("ocifs row"),
            t.find("| t | other").expect("other row"),
        );
        assert!(s_curl < s_ocifs && s_ocifs < t_other, "{t}");
        let hung = table(&[Row {
            scenario: "s".into(),
            tool: "archivemount".into(),
            value: f64::NAN,
            unit: "s",
            reference: Some(1.0),
        }]);
        assert!(
            hung.contains("| s | archivemount | did not finish | s | n/a |"),
            "{hung}"
        );
    }
}
