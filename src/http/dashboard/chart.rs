//! The front page's charts as inline SVG, drawn on the server: no JavaScript, no external asset,
//! nothing the strict Content-Security-Policy would have to allow. Colours are SVG presentation
//! attributes, not CSS; every chart has a `<title>` and its figures in a table beside it for
//! screen readers and text browsers.

use std::fmt::Write;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;

/// Colours that stay apart for the common colour-vision deficiencies (Okabe–Ito).
pub const PALETTE: [&str; 8] = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];

/// One named series of values, one per category (`None`: no figure for it).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub values: Vec<Option<f64>>,
}

/// A chart ready for the page: the SVG, and its figures as rows for the table beside it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Chart {
    pub id: String,
    pub title: String,
    pub svg: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn plot_width() -> f64 {
    WIDTH - LEFT - RIGHT
}

fn plot_height() -> f64 {
    HEIGHT - TOP - BOTTOM
}

/// A round top for the value axis: 1, 2 or 5 times a power of ten, at least `max`.
fn nice_top(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * power).find(|top| *top >= max).unwrap_or(10.0 * power)
}

fn number(value: f64) -> String {
    if value >= 100.0 || value.fract() == 0.0 { format!("{value:.0}") } else { format!("{value:.2}") }
}

/// The frame every chart shares: title, value axis with its top and middle, category labels
/// (every `step`-th, so they never overlap), legend.
fn frame(id: &str, title: &str, categories: &[String], series: &[Series], top: f64, unit: &str) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-labelledby="{id}-title"><title id="{id}-title">{}</title>"#,
        escape(title)
    );
    let _ = write!(svg, r##"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>"##);
    let bottom = TOP + plot_height();
    for (fraction, label) in [(0.0, 0.0), (0.5, top / 2.0), (1.0, top)] {
        let y = bottom - fraction * plot_height();
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#cccccc" stroke-width="1"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#333333">{}{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 4.0,
            y + 3.0,
            number(label),
            escape(unit)
        );
    }
    let slot = plot_width() / categories.len().max(1) as f64;
    let step = (categories.len() as f64 * 40.0 / plot_width()).ceil().max(1.0) as usize;
    for (i, category) in categories.iter().enumerate().filter(|(i, _)| i % step == 0) {
        let x = LEFT + slot * (i as f64 + 0.5);
        let _ = write!(
            svg,
            r##"<text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#333333">{}</text>"##,
            bottom + 14.0,
            escape(category)
        );
    }
    let mut x = LEFT;
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let _ = write!(
            svg,
            r##"<rect x="{x:.1}" y="8" width="10" height="10" fill="{colour}"/><text x="{:.1}" y="17" font-size="11" fill="#1a1a1a">{}</text>"##,
            x + 14.0,
            escape(&s.name)
        );
        x += 24.0 + 7.0 * s.name.chars().count() as f64;
    }
    svg
}

fn table(categories: &[String], series: &[Series]) -> (Vec<String>, Vec<Vec<String>>) {
    let columns = series.iter().map(|s| s.name.clone()).collect();
    let rows = categories
        .iter()
        .enumerate()
        .map(|(i, c)| {
            std::iter::once(c.clone())
                .chain(series.iter().map(|s| s.values.get(i).copied().flatten().map_or("—".to_owned(), number)))
                .collect()
        })
        .collect();
    (columns, rows)
}

/// Stacked bars: one bar per category, one segment per series (stands by state, cost by project).
pub fn stacked_bars(id: &str, title: &str, categories: &[String], series: &[Series], unit: &str) -> Chart {
    let total = |i: usize| series.iter().map(|s| s.values.get(i).copied().flatten().unwrap_or(0.0)).sum::<f64>();
    let top = nice_top((0..categories.len()).map(total).fold(0.0, f64::max));
    let mut svg = frame(id, title, categories, series, top, unit);
    let slot = plot_width() / categories.len().max(1) as f64;
    let bottom = TOP + plot_height();
    for (i, category) in categories.iter().enumerate() {
        let mut y = bottom;
        for (k, s) in series.iter().enumerate() {
            let value = s.values.get(i).copied().flatten().unwrap_or(0.0);
            if value <= 0.0 {
                continue;
            }
            let h = value / top * plot_height();
            y -= h;
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                LEFT + slot * i as f64 + slot * 0.15,
                slot * 0.7,
                PALETTE[k % PALETTE.len()],
                escape(&format!("{category} {}", s.name)),
                number(value)
            );
        }
    }
    svg.push_str("</svg>");
    let (columns, rows) = table(categories, series);
    Chart { id: id.to_owned(), title: title.to_owned(), svg, columns, rows }
}

/// Lines with a dot per figure (p50 and p95 per day); a day without a figure breaks the line.
pub fn lines(id: &str, title: &str, categories: &[String], series: &[Series], unit: &str) -> Chart {
    let max = series.iter().flat_map(|s| s.values.iter().flatten()).copied().fold(0.0, f64::max);
    let top = nice_top(max);
    let mut svg = frame(id, title, categories, series, top, unit);
    let slot = plot_width() / categories.len().max(1) as f64;
    let bottom = TOP + plot_height();
    for (k, s) in series.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        let point = |i: usize, v: f64| (LEFT + slot * (i as f64 + 0.5), bottom - v / top * plot_height());
        let mut path = String::new();
        let mut pen_down = false;
        for (i, value) in s.values.iter().enumerate() {
            match value {
                Some(v) => {
                    let (x, y) = point(i, *v);
                    let _ = write!(path, "{}{x:.1},{y:.1} ", if pen_down { "L" } else { "M" });
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        if !path.is_empty() {
            let _ = write!(svg, r#"<path d="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#, path.trim_end());
        }
        for (i, value) in s.values.iter().enumerate() {
            if let Some(v) = value {
                let (x, y) = point(i, *v);
                let _ = write!(
                    svg,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"><title>{}: {}{}</title></circle>"#,
                    escape(&format!("{} {}", categories[i], s.name)),
                    number(*v),
                    escape(unit)
                );
            }
        }
    }
    svg.push_str("</svg>");
    let (columns, rows) = table(categories, series);
    Chart { id: id.to_owned(), title: title.to_owned(), svg, columns, rows }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days(n: usize) -> Vec<String> {
        (1..=n).map(|d| format!("12-{d:02}")).collect()
    }

    #[test]
    fn a_stacked_bar_is_as_tall_as_its_share_of_the_axis() {
        let series = vec![
            Series { name: "active".into(), values: vec![Some(3.0), Some(0.0)] },
            Series { name: "sleeping".into(), values: vec![Some(1.0), None] },
        ];
        let chart = stacked_bars("states", "Stands by state", &days(2), &series, "");
        // Top of the axis: 5 (the nice number above 4); 3 of 5 is 0.6 of the plot's 152 px.
        assert!(chart.svg.contains(r##"height="91.2" fill="#0072B2""##), "{}", chart.svg);
        assert!(chart.svg.contains(r##"height="30.4" fill="#E69F00""##), "{}", chart.svg);
        assert_eq!(chart.svg.matches("<rect").count(), 1 + 2 + 2, "background, legend, two segments");
        assert_eq!(chart.rows, [vec!["12-01", "3", "1"], vec!["12-02", "0", "—"]]);
    }

    #[test]
    fn a_line_breaks_where_a_day_has_no_figure_and_text_is_escaped() {
        let series = vec![Series { name: "p50 <s>".into(), values: vec![Some(10.0), None, Some(20.0)] }];
        let chart = lines("wake", "Wake & time", &days(3), &series, "s");
        assert_eq!(chart.svg.matches("<circle").count(), 2);
        let d = chart.svg.split(r#"<path d=""#).nth(1).and_then(|rest| rest.split('"').next()).unwrap();
        assert_eq!((d.matches('M').count(), d.matches('L').count()), (2, 0), "two one-dot pieces: {d}");
        assert!(chart.svg.contains("Wake &amp; time") && chart.svg.contains("p50 &lt;s&gt;"), "{}", chart.svg);
        assert!(!chart.svg.contains("<s>"));
    }

    #[test]
    fn the_axis_top_is_a_round_number_at_least_the_largest_figure() {
        assert_eq!(nice_top(0.0), 1.0);
        assert_eq!(nice_top(4.0), 5.0);
        assert_eq!(nice_top(5.0), 5.0);
        assert_eq!(nice_top(130.0), 200.0);
        assert_eq!(nice_top(0.42), 0.5);
    }
}
